//! Where a client's calls go: a fixed address list, or the providers discovery lists, one chosen
//! per call by a balancer.

use std::net::SocketAddr;
use std::sync::Arc;

use super::pool::Pool;
use crate::auth::BoxFuture;
use crate::balance::{Balancer, Policy, Target};
use crate::error::Error;

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
    pub(crate) pool: Arc<Pool>,
    pub(crate) balancer: Arc<dyn Balancer>,
    pub(crate) policy: Arc<Policy>,
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
