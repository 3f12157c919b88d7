//! The [`Registry`](stardust::discovery::api::Registry) implementation: sessions, leases,
//! subscriptions.
//!
//! All state sits behind one short, non-async lock; the only slow work (argon2) runs on the
//! blocking pool, outside it, so logins never stall heartbeats or discovery. Logins pass the
//! [`Throttle`] (its own short lock) before any secret is checked, and at most a few checks run
//! at once, with a bounded queue in front of them.
//!
//! The API's methods are in `api`; each refuses what exceeds the configured [`Limits`] before any
//! work (`checks` for the arguments, `quota` for what the session already holds). Logins are in
//! `login`, the table of leases and the pushes to subscribers in `table`.
//!
//! It sits above `store` (where changes are kept) and `monitor` (which it feeds, and which reads
//! it back only through [`RegistryState`]), and below `node`, which assembles it; the types it
//! hands out ([`Registered`], [`LoginStats`]) are therefore defined here or below.
//!
//! [`Limits`]: crate::Limits

mod api;
mod checks;
mod describe;
mod fanout;
mod leases;
mod login;
mod quota;
mod table;
mod traffic;
mod view;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use stardust::Notifier;
use stardust::discovery::api::{
    FEATURE_DELTA, FEATURE_RESUME, Instance, LoginReply, PublicKey, RegistryError,
};
use stardust::traffic::FEATURE_TRAFFIC;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::config::{Config, MAX_APP_NAME_LEN};
use crate::keys::KeyRing;
use crate::monitor::{FanoutStats, LoginStats, Monitor, RegistryState};
use crate::secret;
use crate::store::{Store, StoreError, View, Written};
use crate::throttle::Throttle;
use table::Table;

const LOG_IN_FIRST: &str = "log in first";
const MAX_NAME_LEN: usize = MAX_APP_NAME_LEN;
/// A write racing with other registry nodes on one entry is retried this many times.
const STORE_RETRIES: u32 = 5;
/// The monitor's session for instances registered through other registry nodes.
const REMOTE_SESSION: u64 = 0;
const LEASE_EXPIRED: &str = "this connection's registrations expired (no heartbeat within the lease TTL); \
                             log in and register again";
/// What the registry's API offers beyond the first protocol revision, announced in its
/// `HelloAck` and login answers.
pub(crate) const FEATURES: [&str; 3] = [FEATURE_DELTA, FEATURE_RESUME, FEATURE_TRAFFIC];

use login::Counters;

/// One registration in a node's table ([`RegistryNode::registrations`]).
///
/// Defined with the table it is read from; the node only passes it on.
///
/// [`RegistryNode::registrations`]: crate::RegistryNode::registrations
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registered {
    /// What consumers discover.
    pub instance: Instance,
    /// Whether it was made through this node (whose provider session keeps its lease alive);
    /// `false`: through another node of a shared store.
    pub local: bool,
    /// The [node id](crate::RegistryNode::node_id) of the node it was made through.
    pub node: String,
}

/// The registry service (hosted with `RegistryServer::new(..)`); cheap to clone.
#[derive(Clone)]
pub(crate) struct RegistryImpl {
    shared: Arc<Shared>,
}

/// The node's state, behind locks that are each held briefly and never across an `await`.
///
/// Lock order: `sessions`, then `table`, then `monitor` or `throttle`; never the other way
/// round. Heartbeats take only `sessions` (to find the caller), so they never wait for
/// registrations, subscriptions or pushes; pushes are sent outside every lock (`fanout`).
pub(crate) struct Shared {
    config: Config,
    keys: KeyRing,
    /// Where registrations, dev apps and shared keys live (see `store`). Lock order: the store's
    /// own locks are never held while calling back into the node.
    store: Arc<dyn Store>,
    /// This node in the entries it owns in a shared store.
    node_id: String,
    /// Logged-in connections, by peer address (unique per live connection).
    sessions: Mutex<HashMap<SocketAddr, Arc<Session>>>,
    /// Live registrations and the subscriber groups that follow them.
    table: Mutex<Table<Notifier>>,
    /// When sessions' leases expire (memory store).
    deadlines: leases::Deadlines,
    /// Sends what the table's changes mean to subscribers.
    fanout: fanout::Fanout,
    /// The traffic rules and who follows them.
    traffic: traffic::TrafficHub,
    /// What providers said about their services, per (service, version).
    descriptions: describe::Descriptions,
    /// Who may have a secret checked.
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
    /// `true` once the node shuts down: watcher tasks, the sweeper and the publisher stop.
    stopping: watch::Receiver<bool>,
    /// Status reports folded into figures, for `/metrics`, `/api` and the console.
    /// Registrations and removals update it under `table`, so its instances are exactly the
    /// live leases; heartbeats fold reports under no other lock.
    monitor: Monitor,
}

/// One logged-in connection.
pub(crate) struct Session {
    id: u64,
    app: Arc<str>,
    peer: SocketAddr,
    notifier: Notifier,
    /// When its leases expire without a heartbeat, in milliseconds of the node's lease clock
    /// (memory store; a shared store keeps its own).
    expires: AtomicU64,
    /// Its leases are in the deadline heap.
    tracked: AtomicBool,
    /// Its leases expired: its next heartbeat is refused, so its process reconnects and
    /// registers again instead of staying invisible.
    lease_expired: AtomicBool,
    /// Set (before its holdings are cleaned up) when the session ends: nothing joins it later.
    ended: AtomicBool,
    /// Registrations under way (counted against [`Limits::max_registrations`] until their
    /// lease is in the table).
    ///
    /// [`Limits::max_registrations`]: crate::Limits::max_registrations
    registering: AtomicUsize,
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

/// Whether a consume list allows `service` (`None`, or a list naming `"*"`: any service).
fn allowed(list: Option<&[String]>, service: &str) -> bool {
    list.is_none_or(|l| l.iter().any(|s| s == service || s == ANY_SERVICE))
}

/// The entry of a `provide` or `consume` list that stands for every service.
pub(crate) const ANY_SERVICE: &str = "*";

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
                fanout: fanout::Fanout::new(config.limits.subscriber_queue_bytes),
                traffic: traffic::TrafficHub::new(store.rules()),
                descriptions: describe::Descriptions::default(),
                config,
                keys,
                store,
                node_id,
                sessions: Mutex::new(HashMap::new()),
                table: Mutex::new(Table::new(random_epoch())),
                deadlines: leases::Deadlines::new(),
                hash_permits: Semaphore::new(permits),
                argon: Arc::new(secret::ArgonPool::new(permits)),
                hash_waiting: AtomicUsize::new(0),
                counters: Counters::default(),
                busy_log: Mutex::new((None, 0)),
                next_session: AtomicU64::new(1),
                stopping,
                monitor,
            }),
        }
    }

    /// Removes expired leases until the node stops.
    pub(crate) async fn run_sweeper(self) {
        leases::run_sweeper(self.shared).await
    }

    /// Sends the table's changes to subscribers until the node stops.
    pub(crate) async fn run_publisher(self) {
        fanout::run_publisher(self.shared).await
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

    /// The session of the calling connection.
    fn session(&self) -> Result<Arc<Session>, RegistryError> {
        let peer = stardust::Context::with_current(|ctx| ctx.and_then(|c| c.peer_addr()))
            .ok_or_else(|| unauthorized(LOG_IN_FIRST))?;
        let session = self
            .shared
            .sessions
            .lock()
            .get(&peer)
            .cloned()
            .ok_or_else(|| unauthorized(LOG_IN_FIRST))?;
        if session.notifier.is_closed() {
            // A new connection from the address of one that just closed, before its watcher ran:
            // the old session is over and must not be inherited.
            self.shared.end_session(&session, "connection closed");
            return Err(unauthorized(LOG_IN_FIRST));
        }
        Ok(session)
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

    /// The services `app`'s tokens allow it to call (`None`: any, also for `consume = ["*"]`).
    fn consume_list(&self, app: &str) -> Option<Vec<String>> {
        self.app_config(app)
            .and_then(|a| a.consume.clone())
            .filter(|list| !list.iter().any(|s| s == ANY_SERVICE))
    }

    /// Whether `app` may register `service`: only what its `provide` list names (`"*"`: any
    /// service). Least privilege: an app configured without a list may provide nothing, except
    /// in dev mode, where every app may provide anything.
    fn check_provide(&self, app: &str, service: &str) -> Result<(), RegistryError> {
        if self.shared.config.dev {
            return Ok(());
        }
        let config = self.app_config(app);
        match config.as_ref().and_then(|a| a.provide.as_deref()) {
            Some(list) if list.iter().any(|s| s == service || s == ANY_SERVICE) => Ok(()),
            Some(_) => Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not provide service `{service}`: it is not in \
                 `apps.{app}.provide` in the registry's config"
            ))),
            None => Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not provide service `{service}`: its config has no `provide` \
                 list, and an app provides only what it lists (least privilege); set \
                 `provide = [\"{service}\"]` (or `[\"*\"]` for any service) under `[apps.{app}]` \
                 in the registry's config"
            ))),
        }
    }

    /// The table of registrations, for [`RegistryNode::registrations`](crate::RegistryNode::registrations).
    pub(crate) fn registrations(&self) -> Vec<Registered> {
        self.shared
            .table
            .lock()
            .leases()
            .map(|l| Registered {
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
        self.shared.table.lock().subscription_count()
    }

    /// Binds the connection to `app` (a new session, or a re-login on a live one).
    fn bind_session(&self, peer: SocketAddr, notifier: Notifier, app: &str) {
        let previous = self.shared.sessions.lock().get(&peer).cloned();
        if let Some(s) = previous {
            if !s.notifier.is_closed() && &*s.app == app {
                return;
            }
            // Another app on the same connection (or a dead session): start over.
            self.shared
                .end_session(&s, "logged in again as another app");
        }
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            app: app.into(),
            peer,
            notifier: notifier.clone(),
            expires: AtomicU64::new(0),
            tracked: AtomicBool::new(false),
            lease_expired: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            registering: AtomicUsize::new(0),
        });
        self.shared.sessions.lock().insert(peer, session.clone());
        self.shared
            .monitor
            .session_started(id, app.into(), peer, std::time::Instant::now());
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
                shared.end_session(&session, "connection closed");
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
        let mut seen = match self
            .shared
            .table
            .lock()
            .get(&instance.service, &instance.endpoint)
        {
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

    /// A login's answer: a token for `app`, bound to the key the calling connection proved in
    /// its handshake (proof of possession; a bearer token for an older client, which proved
    /// none).
    fn reply(&self, app: &str) -> LoginReply {
        let key = stardust::Context::with_current(|ctx| ctx.and_then(|c| c.proof_key()));
        let (token, expires_at_ms) = self
            .shared
            .keys
            .issue_bound(app, self.consume_list(app), key);
        LoginReply {
            app: app.to_owned(),
            token,
            expires_at_ms,
            keys: self.all_public_keys(),
            features: FEATURES.iter().map(|f| f.to_string()).collect(),
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

/// What the monitoring HTTP server reads (the trait is monitoring's, so it never names this
/// type): the inherent methods where the node reads the same, the rest straight from `Shared`.
impl RegistryState for RegistryImpl {
    fn monitor(&self) -> &Monitor {
        &self.shared.monitor
    }

    fn store_health(&self) -> Result<(), String> {
        RegistryImpl::store_health(self)
    }

    fn login_stats(&self) -> LoginStats {
        RegistryImpl::login_stats(self)
    }

    fn fanout_stats(&self) -> FanoutStats {
        self.shared.fanout.stats()
    }

    fn subscriptions(&self) -> usize {
        RegistryImpl::subscriptions(self)
    }

    fn rules(&self) -> stardust::traffic::Rules {
        self.shared.traffic.rules()
    }

    fn describe(&self, service: &str) -> Vec<stardust::discovery::api::VersionDescription> {
        self.shared.descriptions.of(service)
    }

    fn check_secret(
        &self,
        app: String,
        secret: String,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RegistryError>> + Send + '_>>
    {
        Box::pin(async move { self.authenticate(&app, secret, peer).await })
    }

    fn is_admin(&self, app: &str) -> bool {
        self.app_config(app).is_some_and(|a| a.is_admin())
    }

    fn mint_bound(&self, app: &str, key: [u8; 32], ttl: std::time::Duration) -> String {
        let now = std::time::SystemTime::now();
        self.shared
            .keys
            .mint_bound(app, None, Some(key), now, now + ttl)
    }
}

impl Shared {
    /// Ends `session` (if still current): its leases go (or, with a shared store, are
    /// released there), its subscriptions end.
    fn end_session(&self, session: &Session, why: &str) {
        if session.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut sessions = self.sessions.lock();
            if sessions
                .get(&session.peer)
                .is_some_and(|s| s.id == session.id)
            {
                sessions.remove(&session.peer);
            }
        }
        self.monitor.session_ended(session.id);
        self.traffic.end_session(session.id);
        tracing::info!(app = ?&*session.app, peer = %session.peer, reason = why, "session ended");
        if self.store.is_shared() {
            // Revoking the session's lease removes its entries; every node's watch (this one's
            // included) then takes them out of its table and tells its subscribers.
            self.store.release(session.id);
            self.table.lock().end_session(session.id);
        } else {
            let mut table = self.table.lock();
            let now = std::time::Instant::now();
            for lease in table.remove_leases_of(session.id) {
                let i = &lease.instance;
                tracing::info!(service = ?i.service, endpoint = ?i.endpoint, app = ?i.app, reason = why, "registration removed");
                self.monitor.removed(&i.service, &i.endpoint, now);
            }
            table.end_session(session.id);
        }
        self.fanout.wake();
        // Its address stays known for the app: reconnecting is not held back by others'
        // failed logins.
        self.throttle.lock().session_ended(
            &session.app,
            session.peer.ip(),
            std::time::Instant::now(),
        );
    }
}

/// A fresh epoch for this node's revisions: random, so no two runs (or nodes) share one.
fn random_epoch() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: the clock still differs between runs.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64;
    }
    u64::from_le_bytes(bytes)
}
