//! Traffic rules across registry nodes sharing one etcd (`--features etcd`, issue 20): an edit
//! through node A is served by node B and pushed to B's followers; an edit made on stale rules,
//! or losing a race with another node's, is refused with nothing changed.
//!
//! Runs against a real etcd on loopback, as `tests/etcd.rs` does (the `STARDUST_ETCD` one, or
//! one the fixture starts); without one it says `SKIPPED` loudly and passes, unless
//! `STARDUST_REQUIRE_EXTERNAL=1`.

mod common;

/// Built without the feature, this file's tests do not exist: the external-parts rule says so.
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_traffic_tests_need_the_etcd_feature() {
    common::external::feature_off(
        "the registry's etcd traffic-rules tests",
        "etcd",
        "built without the `etcd` feature (cargo test -p stardust-registry --features etcd)",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::time::Duration;

    use stardust::Notifications;
    use stardust::discovery::api::{RegistryClient, RegistryError};
    use stardust::traffic::{
        Fallback, Match, Route, Rules, RulesEdit, TRAFFIC_TOPIC, TrafficPush, Weighted,
    };
    use stardust_registry::{AppConfig, Config, RegistryNode, StoreConfig};

    use super::common::etcd::Etcd;
    use super::common::*;

    const OPS: (&str, &str) = ("ops", "ops-secret");
    const CONSUMER: (&str, &str) = ("web", "web-secret");
    const SERVICE: &str = "traffic.Calc";

    /// A node on `store`; only with `with_apps` does it define the apps itself (a node without
    /// them learns them, roles included, from the others through etcd).
    async fn node(
        store: &str,
        dir: &tempfile::TempDir,
        name: &str,
        with_apps: bool,
    ) -> RegistryNode {
        let mut config = Config::new()
            .with_key_file(dir.path().join(format!("{name}-keys.toml")))
            .with_lease_ttl(Duration::from_secs(30))
            .with_store(StoreConfig::parse(store).unwrap());
        if with_apps {
            config = config
                .with_app(
                    OPS.0,
                    AppConfig::with_secret(OPS.1).unwrap().roles(["admin"]),
                )
                .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap());
        }
        within(
            "a registry node to start on etcd",
            RegistryNode::builder().config(config).bind("127.0.0.1:0"),
        )
        .await
        .expect("registry node")
    }

    fn route(name: &str, subset: &str) -> RulesEdit {
        RulesEdit::SetRoute {
            service: SERVICE.into(),
            route: Route {
                name: name.into(),
                matches: Match::default(),
                to: vec![Weighted {
                    weight: 100,
                    subset: subset.into(),
                }],
                fallback: Fallback::All,
            },
        }
    }

    async fn edit(
        client: &RegistryClient,
        edit: RulesEdit,
        if_revision: Option<u64>,
    ) -> Result<u64, RegistryError> {
        within("edit_rules", client.edit_rules(edit, if_revision))
            .await
            .expect("edit_rules call")
    }

    async fn rules(client: &RegistryClient) -> Rules {
        within("rules", client.rules())
            .await
            .expect("rules call")
            .expect("rules")
    }

    /// Waits (bounded) until the node `client` is connected to serves `want`.
    async fn rules_until(client: &RegistryClient, what: &str, want: &Rules) {
        within(what, async {
            loop {
                if client.rules().await.expect("rules call").expect("rules") == *want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Waits (bounded) for the next traffic push on `notifications`.
    async fn next_push(notifications: &mut Notifications) -> TrafficPush {
        within("a traffic push", async {
            loop {
                let n = notifications.recv().await.expect("the client is gone");
                if n.topic() == TRAFFIC_TOPIC {
                    return n.decode::<TrafficPush>().expect("a TrafficPush");
                }
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_registry_nodes_on_etcd_serve_the_same_rules() {
        let test = "two_registry_nodes_on_etcd_serve_the_same_rules";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let a = node(&store, &dir, "a", true).await;
        // B has no apps of its own: `ops` and its admin role come from A, through etcd.
        let b = node(&store, &dir, "b", false).await;

        let (ops_a, _) = login(a.local_addr(), OPS.0, OPS.1).await;
        let (ops_b, _) = login(b.local_addr(), OPS.0, OPS.1).await;
        let (consumer_b, _) = login(b.local_addr(), CONSUMER.0, CONSUMER.1).await;
        assert_eq!(rules(&consumer_b).await, Rules::default());

        // An edit through A: B serves the same rules.
        let first = edit(&ops_a, route("stable", "^1"), None).await.unwrap();
        assert_eq!(first, 1);
        let on_a = rules(&ops_a).await;
        assert_eq!(on_a.revision, 1);
        assert_eq!(on_a.service(SERVICE).routes.len(), 1, "{on_a:?}");
        rules_until(&consumer_b, "B to serve A's edit", &on_a).await;

        // A follower on B gets A's next edit pushed.
        let mut pushes = consumer_b.client().notifications();
        let followed = within("traffic", consumer_b.traffic(SERVICE.into(), None))
            .await
            .unwrap()
            .unwrap()
            .expect("rules the caller did not have");
        assert_eq!(followed, on_a.service(SERVICE));
        let second = edit(&ops_a, route("canary", "tag:canary"), Some(1))
            .await
            .unwrap();
        assert_eq!(second, 2);
        let on_a = rules(&ops_a).await;
        let push = next_push(&mut pushes).await;
        assert_eq!(push.service, SERVICE);
        assert_eq!(push.rules, on_a.service(SERVICE));
        assert_eq!(push.rules.revision, 2);
        assert_eq!(push.rules.routes.len(), 2, "{push:?}");
        rules_until(&consumer_b, "B to serve A's second edit", &on_a).await;

        // An edit through B on the rules it saw before A's second: refused, nothing changed.
        let refused = edit(&ops_b, route("stale", "^2"), Some(first))
            .await
            .unwrap_err();
        assert!(matches!(refused, RegistryError::Invalid(_)), "{refused}");
        assert_eq!(rules(&ops_b).await, on_a);
        assert_eq!(rules(&ops_a).await, on_a);

        // A node started now lists the rules as they are.
        let c = node(&store, &dir, "c", false).await;
        let (consumer_c, _) = login(c.local_addr(), CONSUMER.0, CONSUMER.1).await;
        assert_eq!(rules(&consumer_c).await, on_a);

        // Two nodes editing the same revision at once: one wins, the other is refused, and both
        // nodes end up serving the winner's rules.
        let (on_a_edit, on_b_edit) = tokio::join!(
            edit(&ops_a, route("from-a", "^3"), Some(2)),
            edit(&ops_b, route("from-b", "^4"), Some(2)),
        );
        let winner = match (&on_a_edit, &on_b_edit) {
            (Ok(3), Err(RegistryError::Invalid(_))) => "from-a",
            (Err(RegistryError::Invalid(_)), Ok(3)) => "from-b",
            other => panic!("expected exactly one edit to win: {other:?}"),
        };
        let settled = rules(&ops_a).await;
        let settled = if settled.revision == 3 {
            settled
        } else {
            // B won: A serves it once its watch delivers it.
            within("A to serve B's edit", async {
                loop {
                    let r = rules(&ops_a).await;
                    if r.revision == 3 {
                        return r;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
        };
        let service = settled.service(SERVICE);
        let names: Vec<&str> = service.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["stable", "canary", winner]);
        rules_until(&ops_b, "B to serve the winner's edit", &settled).await;
        rules_until(&consumer_c, "C to serve the winner's edit", &settled).await;
    }
}
