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
//! [`Limits`]: crate::Limits

mod api;
mod checks;
mod login;
mod quota;
mod table;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::RandomState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use semver::{Version, VersionReq};
use stardust::Notifier;
use stardust::discovery::api::{Instance, LoginReply, PublicKey, RegistryError};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use crate::config::{Config, MAX_APP_NAME_LEN};
use crate::keys::KeyRing;
use crate::monitor::Monitor;
use crate::secret;
use crate::store::{Store, StoreError, View, Written};
use crate::throttle::Throttle;

const LOG_IN_FIRST: &str = "log in first";
const MAX_NAME_LEN: usize = MAX_APP_NAME_LEN;
/// A write racing with other registry nodes on one entry is retried this many times.
const STORE_RETRIES: u32 = 5;
/// The monitor's session for instances registered through other registry nodes.
const REMOTE_SESSION: u64 = 0;
const LEASE_EXPIRED: &str = "this connection's registrations expired (no heartbeat within the lease TTL); \
                             log in and register again";

use login::Counters;
pub use login::LoginStats;

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
    /// The keys of the subscriptions' list fingerprints (random per process).
    fingerprints: RandomState,
}

struct Session {
    id: u64,
    app: Arc<str>,
    notifier: Notifier,
    subscriptions: Vec<Subscription>,
    /// Registrations under way (counted against [`Limits::max_registrations`] until their
    /// lease is in the table).
    ///
    /// [`Limits::max_registrations`]: crate::Limits::max_registrations
    registering: usize,
}

struct Subscription {
    service: String,
    version_req: String,
    req: VersionReq,
    /// A fingerprint of the list the subscriber last got (reply or push): pushes happen only on
    /// a change. Not the list itself, which made each subscription cost as much memory as the
    /// service's instances (see `table::fingerprint`).
    last: u64,
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
                registering: 0,
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
