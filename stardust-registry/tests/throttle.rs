//! Login throttling at the registry: the bounded queue in front of the hasher, and failures that
//! count even when the caller gives up. (The burst-versus-heartbeats test is the workspace's
//! `tests/registry_throttle.rs`; the backoff arithmetic is unit-tested in `src/throttle.rs`.)

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use common::*;
use stardust::discovery::api::{RegistryClient, RegistryError};
use stardust_registry::{AppConfig, Config, LoginStats, LoginThrottle, RegistryNode};

/// The hash of `slow-secret`, made slow to verify (many argon2 passes: a second on a fast
/// machine, several on a slow one, far more while other work shares the cores), so a test can
/// keep the hasher busy far longer than it needs to look.
fn slow_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let params = Params::new(Params::DEFAULT_M_COST, 150, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_with_salt(b"slow-secret", b"stardust-test-salt")
            .unwrap()
            .to_string()
    })
    .clone()
}

/// Apps `slow` (a slow hash) and `web`, one secret check at a time, and `throttle` tuned.
async fn registry(throttle: LoginThrottle) -> (RegistryNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new()
        .with_key_file(dir.path().join("keys.toml"))
        .with_app("slow", AppConfig::new(slow_hash()))
        .with_app("web", AppConfig::with_secret("web-secret").unwrap())
        .with_login_throttle(LoginThrottle {
            max_concurrent_hashes: Some(1),
            ..throttle
        });
    (start(config).await, dir)
}

/// Bound on waiting for a slow check to finish: the shared [`BOUND`] is not enough for a
/// CPU-bound hash on a loaded 2-core machine (a loaded run once took over 20 s); hitting this
/// is a hang.
const SLOW_BOUND: Duration = Duration::from_secs(180);

/// Waits (within `bound`) until the registry's login counters satisfy `done`.
async fn stats_until(
    node: &RegistryNode,
    what: &str,
    bound: Duration,
    done: impl Fn(&LoginStats) -> bool,
) {
    let wait = async {
        while !done(&node.login_stats()) {
            tokio::task::yield_now().await;
        }
    };
    if tokio::time::timeout(bound, wait).await.is_err() {
        panic!("timed out after {bound:?} waiting for: {what}");
    }
}

/// Logs in as `slow` (its slow check), waiting up to [`SLOW_BOUND`] for the answer.
async fn slow_login(addr: std::net::SocketAddr) -> stardust::discovery::api::LoginReply {
    let client = stardust::Client::builder()
        .timeout(SLOW_BOUND)
        .connect(addr)
        .await
        .expect("connect");
    RegistryClient::new(client)
        .login("slow".into(), "slow-secret".into())
        .await
        .expect("the slow login call")
        .expect("the slow login")
}

fn assert_busy(e: &RegistryError) {
    match e {
        RegistryError::Throttled {
            message,
            retry_after_ms,
        } => {
            assert!(message.starts_with("the registry is busy"), "{message}");
            assert_eq!(*retry_after_ms, 1000, "backoff_min is the hint");
            assert!(message.ends_with("retry in 1.0s"), "{message}");
        }
        other => panic!("expected a busy refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hasher_refuses_logins_instead_of_queueing_them_without_limit() {
    // One login may wait, for 200 ms at most.
    let (node, _dir) = registry(LoginThrottle {
        max_queued: 1,
        queue_timeout: Duration::from_millis(200),
        ..LoginThrottle::default()
    })
    .await;
    let addr = node.local_addr();
    let slow = tokio::spawn(slow_login(addr));
    stats_until(&node, "the slow check to start", BOUND, |s| s.hashes == 1).await;

    // Two more while it runs: one queues (and gives up after 200 ms), the other finds the queue
    // full and is refused at once. Neither is counted as a failure.
    let (a, b) = (connect(addr).await, connect(addr).await);
    let started = tokio::time::Instant::now();
    let (ra, rb) = tokio::join!(
        a.login("web".into(), "web-secret".into()),
        b.login("web".into(), "web-secret".into()),
    );
    assert_busy(&ra.unwrap().unwrap_err());
    assert_busy(&rb.unwrap().unwrap_err());
    assert!(started.elapsed() >= Duration::from_millis(200));
    let stats = node.login_stats();
    assert_eq!(
        (stats.busy, stats.failed, stats.hashes),
        (2, 0, 1),
        "{stats:?}"
    );

    // The slow login itself is fine, and so is everyone once the hasher is free.
    // Bounded by the slow login's own deadline (SLOW_BOUND).
    let reply = slow.await.unwrap();
    assert_eq!(reply.app, "slow");
    login(addr, "web", "web-secret").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_queue_a_login_is_refused_while_another_is_checked() {
    let (node, _dir) = registry(LoginThrottle {
        max_queued: 0,
        ..LoginThrottle::default()
    })
    .await;
    let addr = node.local_addr();
    let slow = tokio::spawn(slow_login(addr));
    stats_until(&node, "the slow check to start", BOUND, |s| s.hashes == 1).await;
    let e = connect(addr)
        .await
        .login("web".into(), "web-secret".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_busy(&e);
    slow.await.unwrap(); // bounded by its own deadline (SLOW_BOUND)
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_caller_gave_up_on_still_counts_as_a_failure() {
    // One free failure: the first wrong secret starts a (long) backoff.
    let (node, _dir) = registry(LoginThrottle {
        free_failures: 1,
        backoff_min: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
        ..LoginThrottle::default()
    })
    .await;
    let addr = node.local_addr();
    // A caller that gives up long before the slow check is done (its call is cancelled).
    let impatient = RegistryClient::new(
        stardust::Client::builder()
            .timeout(Duration::from_millis(100))
            .connect(addr)
            .await
            .unwrap(),
    );
    let e = impatient
        .login("slow".into(), "wrong".into())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), stardust::ErrorKind::DeadlineExceeded, "{e}");
    stats_until(&node, "the abandoned check to finish", SLOW_BOUND, |s| {
        s.failed == 1
    })
    .await;

    // It counted: the right secret is now refused at once, without a check, saying when to
    // come back.
    let e = connect(addr)
        .await
        .login("slow".into(), "slow-secret".into())
        .await
        .unwrap()
        .unwrap_err();
    let RegistryError::Throttled {
        message,
        retry_after_ms,
    } = &e
    else {
        panic!("expected a throttled login, got {e:?}");
    };
    assert!(
        message.starts_with("too many failed logins for this app"),
        "{message}"
    );
    assert!(
        (59_000..=60_000).contains(retry_after_ms),
        "{retry_after_ms}"
    );
    assert!(
        e.to_string()
            .starts_with("throttled: too many failed logins"),
        "{e}"
    );
    let as_framework: stardust::Error = e.clone().into();
    assert_eq!(as_framework.kind(), stardust::ErrorKind::Overloaded);
    assert!(
        as_framework.to_string().contains("retry in"),
        "{as_framework}"
    );
    let stats = node.login_stats();
    assert_eq!((stats.hashes, stats.throttled), (1, 1), "{stats:?}");
    // Other apps are not affected... except through the address, which has one free failure
    // too: `web` was never seen here, so it waits as well.
    let e = connect(addr)
        .await
        .login("web".into(), "web-secret".into())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::Throttled { message, .. } if message.contains("from this address")),
        "{e:?}"
    );
    node.shutdown().await;
}
