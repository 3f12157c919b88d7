//! Session resumption (issue 15): a connection logs in again with a still-valid access token
//! (`resume`) instead of its secret, checked by signature alone, so a restarted registry takes
//! its returning sessions back without an argon2 check each. Counted, not timed: the node's
//! `login_stats` says how many secrets it checked (`hashes`) and how many sessions resumed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use common::*;
use stardust::auth::token;
use stardust::discovery::api::{FEATURE_RESUME, RegistryClient, RegistryError, Status};
use stardust::{Server, Stardust};
use stardust_registry::{AppConfig, Config, LoginStats, RegistryNode, key_set};

const PROVIDER: (&str, &str) = ("echo-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");
const SERVICE: &str = "resume.Echo";

/// The service the end-to-end test calls.
#[stardust::service(name = "resume.Echo", version = "1.0.0")]
pub trait Echo {
    /// The provider's number.
    #[stardust(idempotent)]
    async fn who(&self) -> u32;
}

#[derive(Clone)]
struct EchoImpl {
    id: u32,
    calls: Arc<AtomicU64>,
}

impl Echo for EchoImpl {
    async fn who(&self) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.id
    }
}

/// Both apps, with a key file in `dir`: every node started from it signs with the same keys.
fn config(dir: &tempfile::TempDir) -> Config {
    Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_key_file(dir.path().join("keys.toml"))
}

/// `resume(token)` on `client`, which must be refused as `Unauthorized`; returns the message.
async fn refused_resume(client: &RegistryClient, token: &str) -> String {
    let answer = within("a resume", client.resume(token.to_owned()))
        .await
        .expect("resume call");
    match answer {
        Err(RegistryError::Unauthorized(m)) => m,
        other => panic!("resume should be refused as Unauthorized, got {other:?}"),
    }
}

/// A refused resume leaves the connection anonymous.
async fn still_anonymous(client: &RegistryClient) {
    let e = within("a heartbeat", client.heartbeat(Status::default()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, RegistryError::Unauthorized("log in first".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_with_the_same_key_file_resumes_without_a_secret_check() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config(&dir)).await;
    let (_client, reply) = login(first.local_addr(), PROVIDER.0, PROVIDER.1).await;
    assert!(reply.features.iter().any(|f| f == FEATURE_RESUME));
    assert_eq!(
        first.login_stats().hashes,
        1,
        "the login checked its secret"
    );

    // A second node from the same config and key file: a fresh connection resumes there.
    let second = start(config(&dir)).await;
    let client = connect(second.local_addr()).await;
    let resumed = within("a resume", client.resume(reply.token.clone()))
        .await
        .expect("resume call")
        .expect("the token resumes on a node with the same keys");
    assert_eq!(resumed.app, PROVIDER.0);
    assert!(resumed.features.iter().any(|f| f == FEATURE_RESUME));
    let claims = token::verify(&resumed.token, &key_set(&resumed.keys), SystemTime::now())
        .expect("the resumed session's new token verifies with the keys it came with");
    assert_eq!(claims.app, PROVIDER.0);

    // The session works like a logged-in one.
    let endpoint = "127.0.0.1:9100";
    within(
        "register",
        client.register(registration(SERVICE, "1.0.0", endpoint)),
    )
    .await
    .unwrap()
    .expect("a resumed session registers");
    within("heartbeat", client.heartbeat(Status::default()))
        .await
        .unwrap()
        .expect("a resumed session heartbeats");
    let found = within("discover", client.discover(SERVICE.into(), "*".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(endpoints(&found), [endpoint]);
    assert_eq!(found[0].app, PROVIDER.0, "registered as the token's app");

    let stats = second.login_stats();
    assert_eq!(
        stats.hashes, 0,
        "no secret checked on the second node: {stats:?}"
    );
    assert_eq!(stats.resumed, 1, "{stats:?}");
    assert_eq!((stats.succeeded, stats.resume_refused), (0, 0), "{stats:?}");
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_malformed_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(&dir)).await;
    let client = connect(node.local_addr()).await;

    let past = SystemTime::now() - Duration::from_secs(7200);
    let expired = node
        .keys()
        .mint(CONSUMER.0, None, past, past + Duration::from_secs(3600));
    let m = refused_resume(&client, &expired).await;
    assert!(
        m.starts_with("cannot resume:") && m.contains("expired"),
        "{m}"
    );
    still_anonymous(&client).await;

    let m = refused_resume(&client, "sd1.not-a-token").await;
    assert!(
        m.starts_with("cannot resume:") && m.contains("malformed"),
        "{m}"
    );
    still_anonymous(&client).await;
    // Refused by signature and expiry alone: nothing else was counted, no secret checked.
    let mut expected = LoginStats::default();
    expected.resume_refused = 2;
    assert_eq!(node.login_stats(), expected);

    // The same key's token, still valid, is taken on that very connection.
    let now = SystemTime::now();
    let valid = node
        .keys()
        .mint(CONSUMER.0, None, now, now + Duration::from_secs(60));
    let reply = within("a resume", client.resume(valid))
        .await
        .unwrap()
        .expect("a valid token resumes");
    assert_eq!(reply.app, CONSUMER.0);
    let stats = node.login_stats();
    assert_eq!(
        (stats.resumed, stats.resume_refused, stats.hashes),
        (1, 2, 0)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_registry_without_key_file_falls_back_to_logins_after_a_restart() {
    let node = start(Config::dev()).await;
    let addr = node.local_addr();
    let (client, reply) = login(addr, "dev-app", "dev-secret").await;
    drop(client);
    node.shutdown().await;

    // Its keys lived in memory: the restarted registry signs with new ones.
    let node = RegistryNode::builder()
        .config(Config::dev())
        .bind(addr)
        .await
        .expect("the same port binds again after shutdown");
    let client = connect(addr).await;
    let m = refused_resume(&client, &reply.token).await;
    assert!(
        m.starts_with("cannot resume:") && m.contains("unknown key"),
        "{m}"
    );
    still_anonymous(&client).await;
    let stats = node.login_stats();
    assert_eq!((stats.resume_refused, stats.resumed), (1, 0), "{stats:?}");

    // What a client does then: log in with its secret, which works (and costs a check).
    let again = within("login", client.login("dev-app".into(), "dev-secret".into()))
        .await
        .unwrap()
        .expect("the full login works");
    assert_eq!(again.app, "dev-app");
    assert!(node.login_stats().hashes >= 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_an_app_removed_from_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let full = start(config(&dir)).await;
    let (_client, reply) = login(full.local_addr(), CONSUMER.0, CONSUMER.1).await;

    // Same keys, but the consumer app is gone from this node's config.
    let trimmed = start(
        Config::new()
            .with_app(
                PROVIDER.0,
                AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
            )
            .with_key_file(dir.path().join("keys.toml")),
    )
    .await;
    let client = connect(trimmed.local_addr()).await;
    let m = refused_resume(&client, &reply.token).await;
    assert!(
        m.starts_with("cannot resume:") && m.contains("no longer configured"),
        "{m}"
    );
    still_anonymous(&client).await;
    let stats = trimmed.login_stats();
    assert_eq!((stats.resume_refused, stats.resumed), (1, 0), "{stats:?}");

    // Where the app is still configured, the same token resumes.
    let other = connect(full.local_addr()).await;
    within("a resume", other.resume(reply.token.clone()))
        .await
        .unwrap()
        .expect("resumes where the app exists");
    assert_eq!(full.login_stats().resumed, 1);
    trimmed.shutdown().await;
    full.shutdown().await;
}

/// A handle logged in as `app` to the registry at `addr`, with short heartbeat, pull and
/// reconnect periods (so a restart is noticed and recovered from quickly).
async fn star(addr: std::net::SocketAddr, app: (&str, &str)) -> Stardust {
    within(
        "a registry session",
        Stardust::builder()
            .registry(addr.to_string())
            .app(app.0, app.1)
            .heartbeat(Duration::from_millis(100))
            .pull_interval(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .connect(),
    )
    .await
    .expect("connect to the registry")
}

/// A provider of `resume.Echo` answering `id`, registered through its own session.
async fn provider(
    addr: std::net::SocketAddr,
    id: u32,
) -> (Stardust, stardust::Provider, Arc<AtomicU64>) {
    let star = star(addr, PROVIDER).await;
    let calls = Arc::new(AtomicU64::new(0));
    let service = EchoImpl {
        id,
        calls: calls.clone(),
    };
    let provider = within(
        "serve",
        star.serve(
            Server::builder().serve(EchoServer::new(service)),
            "127.0.0.1:0",
        ),
    )
    .await
    .expect("serve");
    (star, provider, calls)
}

/// Waits (bounded) until `cond` holds, checking every few milliseconds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_after_a_registry_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(&dir)).await;
    let addr = node.local_addr();
    let (_provider_star, first, _) = provider(addr, 1).await;
    let consumer = star(addr, CONSUMER).await;
    let echo = consumer.client::<EchoClient>();
    // The consumer may have watched the new node before the provider registered there (its
    // snapshot was empty then); the registration's delta brings the provider back to it.
    within("the consumer to call the provider again", async {
        loop {
            match echo.who().await {
                Ok(who) => break assert_eq!(who, 1),
                Err(e) if e.kind() == stardust::ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(node.login_stats().hashes, 2, "both logged in with secrets");

    node.shutdown().await;
    let node = RegistryNode::builder()
        .config(config(&dir))
        .bind(addr)
        .await
        .expect("the same port binds again after shutdown");

    // Both sessions come back by themselves: the provider is listed again, the consumer
    // follows the service again (its watch is the node's one subscription).
    let endpoint = first.endpoint().to_owned();
    until("both sessions to come back", || {
        node.registrations()
            .iter()
            .any(|r| r.instance.endpoint == endpoint)
            && node.subscriptions() == 1
    })
    .await;
    let stats = node.login_stats();
    assert!(stats.resumed >= 2, "{stats:?}");
    assert_eq!(
        stats.hashes, 0,
        "nobody's secret was checked again: {stats:?}"
    );
    assert_eq!(
        (stats.succeeded, stats.failed, stats.resume_refused),
        (0, 0, 0),
        "{stats:?}"
    );
    // The consumer may have watched the new node before the provider registered there (its
    // snapshot was empty then); the registration's delta brings the provider back to it.
    within("the consumer to call the provider again", async {
        loop {
            match echo.who().await {
                Ok(who) => break assert_eq!(who, 1),
                Err(e) if e.kind() == stardust::ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;

    // The consumer's session follows the new node: a provider registered there now (a first
    // login, so one secret check) gets its calls.
    let (_second_star, _second, second_calls) = provider(addr, 2).await;
    within("calls to reach the new provider", async {
        while second_calls.load(Ordering::Relaxed) == 0 {
            echo.who().await.expect("calls keep working");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(node.login_stats().hashes, 1);
    node.shutdown().await;
}
