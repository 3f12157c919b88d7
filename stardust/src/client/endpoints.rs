//! Where a client's calls go: a fixed address list, or the providers discovery lists, one chosen
//! per call by a balancer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;

use super::pending::CallName;
use super::pool::Pool;
use crate::auth::BoxFuture;
use crate::balance::{Balancer, LatencyTracker, Target};
use crate::error::Error;
use crate::traffic::Routed;

/// The addresses a client may connect to.
pub(crate) enum Endpoints {
    /// Resolved once, when the client was built; one connection, reopened after a drop.
    Fixed(Vec<SocketAddr>),
    /// The providers a source lists, one pooled connection each, chosen per call.
    Balanced(Balanced),
}

/// What a discovery-backed client needs to route a call.
pub(crate) struct Balanced {
    pub(crate) source: Arc<dyn EndpointSource>,
    /// The handle's connections, and its retry, ejection, stall and hedging policy.
    pub(crate) pool: Arc<Pool>,
    pub(crate) balancer: Arc<dyn Balancer>,
    /// Each method's recent answer latencies (for adaptive hedging).
    pub(crate) latencies: MethodLatencies,
}

/// Answer latencies per method: by index for a typed proxy's methods (known when the proxy is
/// made), by name for calls forwarded by name.
#[derive(Debug, Default)]
pub(crate) struct MethodLatencies {
    by_index: Box<[LatencyTracker]>,
    by_name: Mutex<HashMap<Box<str>, Arc<LatencyTracker>>>,
}

/// A value borrowed from where it lives, or a shared handle to it when it had to be looked up.
pub(crate) enum ArcRef<'a, T> {
    Borrowed(&'a T),
    Shared(Arc<T>),
}

/// A method's tracker, borrowed or shared.
pub(crate) type TrackerRef<'a> = ArcRef<'a, LatencyTracker>;

impl<T> std::ops::Deref for ArcRef<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            ArcRef::Borrowed(t) => t,
            ArcRef::Shared(t) => t,
        }
    }
}

/// Methods tracked by name at most (a peer forwarding endless bogus names gets no more).
const MAX_NAMED_METHODS: usize = 256;

impl MethodLatencies {
    /// Trackers for a proxy of a service with `methods` methods.
    pub(crate) fn with_methods(methods: usize) -> MethodLatencies {
        MethodLatencies {
            by_index: (0..methods).map(|_| LatencyTracker::new()).collect(),
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// The tracker of method number `index` if known, else of `name`'s method.
    pub(crate) fn get(&self, index: Option<usize>, name: &CallName) -> Option<TrackerRef<'_>> {
        if let Some(t) = index.and_then(|i| self.by_index.get(i)) {
            return Some(ArcRef::Borrowed(t));
        }
        let mut by_name = self.by_name.lock();
        if let Some(t) = by_name.get(name.method()) {
            return Some(ArcRef::Shared(t.clone()));
        }
        if by_name.len() >= MAX_NAMED_METHODS {
            return None;
        }
        let t = Arc::new(LatencyTracker::new());
        by_name.insert(Box::from(name.method()), t.clone());
        Some(ArcRef::Shared(t))
    }
}

/// A changing set of providers (the registry's view of a service).
pub(crate) trait EndpointSource: Send + Sync + 'static {
    /// The providers known now, without waiting; `None` before the first answer.
    fn known(&self) -> Option<Arc<[Target]>>;

    /// The providers, asking the registry if none is known yet.
    fn fetch(&self) -> BoxFuture<'_, Result<Arc<[Target]>, Error>>;

    /// The `NoProvider` error for this source, with `detail` appended when not empty.
    fn no_provider(&self, detail: &str) -> Error;

    /// What the source stands for, for messages (`service calc.Calculator ^1.0`).
    fn describe(&self) -> String;

    /// The traffic rules its calls follow, over its current providers (`None`: none).
    fn routing(&self) -> Option<Arc<Routed>> {
        None
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoints::Fixed(addrs) => f.debug_tuple("Fixed").field(addrs).finish(),
            Endpoints::Balanced(b) => f
                .debug_tuple("Balanced")
                .field(&b.source.describe())
                .finish(),
        }
    }
}
