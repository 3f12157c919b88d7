//! Where a client's connections go: a fixed address list, or a list kept fresh by discovery.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::BoxFuture;
use crate::error::Error;

/// The addresses a client may connect to.
#[derive(Clone)]
pub(crate) enum Endpoints {
    /// Resolved once, when the client was built.
    Fixed(Vec<SocketAddr>),
    /// Asked again at every (re)connection.
    Watched(Arc<dyn EndpointSource>),
}

/// A changing set of provider addresses (the registry's view of a service).
pub(crate) trait EndpointSource: Send + Sync + 'static {
    /// The addresses to try, in order. Fails with `NoProvider` when there is none.
    fn candidates(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, Error>>;

    /// What the source stands for, for messages (`service calc.Calculator ^1.0`).
    fn describe(&self) -> String;
}

impl Endpoints {
    pub(crate) async fn candidates(&self) -> Result<Vec<SocketAddr>, Error> {
        match self {
            Endpoints::Fixed(addrs) => Ok(addrs.clone()),
            Endpoints::Watched(source) => source.candidates().await,
        }
    }
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoints::Fixed(addrs) => f.debug_tuple("Fixed").field(addrs).finish(),
            Endpoints::Watched(source) => {
                f.debug_tuple("Watched").field(&source.describe()).finish()
            }
        }
    }
}
