//! In-process calls: when a consumer and a provider live in the same process (a monolith being
//! split, tests, a provider calling another service it also hosts), a call can go straight to
//! the implementation: arguments moved, the result returned, no socket and no serializer.
//!
//! A [`LocalService`] is a hosted implementation as clients see it. The `XxxServer` that
//! `#[stardust::service]` generates hands its implementation over ([`Service::local`](crate::Service::local)); a
//! [`Server`](crate::Server) adds what it applies to every call (its interceptors and figures)
//! and a [`Stardust`](crate::Stardust) handle the caller's identity. A generated `XxxClient`
//! made with one ([`ServiceClient::with_local`](crate::ServiceClient::with_local)) calls its
//! unary methods through it; streaming methods still go over the network.
//!
//! What a [`LocalMode::Full`] call keeps of a remote one: the deadline (the client's timeout,
//! or the one inherited from the handler making the call: `DeadlineExceeded`, the
//! implementation's future dropped), cancellation (dropping the call drops that future), the
//! handler's [`Context`](crate::Context) (service, method, deadline, trace, the handle's metadata, the calling
//! app as [`Context::caller`](crate::Context::caller) when made through a `Stardust` handle), the client's and the
//! hosting server's interceptors, the hosting server's figures (status reports and metrics), a
//! panic turned into `Panicked`. What it does not do: serialize (so `#[serde(skip)]` fields
//! and custom (de)serializers have no effect, and a value is moved, not copied), check tokens
//! (the caller is this process), balance or retry. [`LocalMode::Lean`] keeps only the panic
//! guard and cancellation: the implementation's future is awaited as it is.

use std::any::Any;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::{ConnAuth, Identity};
use crate::context::ConnInfo;
use crate::interceptor::Interceptor;
use crate::metadata::Metadata;
use crate::monitor::ServiceFigures;
pub use crate::service::LocalImpl;
use crate::service::ServiceDescriptor;
use crate::transport::Notifier;

/// How a client calls a service this process hosts: see the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalMode {
    /// As a provider would serve it: deadline, context, interceptors, figures.
    #[default]
    Full,
    /// The implementation's future awaited as it is (a panic still becomes `Panicked`): no
    /// deadline, context, interceptors or figures. The fastest way to call.
    Lean,
}

/// A hosted implementation that clients in the same process may call directly (see the
/// [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct LocalService {
    imp: LocalImpl,
    mode: LocalMode,
    host: Option<Arc<Host>>,
    /// Cleared when the serving provider stops: its clients then call over the network.
    live: Option<Arc<AtomicBool>>,
}

/// What a hosting server applies to the calls it serves, and who calls.
pub(crate) struct Host {
    /// `None` for a service that no server hosts.
    pub(crate) figures: Option<Arc<ServiceFigures>>,
    pub(crate) interceptors: Vec<Arc<dyn Interceptor>>,
    /// The calling app, as handlers see it ([`Context::caller`](crate::Context::caller)).
    pub(crate) caller: Option<Arc<ConnInfo>>,
}

impl std::fmt::Debug for LocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalService")
            .field("service", &self.imp.descriptor.name)
            .field("mode", &self.mode)
            .field("hosted", &self.host.is_some())
            .finish()
    }
}

/// An implementation not hosted by a server (its calls count in no figures and pass no server
/// interceptors), called in [`LocalMode::Full`].
impl From<LocalImpl> for LocalService {
    fn from(imp: LocalImpl) -> LocalService {
        LocalService {
            imp,
            mode: LocalMode::Full,
            host: None,
            live: None,
        }
    }
}

impl LocalService {
    /// The service's descriptor.
    pub fn descriptor(&self) -> &'static ServiceDescriptor {
        self.imp.descriptor
    }

    /// The same service called in `mode`.
    pub fn with_mode(mut self, mode: LocalMode) -> LocalService {
        self.mode = mode;
        self
    }

    /// How its calls are made.
    pub fn mode(&self) -> LocalMode {
        self.mode
    }

    /// Whether it may still be called in-process (its provider has not stopped).
    #[inline]
    pub fn is_live(&self) -> bool {
        self.live.as_ref().is_none_or(|l| l.load(Ordering::Acquire))
    }

    /// The same service, callable in-process while `live` holds.
    pub(crate) fn while_live(mut self, live: Arc<AtomicBool>) -> LocalService {
        self.live = Some(live);
        self
    }

    /// The implementation as the generated client holds it.
    #[doc(hidden)]
    pub fn get<L: Any>(&self) -> Option<&L> {
        self.imp.imp.downcast_ref()
    }

    /// What a hosting server applies to its calls, if a server hosts it.
    pub(crate) fn host(&self) -> Option<&Host> {
        self.host.as_deref()
    }

    /// The same service as hosted by a server with these figures and interceptors.
    pub(crate) fn hosted(
        mut self,
        figures: Arc<ServiceFigures>,
        interceptors: Vec<Arc<dyn Interceptor>>,
    ) -> LocalService {
        self.host = Some(Arc::new(Host {
            figures: Some(figures),
            interceptors,
            caller: None,
        }));
        self
    }

    /// The same service, called by app `app` ([`Context::caller`](crate::Context::caller) in its handlers).
    pub(crate) fn called_by(mut self, app: &str) -> LocalService {
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let caller = Arc::new(ConnInfo {
            peer,
            meta: Metadata::new(),
            features: crate::Features::default(),
            notifier: Notifier::detached(peer),
            auth: ConnAuth::new(Some(Identity::new(app)), None),
        });
        let host = self.host.as_deref();
        self.host = Some(Arc::new(Host {
            figures: host.and_then(|h| h.figures.clone()),
            interceptors: host.map(|h| h.interceptors.clone()).unwrap_or_default(),
            caller: Some(caller),
        }));
        self
    }
}
