//! The connections of discovery-backed clients: one long-lived connection per provider endpoint,
//! shared by every proxy of a [`Stardust`](crate::Stardust) handle.

mod watchdog;

pub(crate) use watchdog::Suspicion;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::ClientConfig;
use super::connection::{ClientConn, Secure};
use super::endpoints::ArcRef;
use super::notifications::Notification;
use crate::balance::{Load, Policy, Target};
use crate::error::{Error, ErrorKind};
use crate::monitor::Figures;
use crate::protocol::registry::CallFigures;

/// Connections keyed by provider endpoint, opened on first use and reopened on the next use
/// after a drop.
pub(crate) struct Pool {
    config: ClientConfig,
    notify_tx: broadcast::Sender<Notification>,
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    /// What this process's calls saw of each (provider endpoint, service), for status reports.
    calls: Mutex<HashMap<EndpointService, Arc<Figures>>>,
    /// Retry budget, ejection, stall detection and hedging of the handle's balanced calls.
    pub(crate) policy: Arc<Policy>,
    /// The earliest time a suspect provider's probe is due (`u64::MAX`: no suspect), for calls
    /// that may run twice and for any call, so the call path needs one load to know whether to
    /// look for one.
    probe_due_ns: [AtomicU64; 2],
    /// The watchdog (stalls, hedges, unanswered pings): started by the first balanced call.
    watchdog: watchdog::Handle,
}

/// A provider endpoint and one of its services.
type EndpointService = (Arc<str>, Arc<str>);

/// One endpoint's connection.
struct Slot {
    endpoint: Arc<str>,
    /// This process's calls in flight there and their latency, for the balancers.
    load: Arc<Load>,
    conn: Mutex<Option<Arc<ClientConn>>>,
    /// Serialises connecting so a burst of calls opens one connection, not many.
    connecting: tokio::sync::Mutex<()>,
    /// A background connect is under way (see [`Pool::ready_connection`]).
    warming: AtomicBool,
}

impl Slot {
    fn usable(&self) -> Option<Arc<ClientConn>> {
        self.conn.lock().as_ref().filter(|c| c.is_usable()).cloned()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The endpoint left the pool (its provider is gone from the registry, or the pool was
        // dropped): no new calls go there; the ones in flight finish, then it closes.
        if let Some(conn) = self.conn.get_mut().take() {
            retire(conn, &self.endpoint);
        }
    }
}

fn retire(conn: Arc<ClientConn>, endpoint: &str) {
    let reason = Error::connection_closed(format!(
        "the provider at {endpoint} is no longer listed by the registry"
    ));
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move { conn.retire(reason).await });
        }
        Err(_) => conn.shutdown(),
    }
}

impl Pool {
    pub(crate) fn new(config: ClientConfig, policy: Arc<Policy>) -> Pool {
        let (notify_tx, _) = broadcast::channel(1024);
        Pool {
            config,
            notify_tx,
            slots: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            policy,
            probe_due_ns: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            watchdog: watchdog::Handle::default(),
        }
    }

    /// Whether a suspect provider's probe may be due at `now_ns` for a call that may
    /// (`retryable`) or may not run twice.
    pub(crate) fn probe_may_be_due(&self, now_ns: u64, retryable: bool) -> bool {
        let due = &self.probe_due_ns[usize::from(!retryable)];
        due.load(Ordering::Relaxed) <= now_ns
    }

    /// A probe was just claimed: the next one is not due before `next_ns` as far as this caller
    /// knows (the watchdog recomputes the earliest over every suspect on its next round).
    pub(crate) fn probe_claimed(&self, next_ns: u64) {
        for due in &self.probe_due_ns {
            due.fetch_max(next_ns, Ordering::Relaxed);
        }
    }

    fn set_probe_due(&self, retryable: u64, any: u64) {
        self.probe_due_ns[0].store(retryable, Ordering::Relaxed);
        self.probe_due_ns[1].store(any, Ordering::Relaxed);
    }

    /// The usable connection to `target`, if one is open (no waiting); otherwise starts opening
    /// one in the background, for the next call.
    pub(crate) fn ready_connection(self: &Arc<Self>, target: &Target) -> Option<Arc<ClientConn>> {
        let slot = self.slot_of(target);
        if let Some(conn) = slot.usable() {
            return Some(conn);
        }
        if !slot.warming.swap(true, Ordering::Relaxed) {
            let (pool, target) = (self.clone(), target.clone());
            tokio::spawn(async move {
                if let Err(e) = pool.connection(&target).await {
                    tracing::debug!(endpoint = %target.endpoint, error = %e, "background connect failed");
                }
                pool.slot_of(&target)
                    .warming
                    .store(false, Ordering::Relaxed);
            });
        }
        None
    }

    /// The usable connection to `target`, if one is open.
    pub(crate) fn open_connection(&self, target: &Target) -> Option<Arc<ClientConn>> {
        self.slot_of(target).usable()
    }

    /// A target for `endpoint` with `weight`, carrying the endpoint's load record and its
    /// entry in this pool (see [`Pool::slot_of`]).
    pub(crate) fn target(&self, endpoint: Arc<str>, weight: u32) -> Target {
        let slot = self.slot(&endpoint);
        let mut target = Target::with_load(endpoint, weight, slot.load.clone());
        target.route = Some(slot);
        target
    }

    /// `target`'s entry: the one it carries when this pool made it (no lookup, no lock), else
    /// looked up by endpoint.
    fn slot_of<'t>(&self, target: &'t Target) -> ArcRef<'t, Slot> {
        match target
            .route
            .as_deref()
            .and_then(|r| r.downcast_ref::<Slot>())
        {
            Some(slot) => ArcRef::Borrowed(slot),
            None => ArcRef::Shared(self.slot(&target.endpoint)),
        }
    }

    /// Where notifications pushed on any pooled connection go.
    pub(crate) fn notify_sender(&self) -> broadcast::Sender<Notification> {
        self.notify_tx.clone()
    }

    /// The live connection to `endpoint`, opening one if there is none (or it dropped, or its
    /// server is draining it).
    pub(crate) async fn connection(&self, target: &Target) -> Result<Arc<ClientConn>, Error> {
        let endpoint = &target.endpoint;
        let slot = self.slot_of(target);
        if let Some(conn) = slot.usable() {
            return Ok(conn);
        }
        let _guard = slot.connecting.lock().await;
        if let Some(conn) = slot.usable() {
            return Ok(conn);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&**endpoint)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("cannot resolve provider endpoint {endpoint}: {e}"),
                )
                .with_source(e)
            })?
            .collect();
        // Each provider is dialled the way the registry says it speaks.
        let secure = match (target.tls, &self.config.tls) {
            (false, _) => None,
            (true, Some(tls)) => Some(Secure {
                tls,
                host: crate::tls::dns_host(endpoint),
            }),
            (true, None) => {
                return Err(Error::new(
                    ErrorKind::Connect,
                    format!(
                        "provider {endpoint} speaks TLS only and this process has no TLS \
                         configuration: give StardustBuilder::tls the CA bundle to trust"
                    ),
                ));
            }
        };
        let conn =
            ClientConn::connect(&addrs, &self.config, secure, self.notify_tx.clone()).await?;
        let old = slot.conn.lock().replace(conn.clone());
        if let Some(old) = old {
            // Dropped or draining already: let whatever is still in flight on it finish.
            retire(old, endpoint);
        }
        Ok(conn)
    }

    fn slot(&self, endpoint: &Arc<str>) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        match slots.get(endpoint) {
            Some(slot) => slot.clone(),
            None => {
                let slot = Arc::new(Slot {
                    endpoint: endpoint.clone(),
                    load: Arc::new(Load::default()),
                    conn: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    warming: AtomicBool::new(false),
                });
                slots.insert(endpoint.clone(), slot.clone());
                slot
            }
        }
    }

    /// The figures of calls to `service` at `endpoint` (taken when a watch lists the provider,
    /// not per call).
    pub(crate) fn call_figures(&self, endpoint: &Arc<str>, service: &str) -> Arc<Figures> {
        self.calls
            .lock()
            .entry((endpoint.clone(), Arc::from(service)))
            .or_default()
            .clone()
    }

    /// Every (provider, service)'s figures since the previous call. Entries no target uses any
    /// more are dropped once they have nothing left to tell.
    pub(crate) fn take_call_windows(&self, into: &mut Vec<CallFigures>) {
        let mut calls = self.calls.lock();
        calls.retain(|(endpoint, service), figures| {
            let w = figures.take_window();
            let idle = w.calls == 0 && w.errors.is_empty();
            if !idle {
                into.push(CallFigures {
                    endpoint: endpoint.to_string(),
                    service: service.to_string(),
                    calls: w.calls,
                    errors: w.errors,
                    latency: w.latency,
                });
            }
            !(idle && Arc::strong_count(figures) == 1)
        });
    }

    /// Drains the connections to endpoints for which `listed` is false: no new calls, calls in
    /// flight finish, then the connection closes.
    pub(crate) fn retain(&self, listed: impl Fn(&str) -> bool) {
        let removed: Vec<Arc<Slot>> = {
            let mut slots = self.slots.lock();
            let gone: Vec<Arc<str>> = slots.keys().filter(|e| !listed(e)).cloned().collect();
            gone.iter().filter_map(|e| slots.remove(e)).collect()
        };
        for slot in removed {
            let conn = slot.conn.lock().take();
            if let Some(conn) = conn {
                tracing::debug!(endpoint = %slot.endpoint, "draining the connection to a removed provider");
                retire(conn, &slot.endpoint);
            }
        }
    }
}
