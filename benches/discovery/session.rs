//! Opening registry sessions: one connection each, logged in, many at a time but not all at
//! once (the registry's server admits 256 unfinished handshakes; the bench stays well under).
//! A session keeps the access token its login returned, to resume with after the registry
//! restarts (see `restart.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use stardust::Client;
use stardust::discovery::api::{FEATURE_DELTA, FEATURE_RESUME, RegistryClient, RegistryError};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::registry_process::SECRET;

/// Handshakes and logins under way at once.
const PARALLEL: usize = 64;
/// Attempts at connecting, and at logging in while throttled, before giving up.
const ATTEMPTS: u32 = 20;

/// A logged-in registry connection, and the access token its login (or resume) returned.
pub struct Session {
    pub client: RegistryClient,
    pub token: String,
}

/// How a session came back after a registry restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoined {
    /// `resume` with the token it held: no secret check.
    Resumed,
    /// A full login, because of `why` (the registry refused the token, or does not take
    /// `resume`).
    LoggedIn { why: String },
}

/// What limits handshakes and logins under way at once; shared by the sessions opened together.
pub fn handshake_permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(PARALLEL))
}

/// Opens `n` sessions logged in as `app`, in order.
pub async fn open_many(
    addr: SocketAddr,
    app: &'static str,
    n: usize,
) -> Result<Vec<Session>, String> {
    let permits = handshake_permits();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            (i, open(addr, app).await)
        });
    }
    let mut sessions: Vec<Option<Session>> = (0..n).map(|_| None).collect();
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
pub async fn open(addr: SocketAddr, app: &str) -> Result<Session, String> {
    let client = connect(addr, true).await?;
    let token = login(&client, app).await?;
    Ok(Session { client, token })
}

/// A new connection after a registry restart, logged in again as a real client does: `resume`
/// with the token held, a full login if the registry refuses it. The caller holds a handshake
/// permit. Connecting is retried with backoff while the port is not accepting yet (the
/// registry may still be starting).
pub async fn rejoin(
    addr: SocketAddr,
    app: &str,
    token: String,
) -> Result<(Session, Rejoined), String> {
    let client = connect(addr, false).await?;
    let why = if client.client().peer_features().has(FEATURE_RESUME) {
        // Refused (expired, unknown key, app gone) or failed: the secret, as a real client.
        match client.resume(token).await {
            Ok(Ok(reply)) => {
                let session = Session {
                    client,
                    token: reply.token,
                };
                return Ok((session, Rejoined::Resumed));
            }
            Ok(Err(e)) => format!("resume refused: {e}"),
            Err(e) => format!("resume failed: {e}"),
        }
    } else {
        format!("the registry does not announce {FEATURE_RESUME}")
    };
    let token = login(&client, app).await?;
    Ok((Session { client, token }, Rejoined::LoggedIn { why }))
}

/// A connection to the registry, retried with backoff; says so on stderr if `loud` (refusals
/// are news at start-up, not while a restarted registry comes up).
/// The client's defaults (30 s call deadline, keepalive), as a real provider or consumer has.
async fn connect(addr: SocketAddr, loud: bool) -> Result<RegistryClient, String> {
    // Announce revisioned discovery unless the run measures the whole-list protocol.
    let features: &[&str] = if std::env::var("STARDUST_DISCOVERY_PROTOCOL").as_deref() == Ok("full")
    {
        &[]
    } else {
        &[FEATURE_DELTA]
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        match Client::builder()
            .features(features.iter().copied())
            .connect(addr)
            .await
        {
            Ok(c) => return Ok(RegistryClient::new(c)),
            Err(e) if attempt < ATTEMPTS => {
                if loud && attempt == 1 {
                    eprintln!("discovery bench: connecting failed ({e}); retrying");
                }
                connect_backoff(attempt).await;
            }
            Err(e) => return Err(format!("cannot connect: {e}")),
        }
    }
}

/// Logs `registry`'s connection in as `app`, waiting out throttling as a real client does;
/// returns the access token.
pub async fn login(registry: &RegistryClient, app: &str) -> Result<String, String> {
    for _ in 0..ATTEMPTS {
        match registry.login(app.to_owned(), SECRET.to_owned()).await {
            Ok(Ok(reply)) => return Ok(reply.token),
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

/// Backs off before connecting again: 100 ms, doubling, at most 1 s.
async fn connect_backoff(attempt: u32) {
    let ms = (50u64 << attempt.min(5)).min(1_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
