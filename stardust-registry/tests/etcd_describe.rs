//! Service descriptions across registry nodes sharing one etcd (`--features etcd`): what a
//! provider registers through node A is served by `describe` on node B; a different
//! description of the same version registered later through B keeps the first and shows a
//! conflict; a node started later lists the first one.
//!
//! Runs against a real etcd on loopback, as `tests/etcd.rs` does (the `STARDUST_ETCD` one, or
//! one the fixture starts); without one it says `SKIPPED` loudly and passes, unless
//! `STARDUST_REQUIRE_EXTERNAL=1`.

mod common;

/// Built without the feature, this file's tests do not exist: the external-parts rule says so.
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_describe_tests_need_the_etcd_feature() {
    common::external::feature_off(
        "the registry's etcd service-description tests",
        "etcd",
        "built without the `etcd` feature (cargo test -p stardust-registry --features etcd)",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::time::Duration;

    use stardust::discovery::api::{RegistryClient, VersionDescription};
    use stardust_registry::{AppConfig, Config, RegistryNode, StoreConfig};

    use super::common::etcd::Etcd;
    use super::common::*;

    const SERVICE: &str = "calc.Calculator";
    const VERSION: &str = "1.2.0";

    /// A node on `store` defining the providers `calc`, `calc2` and the consumer `web`.
    async fn node(store: &str, dir: &tempfile::TempDir, name: &str) -> RegistryNode {
        let config = Config::new()
            .with_key_file(dir.path().join(format!("{name}-keys.toml")))
            .with_lease_ttl(Duration::from_secs(30))
            .with_store(StoreConfig::parse(store).unwrap())
            .with_app(
                "calc",
                AppConfig::with_secret("calc-secret")
                    .unwrap()
                    .provide([SERVICE]),
            )
            .with_app(
                "calc2",
                AppConfig::with_secret("calc2-secret")
                    .unwrap()
                    .provide([SERVICE]),
            )
            .with_app("web", AppConfig::with_secret("web-secret").unwrap());
        within(
            "a registry node to start on etcd",
            RegistryNode::builder().config(config).bind("127.0.0.1:0"),
        )
        .await
        .expect("registry node")
    }

    async fn describe(client: &RegistryClient) -> Vec<VersionDescription> {
        within("describe", client.describe(SERVICE.into()))
            .await
            .expect("describe call")
            .expect("describe")
    }

    /// Waits (bounded) until `describe` through `client` shows a description of [`VERSION`].
    async fn described(client: &RegistryClient, what: &str) -> VersionDescription {
        within(what, async {
            loop {
                if let Some(v) = describe(client)
                    .await
                    .into_iter()
                    .find(|v| v.version == VERSION && v.description.is_some())
                {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_description_registered_through_one_node_is_described_by_another() {
        let test = "a_description_registered_through_one_node_is_described_by_another";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let a = node(&store, &dir, "a").await;
        let b = node(&store, &dir, "b").await;

        // A provider registers through A; a client of B is told about it.
        let (calc_a, _) = login(a.local_addr(), "calc", "calc-secret").await;
        let (web_b, _) = login(b.local_addr(), "web", "web-secret").await;
        let mut r = registration(SERVICE, VERSION, "127.0.0.1:9001");
        r.description = Some(calc_description("i64"));
        within("register through A", calc_a.register(r.clone()))
            .await
            .unwrap()
            .unwrap();
        let on_b = described(&web_b, "B to describe what was registered through A").await;
        assert_eq!(on_b.app, "calc");
        assert_eq!(on_b.description, Some(calc_description("i64")));
        assert_eq!(on_b.conflict, None);

        // Another provider of the same version, through B, with another signature: B keeps the
        // first and shows the conflict.
        let (calc2_b, _) = login(b.local_addr(), "calc2", "calc2-secret").await;
        r.endpoint = "127.0.0.1:9002".into();
        r.description = Some(calc_description("u64"));
        within("register through B", calc2_b.register(r))
            .await
            .unwrap()
            .unwrap();
        let found = describe(&web_b).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].app, "calc");
        assert_eq!(found[0].description, Some(calc_description("i64")));
        let conflict = found[0].conflict.as_deref().expect("a conflict");
        assert!(conflict.contains("calc2"), "{conflict}");

        // A node started now lists the first description.
        let c = node(&store, &dir, "c").await;
        let (web_c, _) = login(c.local_addr(), "web", "web-secret").await;
        let on_c = described(&web_c, "C to describe what etcd holds").await;
        assert_eq!(on_c.app, "calc");
        assert_eq!(on_c.description, Some(calc_description("i64")));
    }
}
