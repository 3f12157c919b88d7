//! The [`Registry`] implementation: sessions, leases, subscriptions.
//!
//! All state sits behind one short, non-async lock; the only slow work (argon2) runs on the
//! blocking pool, outside it, so logins never stall heartbeats or discovery. Logins pass the
//! [`Throttle`] (its own short lock) before any secret is checked, and at most a few checks run
//! at once, with a bounded queue in front of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use semver::{Version, VersionReq};
use stardust::Notifier;
use stardust::discovery::api::{
    DISCOVERY_TOPIC, DiscoveryEvent, Instance, LoginReply, PublicKey, Registration, Registry,
    RegistryError, Status,
};
use tokio::sync::{Notify, Semaphore, SemaphorePermit, oneshot, watch};
use tokio::time::Instant;

use crate::config::{Config, MAX_APP_NAME_LEN};
use crate::keys::KeyRing;
use crate::monitor::Monitor;
use crate::secret;
use crate::store::{Record, Store, StoreError, View, Written};
use crate::throttle::{self, Scope, Throttle, Ticket, Window};

const WRONG_CREDENTIALS: &str = "unknown app or wrong secret";
const LOG_IN_FIRST: &str = "log in first";
/// Longest secret accepted (argon2 itself takes anything; this bounds the work per attempt).
const MAX_SECRET_LEN: usize = 4096;
const MAX_NAME_LEN: usize = MAX_APP_NAME_LEN;
/// "The registry is busy" is logged at most this often (with the number of logins refused).
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);
/// A write racing with other registry nodes on one entry is retried this many times.
const STORE_RETRIES: u32 = 5;
/// The monitor's session for instances registered through other registry nodes.
const REMOTE_SESSION: u64 = 0;
const LEASE_EXPIRED: &str = "this connection's registrations expired (no heartbeat within the lease TTL); \
                             log in and register again";

/// Counters of a registry's logins since it started ([`RegistryNode::login_stats`]).
///
/// [`RegistryNode::login_stats`]: crate::RegistryNode::login_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginStats {
    /// Logins that succeeded.
    pub succeeded: u64,
    /// Logins refused for their credentials: wrong secret, unknown app, oversized name or secret.
    pub failed: u64,
    /// Logins refused by the throttle (failure backoff, checks in progress, rate limit), without
    /// their secret being checked.
    pub throttled: u64,
    /// Logins refused because too many were already waiting for a check, or the wait was too
    /// long.
    pub busy: u64,
    /// Argon2 computations run: secrets verified, and new secrets hashed in dev mode.
    pub hashes: u64,
}

#[derive(Default)]
struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    busy: AtomicU64,
    hashes: AtomicU64,
}

/// The registry service (hosted with `RegistryServer::new(..)`); cheap to clone.
#[derive(Clone)]
pub(crate) struct RegistryImpl {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: Config,
    keys: KeyRing,
    /// Where registrations, dev apps and shared keys live (see `store`). Lock order: the store's
    /// own locks are never held while calling back into `state`.
    store: Arc<dyn Store>,
    /// This node in the entries it owns in a shared store.
    node_id: String,
    state: Mutex<State>,
    /// Who may have a secret checked. Lock order: `state`, then `throttle` (a session ending
    /// updates it), never the other way round.
    throttle: Mutex<Throttle>,
    /// Argon2 runs at most this many at once (each one takes ~19 MiB and a core).
    hash_permits: Semaphore,
    /// Argon2's working memory: one buffer per hash permit, reused from check to check.
    argon: Arc<secret::ArgonPool>,
    /// Logins waiting for a hash permit.
    hash_waiting: AtomicUsize,
    counters: Counters,
    /// When "busy" was last logged, and the busy refusals since.
    busy_log: Mutex<(Option<Instant>, u64)>,
    next_session: AtomicU64,
    /// Wakes the sweeper when a lease is added (it may be sleeping with nothing to expire).
    sweeper_wake: Notify,
    /// `true` once the node shuts down: watcher tasks and the sweeper stop.
    stopping: watch::Receiver<bool>,
    /// Status reports folded into figures, for `/metrics`, `/api` and the console. Lock order:
    /// `state`, then `monitor` (registrations and removals update it under `state`, so its
    /// instances are exactly the live leases); heartbeats fold reports after releasing `state`.
    monitor: Monitor,
}

#[derive(Default)]
struct State {
    /// Logged-in connections, by peer address (unique per live connection).
    sessions: HashMap<SocketAddr, Session>,
    /// Live registrations by (service, endpoint): an endpoint serves a service once. With a
    /// shared store, the whole registry's, as its watch reports them.
    leases: BTreeMap<(String, String), Lease>,
    /// Live sessions that lost a registration to lease expiry: their next heartbeat is refused,
    /// so their process reconnects and registers again instead of staying invisible.
    expired: HashSet<u64>,
}

struct Session {
    id: u64,
    app: Arc<str>,
    notifier: Notifier,
    subscriptions: Vec<Subscription>,
}

struct Subscription {
    service: String,
    version_req: String,
    req: VersionReq,
    /// What the subscriber last got (reply or push): pushes happen only on a change.
    last: Vec<Instance>,
}

struct Lease {
    instance: Instance,
    version: Version,
    /// The session of this node that registered it ([`REMOTE_SESSION`]: another node's).
    session: u64,
    /// When it expires without a heartbeat; `None` in a shared store, whose leases expire there.
    expires: Option<Instant>,
    /// The shared store's revision of this entry (0 in memory).
    revision: i64,
    /// The node holding it in a shared store (`None` in memory: this one).
    node: Option<String>,
}

/// A store failure as the caller sees it.
fn store_error(e: StoreError) -> RegistryError {
    match e {
        StoreError::Unavailable(m) => RegistryError::Unavailable(m),
        StoreError::Conflict(_) => RegistryError::Unavailable(format!(
            "the registration kept changing concurrently on other registry nodes ({STORE_RETRIES} tries)"
        )),
    }
}

fn other_app(service: &str, endpoint: &str) -> RegistryError {
    RegistryError::PermissionDenied(format!(
        "endpoint `{endpoint}` of service `{service}` is registered by another app"
    ))
}

fn unauthorized(msg: &str) -> RegistryError {
    RegistryError::Unauthorized(msg.to_owned())
}

fn allowed(list: Option<&[String]>, service: &str) -> bool {
    list.is_none_or(|l| l.iter().any(|s| s == service))
}

impl RegistryImpl {
    pub(crate) fn new(
        config: Config,
        keys: KeyRing,
        store: Arc<dyn Store>,
        node_id: String,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let permits = config.login_throttle.concurrent_hashes();
        let monitor = Monitor::new(config.lease_ttl);
        RegistryImpl {
            shared: Arc::new(Shared {
                throttle: Mutex::new(Throttle::new(config.login_throttle.clone())),
                config,
                keys,
                store,
                node_id,
                state: Mutex::new(State::default()),
                hash_permits: Semaphore::new(permits),
                argon: Arc::new(secret::ArgonPool::new(permits)),
                hash_waiting: AtomicUsize::new(0),
                counters: Counters::default(),
                busy_log: Mutex::new((None, 0)),
                next_session: AtomicU64::new(1),
                sweeper_wake: Notify::new(),
                stopping,
                monitor,
            }),
        }
    }

    /// Removes expired leases until the node stops.
    pub(crate) async fn run_sweeper(self) {
        let shared = self.shared;
        let mut stopping = shared.stopping.clone();
        loop {
            let wake = shared.sweeper_wake.notified();
            let next = shared.sweep(Instant::now());
            tokio::select! {
                _ = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = wake => {}
                // Shutdown, or the node was dropped (the sender with it).
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    fn peer() -> Result<(SocketAddr, Notifier), RegistryError> {
        stardust::Context::with_current(|ctx| {
            let ctx = ctx.ok_or_else(|| unauthorized(LOG_IN_FIRST))?;
            match (ctx.peer_addr(), ctx.notifier()) {
                (Some(peer), Some(notifier)) => Ok((peer, notifier)),
                _ => Err(unauthorized(LOG_IN_FIRST)),
            }
        })
    }

    /// The session of the calling connection: `(peer, session id, app)`.
    fn session(&self) -> Result<(SocketAddr, u64, Arc<str>), RegistryError> {
        let peer = stardust::Context::with_current(|ctx| ctx.and_then(|c| c.peer_addr()))
            .ok_or_else(|| unauthorized(LOG_IN_FIRST))?;
        let mut state = self.shared.state.lock();
        let (id, app, closed) = match state.sessions.get(&peer) {
            Some(s) => (s.id, s.app.clone(), s.notifier.is_closed()),
            None => return Err(unauthorized(LOG_IN_FIRST)),
        };
        if closed {
            // A new connection from the address of one that just closed, before its watcher ran:
            // the old session is over and must not be inherited.
            self.shared
                .end_session(&mut state, peer, id, "connection closed");
            return Err(unauthorized(LOG_IN_FIRST));
        }
        Ok((peer, id, app))
    }

    /// The app's definition: this node's config first, then one shared by another node.
    fn app_config(&self, app: &str) -> Option<crate::config::AppConfig> {
        match self.shared.config.apps.get(app) {
            Some(a) => Some(a.clone()),
            None => self.shared.store.shared_app(app),
        }
    }

    /// The table as a shared store reports it (the store's watch task holds it weakly).
    pub(crate) fn view(&self) -> std::sync::Weak<dyn View> {
        let weak: std::sync::Weak<dyn View> = Arc::downgrade(&self.shared) as _;
        weak
    }

    /// Every public key tokens of this registry may be signed with: this node's, and (with a
    /// shared store) the other nodes'.
    fn all_public_keys(&self) -> Vec<PublicKey> {
        let mut keys = self.shared.keys.public_keys();
        for key in self.shared.store.shared_keys() {
            if !keys.iter().any(|k| k.kid == key.kid) {
                keys.push(key);
            }
        }
        keys
    }

    fn consume_list(&self, app: &str) -> Option<Vec<String>> {
        self.app_config(app).and_then(|a| a.consume.clone())
    }

    /// The table of registrations, for [`RegistryNode::registrations`](crate::RegistryNode::registrations).
    pub(crate) fn registrations(&self) -> Vec<crate::node::Registered> {
        self.shared
            .state
            .lock()
            .leases
            .values()
            .map(|l| crate::node::Registered {
                instance: l.instance.clone(),
                local: l.session != REMOTE_SESSION,
                node: l
                    .node
                    .clone()
                    .unwrap_or_else(|| self.shared.node_id.clone()),
            })
            .collect()
    }

    /// `Err(why)` while the node cannot follow its shared store.
    pub(crate) fn store_health(&self) -> Result<(), String> {
        self.shared.store.health()
    }

    /// Live subscriptions, over every session.
    pub(crate) fn subscriptions(&self) -> usize {
        let state = self.shared.state.lock();
        state.sessions.values().map(|s| s.subscriptions.len()).sum()
    }

    /// The monitoring figures.
    pub(crate) fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

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
        }
    }

    /// Checks `secret` for `app` logging in from `peer`: first the throttle (refusing at once,
    /// without hashing), then argon2 on the blocking pool. Creates the app in dev mode.
    async fn authenticate(
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

    /// Binds the connection to `app` (a new session, or a re-login on a live one).
    fn bind_session(&self, peer: SocketAddr, notifier: Notifier, app: &str) {
        let mut state = self.shared.state.lock();
        if let Some(s) = state.sessions.get(&peer) {
            if !s.notifier.is_closed() && &*s.app == app {
                return;
            }
            // Another app on the same connection (or a dead session): start over.
            let id = s.id;
            self.shared
                .end_session(&mut state, peer, id, "logged in again as another app");
        }
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        state.sessions.insert(
            peer,
            Session {
                id,
                app: app.into(),
                notifier: notifier.clone(),
                subscriptions: Vec::new(),
            },
        );
        self.shared
            .monitor
            .session_started(id, app.into(), peer, std::time::Instant::now());
        drop(state);
        tracing::info!(app = ?app, %peer, "logged in");
        let shared = Arc::downgrade(&self.shared);
        let mut stopping = self.shared.stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Stopping first: a registry shutting down closes every connection, and a
                // watcher that runs only then must not end its session (publishing the
                // removal of its leases to subscribers still connected, which would empty
                // the lists consumers keep using through the outage).
                biased;
                _ = stopping.wait_for(|s| *s) => return,
                _ = notifier.closed() => {}
            }
            if let Some(shared) = Weak::upgrade(&shared) {
                let mut state = shared.state.lock();
                shared.end_session(&mut state, peer, id, "connection closed");
            }
        });
    }

    /// Writes a registration to the store, retrying (bounded) while other nodes change the same
    /// entry; refuses an endpoint another app holds.
    async fn store_put(
        &self,
        session: u64,
        app: &str,
        instance: &Instance,
    ) -> Result<Written, RegistryError> {
        let key = (instance.service.clone(), instance.endpoint.clone());
        let mut seen = match self.shared.state.lock().leases.get(&key) {
            Some(l) if l.instance.app != app => {
                return Err(other_app(&instance.service, &instance.endpoint));
            }
            Some(l) => Some(l.revision),
            None => None,
        };
        for _ in 0..STORE_RETRIES {
            match self.shared.store.put(session, instance, seen).await {
                Ok(written) => return Ok(written),
                Err(StoreError::Conflict(Some((now, _)))) if now.app != app => {
                    return Err(other_app(&instance.service, &instance.endpoint));
                }
                Err(StoreError::Conflict(now)) => seen = now.map(|(_, revision)| revision),
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(store_error(StoreError::Conflict(None)))
    }

    /// Whether session `id` is still live on this node.
    fn session_alive(&self, id: u64) -> bool {
        self.shared
            .state
            .lock()
            .sessions
            .values()
            .any(|s| s.id == id)
    }

    /// Waits until the table shows a shared store's write at `revision`: the store's watch
    /// brings it in (and to the subscribers of every node), so the caller's next `discover`
    /// on this node sees it.
    async fn shown(&self, revision: i64) -> Result<(), RegistryError> {
        self.shared
            .store
            .wait_applied(revision)
            .await
            .map_err(store_error)
    }

    fn reply(&self, app: &str) -> LoginReply {
        let (token, expires_at_ms) = self.shared.keys.issue(app, self.consume_list(app));
        LoginReply {
            app: app.to_owned(),
            token,
            expires_at_ms,
            keys: self.all_public_keys(),
        }
    }

    fn check_consume(&self, app: &str, service: &str) -> Result<(), RegistryError> {
        let config = self.app_config(app);
        let list = config.as_ref().and_then(|a| a.consume.as_deref());
        if allowed(list, service) {
            Ok(())
        } else {
            Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not consume service `{service}`"
            )))
        }
    }
}

impl Shared {
    /// Ends session `id` of `peer` (if still current): its leases go, its subscriptions die.
    fn end_session(&self, state: &mut State, peer: SocketAddr, id: u64, why: &str) {
        state.expired.remove(&id);
        if state.sessions.get(&peer).is_some_and(|s| s.id == id) {
            let s = state.sessions.remove(&peer).expect("checked");
            self.monitor.session_ended(id);
            tracing::info!(app = ?&*s.app, %peer, reason = why, "session ended");
            // Its address stays known for the app: reconnecting is not held back by others'
            // failed logins.
            self.throttle
                .lock()
                .session_ended(&s.app, peer.ip(), std::time::Instant::now());
        }
        if self.store.is_shared() {
            // Revoking the session's lease removes its entries; every node's watch (this one's
            // included) then takes them out of its table and tells its subscribers.
            self.store.release(id);
            return;
        }
        let mut changed = BTreeSet::new();
        let now = std::time::Instant::now();
        state.leases.retain(|(service, endpoint), lease| {
            if lease.session == id {
                tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, reason = why, "registration removed");
                self.monitor.removed(service, endpoint, now);
                changed.insert(service.clone());
                false
            } else {
                true
            }
        });
        publish(state, &changed);
    }

    /// Removes leases expired at `now`; returns when the next one expires.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock();
        let mut changed = BTreeSet::new();
        let mut next: Option<Instant> = None;
        let wall = std::time::Instant::now();
        let mut expired = Vec::new();
        state.leases.retain(|(service, endpoint), lease| {
            let Some(expires) = lease.expires else {
                return true; // a shared store's lease: it expires there
            };
            if expires <= now {
                tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, "registration expired (no heartbeat within the lease TTL)");
                self.monitor.removed(service, endpoint, wall);
                changed.insert(service.clone());
                expired.push(lease.session);
                false
            } else {
                next = Some(next.map_or(expires, |n| n.min(expires)));
                true
            }
        });
        // Only sessions still connected need telling (an ended one is gone for good).
        let live: HashSet<u64> = state.sessions.values().map(|s| s.id).collect();
        state
            .expired
            .extend(expired.into_iter().filter(|id| live.contains(id)));
        publish(&mut state, &changed);
        next
    }
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // the View is fed by the etcd store
impl Shared {
    /// A shared store's record as a lease of the table; `None` if its version is malformed
    /// (another node wrote it; it validated versions the same way).
    fn lease_of(&self, record: Record) -> Option<Lease> {
        let version = match Version::parse(&record.instance.version) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(service = ?record.instance.service, endpoint = ?record.instance.endpoint, error = %e, "ignoring a stored registration with a malformed version");
                return None;
            }
        };
        let session = if record.node == self.node_id {
            record.session
        } else {
            REMOTE_SESSION
        };
        Some(Lease {
            instance: record.instance,
            version,
            session,
            expires: None,
            revision: record.revision,
            node: Some(record.node),
        })
    }
}

/// A shared store's watch keeps the table: every change reaches this node's subscribers.
impl View for Shared {
    fn reset(&self, records: Vec<Record>) {
        let mut fresh = BTreeMap::new();
        for record in records {
            let key = (
                record.instance.service.clone(),
                record.instance.endpoint.clone(),
            );
            if let Some(lease) = self.lease_of(record) {
                fresh.insert(key, lease);
            }
        }
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let mut changed = BTreeSet::new();
        for (key, old) in &state.leases {
            if fresh.get(key).is_none_or(|l| l.instance != old.instance) {
                changed.insert(key.0.clone());
            }
            if !fresh.contains_key(key) {
                self.monitor.removed(&key.0, &key.1, now);
            }
        }
        for (key, lease) in &fresh {
            if state
                .leases
                .get(key)
                .is_none_or(|l| l.instance != lease.instance)
            {
                changed.insert(key.0.clone());
            }
            self.monitor.registered(&lease.instance, lease.session, now);
        }
        state.leases = fresh;
        publish(&mut state, &changed);
    }

    fn put(&self, record: Record) {
        let Some(lease) = self.lease_of(record) else {
            return;
        };
        let key = (
            lease.instance.service.clone(),
            lease.instance.endpoint.clone(),
        );
        let mut state = self.state.lock();
        self.monitor
            .registered(&lease.instance, lease.session, std::time::Instant::now());
        let changed = state
            .leases
            .get(&key)
            .is_none_or(|l| l.instance != lease.instance);
        if lease.session == REMOTE_SESSION && changed {
            tracing::debug!(service = ?key.0, endpoint = ?key.1, app = ?lease.instance.app, "registered through another registry node");
        }
        state.leases.insert(key.clone(), lease);
        if changed {
            publish(&mut state, &BTreeSet::from([key.0]));
        }
    }

    fn delete(&self, service: &str, endpoint: &str) {
        let key = (service.to_owned(), endpoint.to_owned());
        let mut state = self.state.lock();
        if let Some(lease) = state.leases.remove(&key) {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, "registration removed");
            self.monitor
                .removed(service, endpoint, std::time::Instant::now());
            publish(&mut state, &BTreeSet::from([key.0]));
        }
    }
}

/// The live instances of `service` matching `req`, ordered by endpoint.
fn matching(state: &State, service: &str, req: &VersionReq) -> Vec<Instance> {
    state
        .leases
        .range((service.to_owned(), String::new())..)
        .take_while(|((s, _), _)| s == service)
        .filter(|(_, l)| req.matches(&l.version))
        .map(|(_, l)| l.instance.clone())
        .collect()
}

/// Pushes the new instance list to every subscription of a `changed` service whose list differs
/// from what it last saw.
fn publish(state: &mut State, changed: &BTreeSet<String>) {
    if changed.is_empty() {
        return;
    }
    let mut sessions = std::mem::take(&mut state.sessions);
    for session in sessions.values_mut() {
        for sub in &mut session.subscriptions {
            if !changed.contains(&sub.service) {
                continue;
            }
            let now = matching(state, &sub.service, &sub.req);
            if now == sub.last {
                continue;
            }
            let event = DiscoveryEvent {
                service: sub.service.clone(),
                version_req: sub.version_req.clone(),
                instances: now.clone(),
            };
            sub.last = now;
            if let Err(e) = session.notifier.notify(DISCOVERY_TOPIC, &event) {
                tracing::debug!(peer = %session.notifier.peer_addr(), error = %e, "discovery push not delivered");
            }
        }
    }
    state.sessions = sessions;
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

fn valid_name(what: &str, name: &str) -> Result<(), RegistryError> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(RegistryError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters without whitespace"
        )));
    }
    Ok(())
}

/// Parses a version requirement; empty means any. A bare version (`1.2`) means `^1.2`.
fn parse_req(text: &str) -> Result<VersionReq, RegistryError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(VersionReq::STAR);
    }
    VersionReq::parse(t).map_err(|e| {
        RegistryError::Invalid(format!(
            "`{text}` is not a version requirement like `^1.2`, `>=1.0, <2` or `*`: {e}"
        ))
    })
}

/// Checks `endpoint` is `host:port` (a host name, an IPv4 address or a bracketed IPv6 address).
fn validate_endpoint(endpoint: &str) -> Result<(), RegistryError> {
    let bad = |why: &str| {
        Err(RegistryError::Invalid(format!(
            "endpoint `{endpoint}` is not `host:port`: {why}"
        )))
    };
    if endpoint.parse::<SocketAddr>().is_ok() {
        return if endpoint.ends_with(":0") {
            bad("port 0 cannot be dialled")
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return bad("no port");
    };
    match port.parse::<u16>() {
        Ok(0) => return bad("port 0 cannot be dialled"),
        Ok(_) => {}
        Err(_) => return bad("the port is not a number from 1 to 65535"),
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return bad("the host is not a valid host name or IP address");
    }
    Ok(())
}

impl Registry for RegistryImpl {
    async fn login(&self, app: String, secret: String) -> Result<LoginReply, RegistryError> {
        let (peer, notifier) = Self::peer()?;
        if let Err(e) = self.authenticate(&app, secret, peer).await {
            // Throttled logins are not logged one by one (a flood must not flood the log); the
            // refused ones are bounded by the throttle.
            let app = if app.len() <= MAX_NAME_LEN {
                app.as_str()
            } else {
                "<oversized>"
            };
            match &e {
                RegistryError::Unauthorized(_) => {
                    tracing::info!(app = ?app, %peer, "login refused")
                }
                RegistryError::Throttled { .. } => {}
                _ => tracing::debug!(app = ?app, %peer, error = %e, "login refused"),
            }
            return Err(e);
        }
        self.shared.keys.refresh();
        self.bind_session(peer, notifier, &app);
        Ok(self.reply(&app))
    }

    async fn renew(&self) -> Result<LoginReply, RegistryError> {
        let (_, _, app) = self.session()?;
        self.shared.keys.refresh();
        Ok(self.reply(&app))
    }

    async fn public_keys(&self) -> Vec<PublicKey> {
        self.shared.keys.refresh();
        self.all_public_keys()
    }

    async fn register(&self, registration: Registration) -> Result<Instance, RegistryError> {
        let (_, session, app) = self.session()?;
        let Registration {
            service,
            version,
            endpoint,
            weight,
            tags,
            tls,
        } = registration;
        valid_name("service name", &service)?;
        let config = self.app_config(&app);
        let provide = config.as_ref().and_then(|a| a.provide.as_deref());
        if !allowed(provide, &service) {
            return Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not provide service `{service}`"
            )));
        }
        let parsed = Version::parse(version.trim()).map_err(|e| {
            RegistryError::Invalid(format!(
                "version `{version}` is not a semantic version like `1.2.3`: {e}"
            ))
        })?;
        validate_endpoint(&endpoint)?;
        let instance = Instance {
            app: app.to_string(),
            service: service.clone(),
            version: parsed.to_string(),
            endpoint: endpoint.clone(),
            weight,
            tags,
            tls,
        };
        let key = (service.clone(), endpoint.clone());
        let written = self.store_put(session, &app, &instance).await?;
        if written != Written::Local && !self.session_alive(session) {
            // The connection closed while the write was under way, after its session's release:
            // release again, now that the store holds a lease for it.
            self.shared.store.release(session);
            return Err(unauthorized(LOG_IN_FIRST));
        }
        if let Written::At(revision) = written {
            self.shown(revision).await?;
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            return Ok(instance);
        }
        let mut state = self.shared.state.lock();
        if let Some(existing) = state.leases.get(&key)
            && existing.instance.app != *app
        {
            return Err(other_app(&service, &endpoint));
        }
        let expires = Instant::now() + self.shared.config.lease_ttl;
        let previous = state.leases.insert(
            key,
            Lease {
                instance: instance.clone(),
                version: parsed,
                session,
                expires: Some(expires),
                revision: 0,
                node: None,
            },
        );
        self.shared
            .monitor
            .registered(&instance, session, std::time::Instant::now());
        if previous.as_ref().is_none_or(|p| p.instance != instance) {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            publish(&mut state, &BTreeSet::from([service]));
        }
        drop(state);
        self.shared.sweeper_wake.notify_one();
        Ok(instance)
    }

    async fn deregister(&self, service: String, endpoint: String) -> Result<bool, RegistryError> {
        let (_, _, app) = self.session()?;
        let key = (service, endpoint);
        let mut seen = match self.shared.state.lock().leases.get(&key) {
            Some(l) if l.instance.app == *app => l.revision,
            _ => return Ok(false),
        };
        let mut tries = 0;
        let written = loop {
            match self.shared.store.delete(&key.0, &key.1, seen).await {
                Ok(w) => break w,
                Err(StoreError::Conflict(Some((now, revision)))) if now.app == *app => {
                    seen = revision;
                }
                // Gone already, or someone else's by now.
                Err(StoreError::Conflict(_)) => return Ok(false),
                Err(e) => return Err(store_error(e)),
            }
            tries += 1;
            if tries >= STORE_RETRIES {
                return Err(store_error(StoreError::Conflict(None)));
            }
        };
        if let Written::At(revision) = written {
            self.shown(revision).await?;
            tracing::info!(service = ?key.0, endpoint = ?key.1, app = ?&*app, "deregistered");
            return Ok(true);
        }
        let mut state = self.shared.state.lock();
        if state
            .leases
            .get(&key)
            .is_none_or(|l| l.instance.app != *app)
        {
            return Ok(false);
        }
        state.leases.remove(&key);
        self.shared
            .monitor
            .removed(&key.0, &key.1, std::time::Instant::now());
        tracing::info!(service = ?key.0, endpoint = ?key.1, app = ?&*app, "deregistered");
        publish(&mut state, &BTreeSet::from([key.0]));
        Ok(true)
    }

    async fn heartbeat(&self, status: Status) -> Result<(), RegistryError> {
        let (_, session, _) = self.session()?;
        if self.shared.store.is_shared() {
            // The store keeps the session's lease; it says whether it had already expired.
            if !self
                .shared
                .store
                .renew(session)
                .await
                .map_err(store_error)?
            {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
        } else {
            let expires = Instant::now() + self.shared.config.lease_ttl;
            let mut state = self.shared.state.lock();
            if state.expired.remove(&session) {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
            for lease in state.leases.values_mut() {
                if lease.session == session {
                    lease.expires = Some(expires);
                }
            }
        }
        // The report's figures, outside the state lock (the monitor ignores a session or
        // instances that ended meanwhile).
        self.shared
            .monitor
            .fold(session, &status, std::time::Instant::now());
        Ok(())
    }

    async fn discover(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let (_, _, app) = self.session()?;
        self.check_consume(&app, &service)?;
        let req = parse_req(&version_req)?;
        Ok(matching(&self.shared.state.lock(), &service, &req))
    }

    async fn subscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let (peer, session, app) = self.session()?;
        self.check_consume(&app, &service)?;
        let req = parse_req(&version_req)?;
        let mut state = self.shared.state.lock();
        let list = matching(&state, &service, &req);
        let Some(s) = state.sessions.get_mut(&peer).filter(|s| s.id == session) else {
            return Err(unauthorized(LOG_IN_FIRST));
        };
        s.subscriptions
            .retain(|sub| !(sub.service == service && sub.version_req == version_req));
        s.subscriptions.push(Subscription {
            service,
            version_req,
            req,
            last: list.clone(),
        });
        Ok(list)
    }

    async fn unsubscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<bool, RegistryError> {
        let (peer, session, _) = self.session()?;
        let mut state = self.shared.state.lock();
        let Some(s) = state.sessions.get_mut(&peer).filter(|s| s.id == session) else {
            return Err(unauthorized(LOG_IN_FIRST));
        };
        let before = s.subscriptions.len();
        s.subscriptions
            .retain(|sub| !(sub.service == service && sub.version_req == version_req));
        Ok(s.subscriptions.len() < before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requirements() {
        let v = |s: &str| Version::parse(s).unwrap();
        let caret = parse_req("^1.2").unwrap();
        let bare = parse_req("1.2").unwrap();
        for req in [&caret, &bare] {
            assert!(req.matches(&v("1.2.0")));
            assert!(req.matches(&v("1.9.3")));
            assert!(!req.matches(&v("1.1.9")));
            assert!(!req.matches(&v("2.0.0")));
        }
        for any in ["*", "", "  "] {
            let req = parse_req(any).unwrap();
            assert!(req.matches(&v("0.1.0")) && req.matches(&v("7.0.0")));
        }
        assert!(matches!(parse_req("one"), Err(RegistryError::Invalid(_))));
    }

    #[test]
    fn endpoints() {
        for ok in [
            "127.0.0.1:80",
            "[::1]:7600",
            "calc-1.internal:9000",
            "localhost:1",
        ] {
            validate_endpoint(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:0",
            "host:70000",
            "a b:80",
            "-x:80",
            "127.0.0.1:0",
            "::1:80",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }
}
