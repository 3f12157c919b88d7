//! Registry login throttling over real sockets: a burst of bad logins is refused without being
//! hashed, while a provider's heartbeats keep its leases alive and apps already at home on the
//! address keep logging in; right secrets cannot flood the hasher either.

mod common;

use std::time::Duration;

use common::*;
use futures::FutureExt;
use stardust::Server;
use stardust::Stardust;
use stardust::discovery::api::{
    DISCOVERY_TOPIC, Registration, RegistryClient, RegistryError, Status,
};
use stardust_registry::{AppConfig, Config, LoginThrottle, RegistryNode};
use tokio::sync::watch;
use tokio::time::Instant;

const PROVIDER: (&str, &str) = ("calc-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");
/// The app the burst guesses at.
const VICTIM: (&str, &str) = ("billing", "billing-secret");
/// An app that never logged in from here before the burst.
const NEWCOMER: (&str, &str) = ("reports", "reports-secret");
const WRONG_CREDENTIALS: &str = "unknown app or wrong secret";

/// Providers heartbeat every 100 ms; their leases live 3 s (30 heartbeats) without one.
const HEARTBEAT: Duration = Duration::from_millis(100);
const LEASE_TTL: Duration = Duration::from_secs(3);
const FREE_FAILURES: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
const BURST: usize = 200;
const CONNECTIONS: usize = 8;

fn key_file() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stardust-throttle-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.toml")
}

/// A production-style registry (apps with argon2id hashes, no dev mode) hashing one secret at a
/// time, with `throttle` on top of the test's backoff settings.
async fn registry(throttle: LoginThrottle) -> RegistryNode {
    let config = Config::new()
        .with_key_file(key_file())
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_app(VICTIM.0, AppConfig::with_secret(VICTIM.1).unwrap())
        .with_app(NEWCOMER.0, AppConfig::with_secret(NEWCOMER.1).unwrap())
        .with_lease_ttl(LEASE_TTL)
        .with_login_throttle(throttle);
    RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

fn throttle() -> LoginThrottle {
    LoginThrottle {
        free_failures: FREE_FAILURES,
        backoff_min: BACKOFF_MIN,
        backoff_max: BACKOFF_MAX,
        max_concurrent_hashes: Some(1),
        // This test is about throttling, not about the hash queue's bounds.
        queue_timeout: Duration::from_secs(10),
        ..LoginThrottle::default()
    }
}

async fn connect(addr: std::net::SocketAddr) -> RegistryClient {
    within("connecting", RegistryClient::connect(addr))
        .await
        .expect("connect")
}

async fn login(addr: std::net::SocketAddr, app: (&str, &str)) -> RegistryClient {
    let client = connect(addr).await;
    within("login", client.login(app.0.into(), app.1.into()))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("login as {} refused: {e}", app.0));
    client
}

/// A provider connection of its own, registered for `test.Probe`, that heartbeats every
/// [`HEARTBEAT`] and measures, for each heartbeat, the time from sending the previous one (or
/// the registration) to this one's reply. The registry renewed the lease somewhere within that
/// span, so the largest one bounds the gap between two renewals of the lease.
struct Probe {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<(Duration, u32)>,
}

impl Probe {
    async fn start(addr: std::net::SocketAddr) -> Probe {
        let client = login(addr, PROVIDER).await;
        let mut previous = Instant::now();
        client
            .register(Registration {
                service: "test.Probe".into(),
                version: "1.0.0".into(),
                endpoint: "127.0.0.1:9".into(),
                weight: 100,
                tags: Default::default(),
                tls: false,
                description: None,
            })
            .await
            .unwrap()
            .unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            let (mut worst, mut beats) = (Duration::ZERO, 0);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return (worst, beats),
                }
                let sent = Instant::now();
                client.heartbeat(Status::default()).await.unwrap().unwrap();
                worst = worst.max(previous.elapsed());
                previous = sent;
                beats += 1;
            }
        });
        Probe { stop, task }
    }

    /// Stops heartbeating; returns the largest renewal gap seen and the number of heartbeats.
    async fn finish(self) -> (Duration, u32) {
        self.stop.send(true).unwrap();
        within("the probe to stop", self.task).await.unwrap()
    }
}

/// Logs in, following `Throttled` retry hints (as a client should) until it works.
async fn login_when_allowed(addr: std::net::SocketAddr, app: (&str, &str)) -> u32 {
    let client = connect(addr).await;
    let mut throttled = 0;
    within("a login after the backoff", async {
        loop {
            match client.login(app.0.into(), app.1.into()).await.unwrap() {
                Ok(reply) => {
                    assert_eq!(reply.app, app.0);
                    return;
                }
                Err(RegistryError::Throttled { retry_after_ms, .. }) => {
                    assert!(retry_after_ms <= BACKOFF_MAX.as_millis() as u64);
                    throttled += 1;
                    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                }
                Err(e) => panic!("login as {} refused: {e}", app.0),
            }
        }
    })
    .await;
    throttled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_logins_is_throttled_and_heartbeats_keep_their_leases() {
    let node = registry(throttle()).await;
    let addr = node.local_addr();

    // A real provider (its session heartbeats every 100 ms) and a heartbeat probe.
    let provider_star = Stardust::builder()
        .registry(addr.to_string())
        .app(PROVIDER.0, PROVIDER.1)
        .heartbeat(HEARTBEAT)
        .connect()
        .await
        .expect("provider login");
    let (calc, _control) = CalcImpl::new();
    let _provider = provider_star
        .serve(
            Server::builder().serve(CalcServer::new(calc)),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    let probe = Probe::start(addr).await;
    // A subscriber to both: any push from now on would be a change, i.e. a lost lease.
    let watcher = login(addr, CONSUMER).await;
    let mut pushes = watcher.client().notifications();
    for service in ["test.Calc", "test.Probe"] {
        let now = watcher
            .subscribe(service.into(), "*".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.len(), 1, "{service} is registered");
    }
    let before = node.login_stats();

    // The burst: 200 wrong secrets at once over 8 connections, for a real app and (every
    // fourth) for an app that does not exist. Meanwhile, an app that logged in from this
    // address before logs in again with its right secret.
    let burst_clients: Vec<RegistryClient> =
        futures::future::join_all((0..CONNECTIONS).map(|_| RegistryClient::connect(addr)))
            .await
            .into_iter()
            .map(|c| c.expect("connect"))
            .collect();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let client = burst_clients[i % CONNECTIONS].clone();
        let app = if i % 4 == 3 { "ghost" } else { VICTIM.0 };
        burst.spawn(async move { client.login(app.into(), format!("guess-{i}")).await });
    }
    let known_again = connect(addr).await;
    let (results, relogin) = tokio::join!(
        within("the burst", burst.join_all()),
        within(
            "a known app's login during the burst",
            known_again.login(CONSUMER.0.into(), CONSUMER.1.into())
        ),
    );
    relogin
        .unwrap()
        .expect("an app at home on this address is not locked out by the burst");

    let (mut checked, mut throttled) = (0, 0);
    for result in results {
        match result.expect("the call itself works") {
            Ok(_) => panic!("a wrong secret was accepted"),
            Err(RegistryError::Unauthorized(m)) => {
                assert_eq!(m, WRONG_CREDENTIALS);
                checked += 1;
            }
            Err(RegistryError::Throttled {
                message,
                retry_after_ms,
            }) => {
                assert!(message.contains("; retry in "), "{message}");
                assert!(retry_after_ms > 0 && retry_after_ms <= BACKOFF_MAX.as_millis() as u64);
                throttled += 1;
            }
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    }
    // Only the free failures were checked (a few more only if the burst outlasted a backoff);
    // every other guess was refused at once, without argon2.
    assert!(
        (FREE_FAILURES as usize..=FREE_FAILURES as usize + 2).contains(&checked),
        "{checked} guesses were checked"
    );
    assert_eq!(checked + throttled, BURST);
    let stats = node.login_stats();
    assert_eq!(
        stats.hashes - before.hashes,
        checked as u64 + 1,
        "{stats:?}"
    );
    assert_eq!(stats.failed - before.failed, checked as u64, "{stats:?}");
    assert_eq!(
        stats.throttled - before.throttled,
        throttled as u64,
        "{stats:?}"
    );
    assert_eq!(stats.succeeded - before.succeeded, 1, "{stats:?}");
    assert_eq!(
        stats.busy, 0,
        "nothing waited long enough to be refused as busy"
    );

    // The address is backing off for apps it has no history with, and the app for its
    // guessers; both are fine again once the backoff is over.
    let e = connect(addr)
        .await
        .login(NEWCOMER.0.into(), NEWCOMER.1.into())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::Throttled { message, .. }
            if message.starts_with("too many failed logins from this address")),
        "{e:?}"
    );
    assert!(
        login_when_allowed(addr, VICTIM).await >= 1,
        "billing had to wait"
    );
    login_when_allowed(addr, NEWCOMER).await;

    // Throughout, the leases were renewed well within their TTL: no push, both still listed.
    for service in ["test.Calc", "test.Probe"] {
        let now = watcher
            .discover(service.into(), "*".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(now.len(), 1, "{service} is still registered");
    }
    while let Some(Some(note)) = pushes.recv().now_or_never() {
        assert_ne!(
            note.topic(),
            DISCOVERY_TOPIC,
            "a registration changed during the burst: {:?}",
            note.decode::<stardust::discovery::api::DiscoveryEvent>()
        );
    }
    let (worst, beats) = probe.finish().await;
    assert!(beats >= 10, "{beats} heartbeats");
    assert!(
        worst < LEASE_TTL,
        "a lease went {worst:?} without renewal (TTL {LEASE_TTL:?})"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_secrets_are_rate_limited_per_address() {
    // Three logins at once per address, then one every ten seconds.
    let node = registry(LoginThrottle {
        attempt_burst: 3,
        attempts_per_second: 0.1,
        ..throttle()
    })
    .await;
    let addr = node.local_addr();
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(connect(addr).await);
    }
    let results = futures::future::join_all(
        clients
            .iter()
            .map(|c| c.login(PROVIDER.0.into(), PROVIDER.1.into())),
    )
    .await;
    let (mut ok, mut limited) = (0, 0);
    for result in results {
        match result.unwrap() {
            Ok(_) => ok += 1,
            Err(RegistryError::Throttled {
                message,
                retry_after_ms,
            }) => {
                assert!(
                    message.starts_with("too many logins from this address"),
                    "{message}"
                );
                assert!((1..=10_000).contains(&retry_after_ms), "{retry_after_ms}");
                limited += 1;
            }
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    }
    assert_eq!((ok, limited), (3, 7));
    let stats = node.login_stats();
    assert_eq!((stats.hashes, stats.succeeded, stats.throttled), (3, 3, 7));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_starting_while_its_host_is_rate_limited_waits_its_turn() {
    // One login at once per address, then one a second: a second process starting right after
    // the first is throttled (the second leaves room for a loaded machine's slowest start), and
    // `connect` waits the time the registry names instead of failing.
    let node = registry(LoginThrottle {
        attempt_burst: 1,
        attempts_per_second: 1.0,
        ..throttle()
    })
    .await;
    let first = connect(node.local_addr()).await;
    first
        .login(CONSUMER.0.into(), CONSUMER.1.into())
        .await
        .unwrap()
        .unwrap();
    let star = within(
        "the throttled process to log in",
        Stardust::builder()
            .registry(node.local_addr().to_string())
            .app(PROVIDER.0, PROVIDER.1)
            .connect(),
    )
    .await
    .expect("logged in after waiting its turn");
    assert_eq!(star.app(), PROVIDER.0);
    let stats = node.login_stats();
    assert!(stats.throttled >= 1, "{stats:?}");
    assert_eq!(stats.succeeded, 2, "{stats:?}");
}
