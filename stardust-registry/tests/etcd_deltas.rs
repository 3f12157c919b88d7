//! Deltas across registry nodes sharing one etcd (`--features etcd`, issue 15): a change written
//! through node A reaches a subscriber of node B as a delta carrying exactly that change, each
//! one continuing the revision the previous left the subscriber at.
//!
//! Runs against a real etcd on loopback, as `tests/etcd.rs` does (the `STARDUST_ETCD` one, or
//! one the fixture starts); without one it says `SKIPPED` loudly and passes, unless
//! `STARDUST_REQUIRE_EXTERNAL=1`.

mod common;

/// Built without the feature, this file's test does not exist: the external-parts rule says so.
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_delta_tests_need_the_etcd_feature() {
    common::external::feature_off(
        "the registry's etcd delta test",
        "etcd",
        "built without the `etcd` feature (cargo test -p stardust-registry --features etcd)",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::time::Duration;

    use stardust::discovery::api::{Instance, Registration, RegistryClient};
    use stardust_registry::{AppConfig, Config, RegistryNode, StoreConfig};

    use super::common::etcd::Etcd;
    use super::common::follow::{Follower, Step, connect_delta};
    use super::common::*;

    const PROVIDER: (&str, &str) = ("delta-provider", "provider-secret");
    const CONSUMER: (&str, &str) = ("delta-consumer", "consumer-secret");
    const SERVICE: &str = "deltas.Calc";
    const REQ: &str = "^1";

    async fn node(store: &str, dir: &tempfile::TempDir, name: &str) -> RegistryNode {
        let config = Config::new()
            .with_key_file(dir.path().join(format!("{name}-keys.toml")))
            .with_lease_ttl(Duration::from_secs(30))
            .with_app(
                PROVIDER.0,
                AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
            )
            .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
            .with_store(StoreConfig::parse(store).unwrap());
        within(
            "a registry node to start on etcd",
            RegistryNode::builder().config(config).bind("127.0.0.1:0"),
        )
        .await
        .expect("registry node")
    }

    fn with_weight(endpoint: &str, weight: u32) -> Registration {
        Registration {
            weight,
            ..registration(SERVICE, "1.0.0", endpoint)
        }
    }

    async fn register(client: &RegistryClient, r: Registration) -> Instance {
        within("register", client.register(r))
            .await
            .unwrap()
            .expect("registered")
    }

    /// The next push, which must be a delta continuing the view.
    async fn next_delta(follower: &mut Follower) -> stardust::discovery::api::DiscoveryDelta {
        match follower.step().await {
            Step::Applied(d) => d,
            other => panic!("expected a delta continuing the view, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_through_one_node_reach_another_nodes_subscribers_as_deltas() {
        let test = "changes_through_one_node_reach_another_nodes_subscribers_as_deltas";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let a = node(&store, &dir, "a").await;
        let b = node(&store, &dir, "b").await;

        let subscriber = connect_delta(b.local_addr()).await;
        within(
            "login",
            subscriber.login(CONSUMER.0.into(), CONSUMER.1.into()),
        )
        .await
        .unwrap()
        .expect("logged in");
        let mut view = Follower::start(subscriber, SERVICE, REQ).await;
        assert!(view.instances().is_empty());
        assert_eq!(view.stats().snapshots, 1);
        let mut at = view.at();

        // Two instances through A: pushes until B's subscriber lists both (one delta or two,
        // as the registry coalesces them), each continuing the last.
        let (provider, _) = login(a.local_addr(), PROVIDER.0, PROVIDER.1).await;
        let first = register(&provider, with_weight("127.0.0.1:9101", 100)).await;
        let second = register(&provider, with_weight("127.0.0.1:9102", 100)).await;
        while view.instances().len() < 2 {
            let d = next_delta(&mut view).await;
            assert_eq!((d.epoch, d.from), (at.epoch, at.rev), "{d:?}");
            assert!(d.removed.is_empty(), "{d:?}");
            at = view.at();
        }
        assert_eq!(view.instances(), [first.clone(), second.clone()]);

        // A weight change through A: one delta with exactly the changed instance.
        let heavier = register(&provider, with_weight("127.0.0.1:9101", 250)).await;
        assert_eq!(heavier.weight, 250);
        let d = next_delta(&mut view).await;
        assert_eq!((d.epoch, d.from), (at.epoch, at.rev), "{d:?}");
        assert_eq!(d.upserted, [heavier]);
        assert!(d.removed.is_empty(), "{d:?}");
        at = view.at();

        // A deregistration through A: one delta removing exactly that endpoint.
        let removed = within(
            "deregister",
            provider.deregister(SERVICE.into(), first.endpoint.clone()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(removed);
        let d = next_delta(&mut view).await;
        assert_eq!((d.epoch, d.from), (at.epoch, at.rev), "{d:?}");
        assert!(d.upserted.is_empty(), "{d:?}");
        assert_eq!(d.removed, [first.endpoint]);

        // B's subscriber sees what B says, having got nothing but deltas since its snapshot.
        let on_b = within(
            "discover",
            view.client().discover(SERVICE.into(), REQ.into()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(on_b, [second]);
        assert_eq!(view.instances(), on_b);
        let stats = view.stats();
        assert_eq!(stats.snapshots, 1, "{stats:?}");
        assert_eq!(
            (stats.gaps, stats.resyncs, stats.full_lists),
            (0, 0, 0),
            "{stats:?}"
        );
        assert!(stats.deltas >= 3, "{stats:?}");
        b.shutdown().await;
        a.shutdown().await;
    }
}
