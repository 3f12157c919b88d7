//! Registry HA: several registry nodes sharing one etcd (`--features etcd`).
//!
//! Every test runs against a real etcd on loopback: the one `STARDUST_ETCD` names (CI starts
//! one), else one the fixture starts from Debian's `etcd-server`; with neither the tests say
//! `SKIPPED` loudly and pass, unless `STARDUST_REQUIRE_EXTERNAL=1`. Each test uses a key prefix
//! of its own, so tests sharing one etcd never see each other.

mod common;
// The workspace's throwaway PKI (rcgen), for the TLS etcd test.
#[cfg(feature = "etcd")]
#[allow(dead_code)]
#[path = "../../tests/common/pki.rs"]
mod pki;

/// Built without the feature, none of this file's tests exist: the external-parts rule says so
/// (a failure under `STARDUST_REQUIRE_EXTERNAL=1`, unless `STARDUST_FEATURES_ELSEWHERE` names
/// `etcd` because another pass of the run builds with it).
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_tests_need_the_etcd_feature() {
    common::external::feature_off(
        "the registry's etcd tests",
        "etcd",
        "built without the `etcd` feature (cargo test -p stardust-registry --features etcd)",
    );
}

#[cfg(feature = "etcd")]
mod with_etcd {
    use std::io::BufRead as _;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime};

    use stardust::auth::StaticToken;
    use stardust::auth::token;
    use stardust::discovery::api::{RegistryClient, RegistryError};
    use stardust::{Client, Server, Stardust};
    use stardust_registry::{AppConfig, Config, EtcdAccess, RegistryNode, StoreConfig, key_set};

    use super::common::etcd::Etcd;
    use super::common::*;

    const PROVIDER: (&str, &str) = ("calc-provider", "provider-secret");
    const CONSUMER: (&str, &str) = ("web", "web-secret");
    const OTHER: (&str, &str) = ("other-provider", "other-secret");
    const SERVICE: &str = "ha.Calc";

    /// The service the failover test calls.
    #[stardust::service(name = "ha.Calc", version = "1.0.0")]
    pub trait Calc {
        /// `a + b` (idempotent: safe to retry on another provider).
        #[stardust(idempotent)]
        async fn add(&self, a: i64, b: i64) -> i64;
        /// The provider's number.
        #[stardust(idempotent)]
        async fn who(&self) -> u32;
    }

    #[derive(Clone)]
    struct CalcImpl {
        id: u32,
        calls: Arc<AtomicU64>,
    }

    impl Calc for CalcImpl {
        async fn add(&self, a: i64, b: i64) -> i64 {
            self.calls.fetch_add(1, Ordering::Relaxed);
            a + b
        }
        async fn who(&self) -> u32 {
            self.id
        }
    }

    /// A node's config: its own key file (nodes sign with different keys), and the apps only
    /// when `with_apps` (a node without them learns them from the others through etcd).
    fn config(dir: &tempfile::TempDir, name: &str, with_apps: bool, lease_ttl: Duration) -> Config {
        let mut config = Config::new()
            .with_key_file(dir.path().join(format!("{name}-keys.toml")))
            .with_lease_ttl(lease_ttl);
        if with_apps {
            for (app, secret) in [PROVIDER, CONSUMER, OTHER] {
                config =
                    config.with_app(app, AppConfig::with_secret(secret).unwrap().provide(["*"]));
            }
        }
        config
    }

    async fn node(store: &str, config: Config) -> RegistryNode {
        within(
            "a registry node to start on etcd",
            RegistryNode::builder()
                .config(config.with_store(StoreConfig::parse(store).unwrap()))
                .bind("127.0.0.1:0"),
        )
        .await
        .expect("registry node")
    }

    async fn register_ok(client: &RegistryClient, endpoint: &str) {
        within(
            "register",
            client.register(registration(SERVICE, "1.0.0", endpoint)),
        )
        .await
        .expect("register call")
        .expect("registered");
    }

    /// Waits (bounded) until `node`'s table satisfies `pred`.
    async fn table_until(
        node: &RegistryNode,
        what: &str,
        pred: impl Fn(&[stardust_registry::Registered]) -> bool,
    ) {
        within(what, async {
            loop {
                if pred(&node.registrations()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registrations_through_one_node_reach_subscribers_of_another() {
        let test = "registrations_through_one_node_reach_subscribers_of_another";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(30);
        let a = node(&store, config(&dir, "a", true, ttl)).await;
        // B has no apps of its own: it knows them from A's config, through etcd.
        let b = node(&store, config(&dir, "b", false, ttl)).await;
        assert_ne!(a.node_id(), b.node_id());

        let (provider, _) = login(a.local_addr(), PROVIDER.0, PROVIDER.1).await;
        let (consumer, _) = login(b.local_addr(), CONSUMER.0, CONSUMER.1).await;
        let mut pushes = consumer.client().notifications();
        let initial = within("subscribe", consumer.subscribe(SERVICE.into(), "^1".into()))
            .await
            .unwrap()
            .unwrap();
        assert!(initial.is_empty(), "{initial:?}");

        register_ok(&provider, "127.0.0.1:9001").await;
        let event = next_event(&mut pushes).await;
        assert_eq!(endpoints(&event.instances), ["127.0.0.1:9001"]);
        assert_eq!(event.instances[0].app, PROVIDER.0);
        let found = within("discover", consumer.discover(SERVICE.into(), "".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(endpoints(&found), ["127.0.0.1:9001"]);
        // A holds it (its provider session keeps the lease); B only knows it.
        assert!(a.registrations().iter().all(|r| r.local));
        assert_eq!(b.registrations().len(), 1);
        assert!(!b.registrations()[0].local);
        assert_eq!(b.registrations()[0].node, a.node_id());

        // Another app cannot take that endpoint through the other node.
        let (other, _) = login(b.local_addr(), OTHER.0, OTHER.1).await;
        let refused = within(
            "register a taken endpoint",
            other.register(registration(SERVICE, "1.0.0", "127.0.0.1:9001")),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(&refused, RegistryError::PermissionDenied(m) if m.contains("another app")),
            "{refused}"
        );

        // A second instance through B reaches A's table too.
        register_ok(&other, "127.0.0.1:9002").await;
        let event = next_event(&mut pushes).await;
        assert_eq!(
            endpoints(&event.instances),
            ["127.0.0.1:9001", "127.0.0.1:9002"]
        );
        table_until(&a, "A to learn B's registration", |t| t.len() == 2).await;

        // A deregistration through A is pushed to B's subscriber.
        let removed = within(
            "deregister",
            provider.deregister(SERVICE.into(), "127.0.0.1:9001".into()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(removed);
        let event = next_event(&mut pushes).await;
        assert_eq!(endpoints(&event.instances), ["127.0.0.1:9002"]);

        // A session that ends takes its registrations with it, everywhere.
        drop(other);
        let event = next_event(&mut pushes).await;
        assert!(event.instances.is_empty(), "{:?}", event.instances);
        table_until(&a, "A's table to empty", |t| t.is_empty()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dev_apps_and_signing_keys_are_shared() {
        let test = "dev_apps_and_signing_keys_are_shared";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let a = node(&store, Config::dev()).await;
        let b = node(&store, Config::dev()).await;

        // Created on A by its first login; B knows its secret.
        let (_, on_a) = login(a.local_addr(), "calc", "first-secret").await;
        let (on_b_client, _) = login(b.local_addr(), "calc", "first-secret").await;
        let other = connect(b.local_addr()).await;
        let refused = within(
            "a login with another secret",
            other.login("calc".into(), "second-secret".into()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(refused, RegistryError::Unauthorized(_)),
            "{refused}"
        );

        // B lists A's public key: A's token verifies with what B hands out.
        assert_ne!(a.keys().signing_kid(), b.keys().signing_kid());
        let keys = within("public keys", on_b_client.public_keys())
            .await
            .unwrap();
        assert!(keys.iter().any(|k| k.kid == a.keys().signing_kid()));
        let claims = token::verify(&on_a.token, &key_set(&keys), SystemTime::now())
            .expect("A's token verifies with B's keys");
        assert_eq!(claims.app, "calc");
    }

    async fn star(registries: &[std::net::SocketAddr], app: (&str, &str)) -> Stardust {
        let mut builder = Stardust::builder()
            .app(app.0, app.1)
            .heartbeat(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
        for addr in registries {
            builder = builder.registry(addr.to_string());
        }
        within("a registry session", builder.connect())
            .await
            .expect("connect to the registry")
    }

    struct Provider {
        _star: Stardust,
        provider: stardust::Provider,
        calls: Arc<AtomicU64>,
    }

    async fn provider(registries: &[std::net::SocketAddr], id: u32) -> Provider {
        let star = star(registries, PROVIDER).await;
        let calls = Arc::new(AtomicU64::new(0));
        let service = CalcImpl {
            id,
            calls: calls.clone(),
        };
        let provider = within(
            "serve",
            star.serve(
                Server::builder().serve(CalcServer::new(service)),
                "127.0.0.1:0",
            ),
        )
        .await
        .expect("serve");
        Provider {
            _star: star,
            provider,
            calls,
        }
    }

    impl Provider {
        /// Waits (bounded) until this provider has taken `more` calls beyond what it has now.
        async fn takes_calls(&self, more: u64, what: &str) {
            let from = self.calls.load(Ordering::Relaxed);
            within(what, async {
                while self.calls.load(Ordering::Relaxed) < from + more {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
        }
    }

    /// Calls `add` in a loop (paced, so it does not starve the nodes on a 2-core machine)
    /// until stopped; every call must succeed.
    struct Caller {
        stop: Arc<std::sync::atomic::AtomicBool>,
        task: tokio::task::JoinHandle<(u64, Vec<String>)>,
    }

    impl Caller {
        fn start(client: CalcClient) -> Caller {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            let task = tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                let mut i = 0i64;
                while !flag.load(Ordering::Relaxed) {
                    match client.add(i, 1).await {
                        Ok(sum) if sum == i + 1 => ok += 1,
                        Ok(sum) => failed.push(format!("{i} + 1 = {sum}?")),
                        Err(e) => failed.push(e.to_string()),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (ok, failed)
            });
            Caller { stop, task }
        }

        /// Stops the loop and asserts that no call failed.
        async fn no_call_failed(self) {
            self.stop.store(true, Ordering::Relaxed);
            let (ok, failed) = within("the caller to stop", self.task).await.unwrap();
            assert!(
                failed.is_empty(),
                "{} of {} calls failed: {:?}",
                failed.len(),
                ok + failed.len() as u64,
                &failed[..failed.len().min(5)]
            );
            assert!(ok > 40, "only {ok} calls");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losing_a_node_loses_no_call() {
        let test = "losing_a_node_loses_no_call";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        // Far above the 200 ms heartbeats; short enough that a lease the dead node held
        // would run out while the test watches.
        let ttl = Duration::from_secs(3);
        let a = node(&store, config(&dir, "a", true, ttl)).await;
        let b = node(&store, config(&dir, "b", true, ttl)).await;
        let both = [a.local_addr(), b.local_addr()];

        // Provider 1 knows both nodes and logs in through A (the first); provider 2 knows
        // only B; provider 3 knows only A, so its registration dies with A's leases (the
        // event that shows they ran out while calls went on). The consumer logs in through
        // A: its token is A's.
        let p1 = provider(&both, 1).await;
        let p2 = provider(&[b.local_addr()], 2).await;
        let p3 = provider(&[a.local_addr()], 3).await;
        table_until(&b, "every provider in B's table", |t| t.len() == 3).await;
        let consumer = star(&both, CONSUMER).await;
        let client = consumer.client::<CalcClient>();

        // Provider 2 (logged in only through B) accepts a token A issued (bound to a key the
        // client proves).
        let key = stardust::auth::ProofKey::from_seed([6; 32]);
        let (a_token, _) = a
            .keys()
            .issue_bound(CONSUMER.0, None, Some(key.public_key()));
        let direct = Client::builder()
            .credentials(StaticToken(a_token.clone()))
            .proof_key(key.clone())
            .connect(p2.provider.local_addr())
            .await
            .expect("connect to provider 2 with A's token");
        assert_eq!(CalcClient::new(direct).who().await.unwrap(), 2);

        // Calls run throughout; every one must succeed.
        let caller = Caller::start(client.clone());
        p1.takes_calls(1, "calls to reach provider 1").await;
        p2.takes_calls(1, "calls to reach provider 2").await;

        // Node A dies: no goodbye, no cleanup.
        let a_node = a.node_id().to_owned();
        drop(a);

        // Provider 1 registers again through B (B now holds its lease), and provider 3's
        // registration goes when the lease A held for it expires: provider 1's, moved to B,
        // does not.
        table_until(
            &b,
            "provider 1 to re-register through B and provider 3's lease to expire",
            |t| t.len() == 2 && t.iter().all(|r| r.local),
        )
        .await;
        let endpoints_now: Vec<String> = b
            .registrations()
            .into_iter()
            .map(|r| r.instance.endpoint)
            .collect();
        assert!(!endpoints_now.contains(&p3.provider.endpoint().to_owned()));
        assert!(endpoints_now.contains(&p1.provider.endpoint().to_owned()));
        // Calls keep flowing to both providers after the move.
        p1.takes_calls(20, "calls to provider 1 after the failover")
            .await;
        p2.takes_calls(20, "calls to provider 2 after the failover")
            .await;
        // A's token still opens provider 2 after A died (its key outlives its tokens).
        let direct = Client::builder()
            .credentials(StaticToken(a_token))
            .proof_key(key)
            .connect(p2.provider.local_addr())
            .await
            .expect("A's token after A died");
        assert_eq!(CalcClient::new(direct).who().await.unwrap(), 2);

        caller.no_call_failed().await;
        assert_ne!(b.node_id(), a_node);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_of_a_dead_node_goes_when_its_lease_expires() {
        let test = "a_provider_of_a_dead_node_goes_when_its_lease_expires";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(2);
        let a = node(&store, config(&dir, "a", true, ttl)).await;
        let b = node(&store, config(&dir, "b", true, ttl)).await;

        // The provider knows only A: when A dies it has nowhere to register again.
        let orphan = provider(&[a.local_addr()], 1).await;
        // One through B that stays.
        let kept = provider(&[b.local_addr()], 2).await;
        let (consumer, _) = login(b.local_addr(), CONSUMER.0, CONSUMER.1).await;
        let mut pushes = consumer.client().notifications();
        let orphan_ep = orphan.provider.endpoint().to_owned();
        let kept_ep = kept.provider.endpoint().to_owned();
        let initial = within("subscribe", consumer.subscribe(SERVICE.into(), "".into()))
            .await
            .unwrap()
            .unwrap();
        let mut listed: Vec<String> = initial.iter().map(|i| i.endpoint.clone()).collect();
        while listed.len() < 2 {
            let event = next_event(&mut pushes).await;
            listed = event.instances.iter().map(|i| i.endpoint.clone()).collect();
        }
        assert!(listed.contains(&orphan_ep) && listed.contains(&kept_ep));

        // A dies without cleanup. Its provider's heartbeats kept the lease alive until now;
        // nobody renews it any more, and etcd expires it.
        drop(a);
        let event = within("the orphan's lease to expire", async {
            loop {
                let event = next_event(&mut pushes).await;
                if event.instances.len() < 2 {
                    return event;
                }
            }
        })
        .await;
        assert_eq!(endpoints(&event.instances), [kept_ep.as_str()]);
        table_until(&b, "B's table to drop the orphan", |t| t.len() == 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_crash_loses_no_call_and_the_registry_recovers() {
        let test = "an_etcd_crash_loses_no_call_and_the_registry_recovers";
        // Its own etcd, even where a shared one is named: this test kills it.
        let Some(mut etcd) = Etcd::private(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let a = node(&store, config(&dir, "a", true, Duration::from_secs(5))).await;
        let p1 = provider(&[a.local_addr()], 1).await;
        let consumer = star(&[a.local_addr()], CONSUMER).await;
        let client = consumer.client::<CalcClient>();

        let caller = Caller::start(client);
        p1.takes_calls(20, "calls to provider 1").await;

        // etcd crashes: the node keeps serving its last table, consumers their lists; its
        // health check says it is behind.
        assert_eq!(a.store_health(), Ok(()));
        etcd.kill();
        within("the node to notice etcd is gone", async {
            while a.store_health().is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        p1.takes_calls(20, "calls while etcd is down").await;

        // etcd comes back: the node's watch lists again, the provider's registration is
        // renewed or made again, and a provider registering now reaches the consumer.
        etcd.restart(test).await;
        let p2 = provider(&[a.local_addr()], 2).await;
        p2.takes_calls(20, "calls to a provider registered after the restart")
            .await;
        p1.takes_calls(20, "calls to provider 1 after the restart")
            .await;
        table_until(&a, "both providers in the table", |t| {
            t.len() == 2 && t.iter().all(|r| r.local)
        })
        .await;
        assert_eq!(a.store_health(), Ok(()));

        caller.no_call_failed().await;
    }

    /// A `stardust-registry serve` process (built with the `etcd` feature, like this test).
    struct RegistryProcess {
        child: std::process::Child,
        addr: SocketAddr,
        node: String,
    }

    impl RegistryProcess {
        /// Starts `serve --config config` on an OS-chosen loopback port; returns once it logs
        /// that it listens (its address and node id are read from that line).
        fn start(config: &std::path::Path) -> RegistryProcess {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stardust-registry"))
                .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "off"])
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the registry binary runs");
            let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
            let mut seen = Vec::new();
            // Bounded by the process's own start-up output (or its exit).
            let listening = tokio::task::block_in_place(|| {
                for line in lines.by_ref().take(200) {
                    let line = line.ok()?;
                    if line.contains("registry listening") {
                        return Some(line);
                    }
                    seen.push(line);
                }
                None
            })
            .unwrap_or_else(|| panic!("the registry did not start:\n{}", seen.join("\n")));
            // Keep reading its log, so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            let field = |key: &str| {
                let at = listening.find(&format!(" {key}=")).expect(key) + key.len() + 2;
                listening[at..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned()
            };
            RegistryProcess {
                addr: field("addr").parse().unwrap(),
                node: field("node"),
                child,
            }
        }

        /// SIGKILL: the process dies without a word to anyone.
        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RegistryProcess {
        fn drop(&mut self) {
            self.kill();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killing_a_registry_process_loses_no_call() {
        let test = "killing_a_registry_process_loses_no_call";
        let Some(etcd) = Etcd::start(test).await else {
            return;
        };
        let store = etcd.store_url(test);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("registry.toml");
        std::fs::write(
            &config,
            format!("dev = true\nlease_ttl = \"3s\"\nstore = \"{store}\"\n"),
        )
        .unwrap();
        let mut a = RegistryProcess::start(&config);
        let b = RegistryProcess::start(&config);
        // An embedded node on the same store, to watch the shared table.
        let observer = node(&store, Config::dev()).await;

        // As in `losing_a_node_loses_no_call`: provider 1 moves, provider 3 cannot.
        let p1 = provider(&[a.addr, b.addr], 1).await;
        let p2 = provider(&[b.addr], 2).await;
        let p3 = provider(&[a.addr], 3).await;
        table_until(&observer, "every provider registered", |t| t.len() == 3).await;
        let consumer = star(&[a.addr, b.addr], CONSUMER).await;
        let caller = Caller::start(consumer.client::<CalcClient>());
        p1.takes_calls(1, "calls to reach provider 1").await;
        p2.takes_calls(1, "calls to reach provider 2").await;

        a.kill();
        // Provider 1 registers again through B; provider 3's lease, which only A renewed,
        // expires.
        table_until(
            &observer,
            "provider 1 to move to B and provider 3 to expire",
            |t| t.len() == 2 && t.iter().all(|r| r.node == b.node),
        )
        .await;
        assert!(
            !observer
                .registrations()
                .iter()
                .any(|r| r.instance.endpoint == p3.provider.endpoint())
        );
        p1.takes_calls(20, "calls to provider 1 after the kill")
            .await;
        p2.takes_calls(20, "calls to provider 2 after the kill")
            .await;
        caller.no_call_failed().await;
    }

    /// Starts a node on `store` reaching etcd with `access`; the error if it cannot.
    async fn try_node(store: &str, access: EtcdAccess) -> Result<RegistryNode, String> {
        within(
            "a registry node to start (or fail) on etcd",
            RegistryNode::builder()
                .config(
                    Config::new()
                        .with_app(
                            PROVIDER.0,
                            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
                        )
                        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
                        .with_key_file(std::env::temp_dir().join(format!(
                            "stardust-etcd-access-{}-{}.toml",
                            std::process::id(),
                            rand_suffix()
                        )))
                        .with_store(StoreConfig::parse(store).unwrap())
                        .with_etcd_access(access),
                )
                .bind("127.0.0.1:0"),
        )
        .await
        .map_err(|e| e.to_string())
    }

    fn rand_suffix() -> u128 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    /// A provider registered through `a` is discovered through `b`.
    async fn shared_between(a: &RegistryNode, b: &RegistryNode) {
        let (provider, _) = login(a.local_addr(), PROVIDER.0, PROVIDER.1).await;
        register_ok(&provider, "127.0.0.1:9100").await;
        table_until(b, "B to learn the registration", |t| t.len() == 1).await;
        let (consumer, _) = login(b.local_addr(), CONSUMER.0, CONSUMER.1).await;
        let found = within("discover", consumer.discover(SERVICE.into(), "".into()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(endpoints(&found), ["127.0.0.1:9100"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_over_tls_with_client_certificates() {
        let test = "an_etcd_over_tls_with_client_certificates";
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = super::pki::TestCa::new("etcd test CA");
        let server = ca.issue(&["127.0.0.1", "localhost"]);
        let client = ca.issue(&["stardust-registry"]);
        let ca_file = write("ca.crt", &ca.pem);
        let tls = super::common::etcd::TlsFiles {
            cert_file: write("etcd.crt", &server.cert),
            key_file: write("etcd.key", &server.key),
            client_ca_file: ca_file.clone(),
        };
        let (client_cert, client_key) = (
            write("client.crt", &client.cert),
            write("client.key", &client.key),
        );
        let Some(etcd) = Etcd::private_tls(test, tls).await else {
            return;
        };
        let store = etcd.store_url(test);
        assert!(store.starts_with("etcds://"), "{store}");
        let access = EtcdAccess::default()
            .with_ca_file(&ca_file)
            .with_client_cert(&client_cert, &client_key);
        let a = try_node(&store, access.clone())
            .await
            .expect("node A over TLS");
        let b = try_node(&store, access).await.expect("node B over TLS");
        shared_between(&a, &b).await;

        // Without a client certificate etcd refuses the connection; trusting another CA, the
        // node refuses etcd's certificate. Either way the node does not start, and says why.
        let no_cert = try_node(&store, EtcdAccess::default().with_ca_file(&ca_file))
            .await
            .unwrap_err();
        assert!(
            no_cert.contains("cannot use its store") && no_cert.contains("cert_file"),
            "{no_cert}"
        );
        let other_ca = write("other-ca.crt", &super::pki::TestCa::new("another CA").pem);
        let wrong_ca = try_node(
            &store,
            EtcdAccess::default()
                .with_ca_file(&other_ca)
                .with_client_cert(&client_cert, &client_key),
        )
        .await
        .unwrap_err();
        assert!(
            wrong_ca.contains("cannot use its store") && wrong_ca.contains("certificate"),
            "{wrong_ca}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_etcd_with_authentication() {
        let test = "an_etcd_with_authentication";
        // Its own etcd: turning authentication on is for the whole etcd.
        let Some(etcd) = Etcd::private(test).await else {
            return;
        };
        let prefix = etcd.prefix(test);
        etcd.enable_auth("registry", "registry-password", &prefix)
            .await;
        let host = etcd.endpoints()[0].trim_start_matches("http://").to_owned();
        let store = format!("etcd://{host}/{prefix}");
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("etcd-password");
        std::fs::write(&password, "registry-password\n").unwrap();
        let access = EtcdAccess::default().with_user("registry", &password);
        let a = try_node(&store, access.clone())
            .await
            .expect("node A with a user");
        let b = try_node(&store, access).await.expect("node B with a user");
        shared_between(&a, &b).await;

        // A wrong password, no credentials, or a prefix outside the user's role: refused.
        let wrong = dir.path().join("wrong-password");
        std::fs::write(&wrong, "guess").unwrap();
        for (store, access) in [
            (&store, EtcdAccess::default().with_user("registry", &wrong)),
            (&store, EtcdAccess::default()),
            (
                &format!("etcd://{host}/elsewhere"),
                EtcdAccess::default().with_user("registry", &password),
            ),
        ] {
            let refused = try_node(store, access).await.unwrap_err();
            assert!(
                refused.contains("cannot use its store")
                    && (refused.contains("authentication")
                        || refused.contains("user and password_file")
                        || refused.contains("permission denied")),
                "{store}: {refused}"
            );
        }
    }
}
