//! Logins: the throttle first, then a hash permit (a bounded queue in front of few of them),
//! then argon2 on the blocking pool, in working memory lent by the registry's [`ArgonPool`].
//!
//! [`ArgonPool`]: crate::secret::ArgonPool

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use stardust::discovery::api::RegistryError;
use tokio::sync::{SemaphorePermit, oneshot};
use tokio::time::Instant;

use super::checks::valid_name;
use super::{MAX_NAME_LEN, RegistryImpl, Shared, store_error, unauthorized};
use crate::monitor::LoginStats;
use crate::secret;
use crate::throttle::{self, Scope, Ticket, Window};

pub(super) const WRONG_CREDENTIALS: &str = "unknown app or wrong secret";
/// Longest secret accepted (argon2 itself takes anything; this bounds the work per attempt).
const MAX_SECRET_LEN: usize = 4096;
/// "The registry is busy" is logged at most this often (with the number of logins refused).
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
    hashes: AtomicU64,
    resumed: AtomicU64,
    resume_refused: AtomicU64,
}

impl RegistryImpl {
    /// The login counters so far.
    pub(crate) fn login_stats(&self) -> LoginStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LoginStats {
            succeeded: get(&c.succeeded),
            failed: get(&c.failed),
            throttled: get(&c.throttled),
            busy: get(&c.busy),
            hashes: get(&c.hashes),
            resumed: get(&c.resumed),
            resume_refused: get(&c.resume_refused),
        }
    }

    /// Checks a `resume`: the token must verify with this registry's keys (or a sibling node's)
    /// and not be expired, and its app must still exist. Costs one signature check: no argon2,
    /// no place in the login queue, which is the point (a registry restart's reconnecting
    /// sessions come back in seconds). Returns the app.
    pub(super) fn check_resume(
        &self,
        token: &str,
        peer: SocketAddr,
    ) -> Result<String, RegistryError> {
        let counters = &self.shared.counters;
        self.shared.keys.refresh();
        let keys = crate::keys::key_set(&self.all_public_keys());
        let checked = stardust::auth::token::verify(token, &keys, std::time::SystemTime::now())
            .map_err(|e| unauthorized(&format!("cannot resume: {}", e.message())))
            .and_then(|claims| {
                // A bound token resumes only on a connection that proved its key: a captured
                // token is no way in.
                if let Some(bound) = claims.cnf {
                    let proven =
                        stardust::Context::with_current(|ctx| ctx.and_then(|c| c.proof_key()));
                    if proven != Some(bound) {
                        return Err(unauthorized(
                            "cannot resume: the token is bound to a key this connection did not \
                             prove in its handshake (proof of possession)",
                        ));
                    }
                }
                let known = self.app_config(&claims.app).is_some()
                    || (self.shared.config.dev && self.shared.store.dev_app(&claims.app).is_some());
                if known {
                    Ok(claims.app)
                } else {
                    Err(unauthorized(
                        "cannot resume: the token's app is no longer configured",
                    ))
                }
            });
        match &checked {
            Ok(app) => {
                counters.resumed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(app = ?app, %peer, "session resumed with its access token");
            }
            Err(e) => {
                counters.resume_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "resume refused");
            }
        }
        checked
    }

    /// Checks `secret` for `app` logging in from `peer`: first the throttle (refusing at once,
    /// without hashing), then argon2 on the blocking pool. Creates the app in dev mode.
    pub(super) async fn authenticate(
        &self,
        app: &str,
        secret: String,
        peer: SocketAddr,
    ) -> Result<(), RegistryError> {
        // Oversized names all share one (impossible) name in the throttle's books.
        let key = if app.len() <= MAX_NAME_LEN { app } else { "" };
        let admitted = self
            .shared
            .throttle
            .lock()
            .admit(key, peer.ip(), std::time::Instant::now());
        let ticket = match admitted {
            Ok(ticket) => ticket,
            Err(refusal) => {
                self.shared
                    .counters
                    .throttled
                    .fetch_add(1, Ordering::Relaxed);
                if refusal.log {
                    let refused = self.shared.throttle.lock().take_rate_refusals(peer.ip());
                    tracing::warn!(
                        source = %throttle::source_of(peer.ip()),
                        refused,
                        "logins throttled: too many logins from this address (further refusals \
                         are not logged for a minute)"
                    );
                }
                return Err(RegistryError::Throttled {
                    message: refusal.message(),
                    retry_after_ms: millis(refusal.retry_after),
                });
            }
        };
        let pending = Pending {
            shared: self.shared.clone(),
            ticket: Some(ticket),
        };
        // The check runs in its own task: once admitted, its outcome is counted even if the
        // caller goes away (cancelling the login must not undo a failure), and its hash permit
        // is held until argon2 is done. A caller gone while still queued gives its place back.
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let app = app.to_owned();
        tokio::spawn(async move {
            let mut tx = tx;
            let result = this.check_admitted(&app, secret, pending, &mut tx).await;
            if let Some(result) = result {
                let _ = tx.send(result);
            }
        });
        rx.await.unwrap_or_else(|_| {
            Err(RegistryError::Invalid(
                "internal error while checking the secret".into(),
            ))
        })
    }

    /// The admitted part of a login; `None` if the caller went away while it waited.
    async fn check_admitted(
        &self,
        app: &str,
        secret: String,
        pending: Pending,
        caller: &mut oneshot::Sender<Result<(), RegistryError>>,
    ) -> Option<Result<(), RegistryError>> {
        if secret.len() > MAX_SECRET_LEN || app.len() > MAX_NAME_LEN {
            pending.failed();
            return Some(Err(unauthorized(WRONG_CREDENTIALS)));
        }
        let permit = tokio::select! {
            permit = self.hash_permit() => permit,
            // Dropping `pending` gives its place back.
            _ = caller.closed() => return None,
        };
        let _permit = match permit {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let result = self.check_secret(app, secret).await;
        match &result {
            Ok(()) => pending.succeeded(),
            Err(RegistryError::Unauthorized(_)) => pending.failed(),
            // Invalid in dev mode (bad name, empty secret): no secret was wrong.
            Err(_) => drop(pending),
        }
        Some(result)
    }

    /// A hash permit, waiting in a bounded queue for a bounded time; else `Throttled` (busy).
    async fn hash_permit(&self) -> Result<SemaphorePermit<'_>, RegistryError> {
        let shared = &self.shared;
        if let Ok(permit) = shared.hash_permits.try_acquire() {
            return Ok(permit);
        }
        let cfg = &shared.config.login_throttle;
        let waiting = Waiting::enter(&shared.hash_waiting);
        if waiting.ahead >= cfg.max_queued {
            return Err(self.busy());
        }
        match tokio::time::timeout(cfg.queue_timeout, shared.hash_permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.busy()),
        }
    }

    /// Counts (and now and then logs) a login refused because the registry is busy hashing.
    fn busy(&self) -> RegistryError {
        let shared = &self.shared;
        shared.counters.busy.fetch_add(1, Ordering::Relaxed);
        let report = {
            let mut log = shared.busy_log.lock();
            log.1 += 1;
            let now = Instant::now();
            if log
                .0
                .is_none_or(|at| now.duration_since(at) >= BUSY_LOG_EVERY)
            {
                log.0 = Some(now);
                Some(std::mem::take(&mut log.1))
            } else {
                None
            }
        };
        if let Some(refused) = report {
            tracing::warn!(
                refused,
                max_queued = shared.config.login_throttle.max_queued,
                "logins refused: the registry is busy checking other logins"
            );
        }
        let retry_after = shared.config.login_throttle.backoff_min;
        RegistryError::Throttled {
            message: format!(
                "the registry is busy checking other logins; retry in {}",
                throttle::seconds(retry_after)
            ),
            retry_after_ms: millis(retry_after),
        }
    }

    /// Runs argon2 on the blocking pool (the caller holds a hash permit), counting it.
    async fn hash<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, RegistryError> {
        self.shared.counters.hashes.fetch_add(1, Ordering::Relaxed);
        blocking(f).await
    }

    /// Checks `secret` for `app` (the caller holds a hash permit); creates the app in dev mode.
    async fn check_secret(&self, app: &str, secret: String) -> Result<(), RegistryError> {
        let known = match self.app_config(app) {
            Some(a) => Some(a.secret_hash),
            None if self.shared.config.dev => self.shared.store.dev_app(app),
            None => None,
        };
        let argon = self.shared.argon.clone();
        if let Some(hash) = known {
            return if self.hash(move || argon.verify(&secret, &hash)).await? {
                Ok(())
            } else {
                Err(unauthorized(WRONG_CREDENTIALS))
            };
        }
        if !self.shared.config.dev {
            // Same cost as a wrong secret: the reply and its timing do not reveal app names.
            self.hash(move || secret::burn_verification(&argon, &secret))
                .await?;
            return Err(unauthorized(WRONG_CREDENTIALS));
        }
        valid_name("app name", app)?;
        if secret.is_empty() {
            return Err(RegistryError::Invalid(
                "the secret must not be empty".into(),
            ));
        }
        let for_hash = secret.clone();
        let pool = argon.clone();
        let hash = self
            .hash(move || pool.hash(&for_hash))
            .await?
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let existing = self
            .shared
            .store
            .create_dev_app(app, hash)
            .await
            .map_err(store_error)?;
        match existing {
            None => {
                tracing::warn!(app = ?app, "dev mode: created app on its first login; its secret is fixed until the registry restarts");
                Ok(())
            }
            // Someone created it while we were hashing: theirs counts.
            Some(hash) => {
                if self.hash(move || argon.verify(&secret, &hash)).await? {
                    Ok(())
                } else {
                    Err(unauthorized(WRONG_CREDENTIALS))
                }
            }
        }
    }
}

/// A login admitted by the throttle, until its outcome is known; dropped unsettled, it gives its
/// place back without counting.
struct Pending {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl Pending {
    fn succeeded(mut self) {
        self.shared
            .counters
            .succeeded
            .fetch_add(1, Ordering::Relaxed);
        if let Some(ticket) = self.ticket.take() {
            self.shared
                .throttle
                .lock()
                .succeeded(ticket, std::time::Instant::now());
        }
    }

    fn failed(mut self) {
        self.shared.counters.failed.fetch_add(1, Ordering::Relaxed);
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let (app, source) = (ticket.app().to_owned(), ticket.source());
        let windows = self
            .shared
            .throttle
            .lock()
            .failed(ticket, std::time::Instant::now());
        for window in windows {
            log_window(&window, &app, source);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared
                .throttle
                .lock()
                .abandoned(ticket, std::time::Instant::now());
        }
    }
}

/// Logs a backoff once, when it starts (refusals during it are counted, not logged).
fn log_window(window: &Window, app: &str, source: std::net::IpAddr) {
    let backoff = throttle::seconds(window.backoff);
    let (failures, refused) = (window.failures, window.refused_before);
    match window.scope {
        Scope::Pair => tracing::info!(
            app = ?app, %source, failures, backoff, refused_before = refused,
            "logins throttled: too many failed logins for this app from this address"
        ),
        Scope::App => tracing::warn!(
            app = ?app, failures, backoff, refused_before = refused,
            "logins throttled: too many failed logins for this app (from any address)"
        ),
        Scope::Source => tracing::warn!(
            %source, failures, backoff, refused_before = refused,
            "logins throttled: too many failed logins from this address"
        ),
    }
}

/// Counts a login waiting for a hash permit while it lives.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// Logins that were waiting already.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Waiting<'a> {
        let ahead = count.fetch_add(1, Ordering::Relaxed);
        Waiting { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs slow work (argon2) on the blocking pool.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, RegistryError> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        tracing::error!("secret verification panicked");
        RegistryError::Invalid("internal error while checking the secret".into())
    })
}
