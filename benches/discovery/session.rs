//! Opening registry sessions: one connection each, logged in, many at a time but not all at
//! once (the registry's server admits 256 unfinished handshakes; the bench stays well under).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stardust::Client;
use stardust::discovery::api::{FEATURE_DELTA, RegistryClient, RegistryError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::registry_process::SECRET;

/// Handshakes and logins under way at once.
const PARALLEL: usize = 64;
/// Attempts at connecting, and at logging in while throttled, before giving up.
const ATTEMPTS: u32 = 20;

/// Opens `n` sessions logged in as `app`, in order.
pub async fn open_many(
    addr: SocketAddr,
    app: &'static str,
    n: usize,
) -> Result<Vec<RegistryClient>, String> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            (i, open(addr, app).await)
        });
    }
    let mut sessions: Vec<Option<RegistryClient>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, session) = joined.map_err(|e| format!("session task died: {e}"))?;
        sessions[i] = Some(session.map_err(|e| format!("{app} session {i}: {e}"))?);
    }
    Ok(sessions
        .into_iter()
        .map(|s| s.expect("every task answered"))
        .collect())
}

/// One connection, logged in as `app`.
/// The client's defaults (30 s call deadline, keepalive), as a real provider or consumer has.
pub async fn open(addr: SocketAddr, app: &str) -> Result<RegistryClient, String> {
    let mut attempt = 0;
    let client = loop {
        attempt += 1;
        // Announce revisioned discovery unless the run measures the whole-list protocol.
        let features: &[&str] =
            if std::env::var("STARDUST_DISCOVERY_PROTOCOL").as_deref() == Ok("full") {
                &[]
            } else {
                &[FEATURE_DELTA]
            };
        match Client::builder()
            .features(features.iter().copied())
            .connect(addr)
            .await
        {
            Ok(c) => break c,
            Err(e) if attempt < ATTEMPTS => {
                connect_backoff(attempt, &e.to_string()).await;
            }
            Err(e) => return Err(format!("cannot connect: {e}")),
        }
    };
    let registry = RegistryClient::new(client);
    login(&registry, app).await?;
    Ok(registry)
}

/// Logs `registry`'s connection in as `app`, waiting out throttling as a real client does.
pub async fn login(registry: &RegistryClient, app: &str) -> Result<(), String> {
    for _ in 0..ATTEMPTS {
        match registry.login(app.to_owned(), SECRET.to_owned()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RegistryError::Throttled { retry_after_ms, .. })) => {
                let wait = Duration::from_millis(retry_after_ms.clamp(10, 2_000));
                tokio::time::sleep(wait).await;
            }
            Ok(Err(e)) => return Err(format!("login refused: {e}")),
            Err(e) => return Err(format!("login failed: {e}")),
        }
    }
    Err(format!("login still throttled after {ATTEMPTS} attempts"))
}

/// Backs off before connecting again: 50 ms, doubling, at most 1 s.
async fn connect_backoff(attempt: u32, why: &str) {
    if attempt == 1 {
        eprintln!("discovery bench: connecting failed ({why}); retrying");
    }
    let ms = (50u64 << attempt.min(5)).min(1_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
