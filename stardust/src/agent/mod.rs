//! The sidecar agent: a local process (or task) that does discovery, authentication, balancing
//! and failover for the applications on its host.
//!
//! An application talks to the agent only, over loopback, with the ordinary Stardust protocol
//! and no credentials. The agent logs in to the registry as its app, resolves providers, presents
//! its app's token to them, balances every call, retries and fails over where that is safe, and
//! reports status, exactly as an in-process [`Stardust`] handle does: it is one, forwarding
//! requests by the service name they carry, so one agent serves every service its app may
//! consume, without knowing any of their types.
//!
//! It lives in the runtime crate because it is built from the runtime's parts (the registry
//! session, the balanced client, a forwarding server) and sits on top of them; the
//! `stardust-registry agent` command is only its command line (settings, secret file, signals).
//! Embed it with [`Agent::builder`] where a process should carry its own.
//!
//! ```no_run
//! # #[stardust::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
//! # async fn run() -> Result<(), stardust::Error> {
//! use stardust::agent::Agent;
//!
//! // The agent, usually `stardust-registry agent --registry .. --app .. --secret-file ..`.
//! let agent = Agent::builder()
//!     .registry("10.0.0.5:7600")
//!     .app("web", "s3cret")
//!     .listen("127.0.0.1:7700")
//!     .start()
//!     .await?;
//!
//! // An application on the same host: no registry address, no secret.
//! let star = stardust::Stardust::builder()
//!     .via_agent(agent.local_addr().to_string())
//!     .connect()
//!     .await?;
//! let calc = star.client::<CalculatorClient>();
//! assert_eq!(calc.add(1, 2).await?, 3);
//! agent.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What goes through, and how:
//!
//! - Every request for a service is sent to a provider of that service (any registered version:
//!   the wire request names no version) through the same balanced path as a proxy's call of
//!   [`Stardust::client`]: its balancer ([`LeastLoaded`] unless
//!   [`AgentBuilder::balancer`] says otherwise), retry budget, outlier ejection, failover of
//!   calls that never reached a provider. A call lost
//!   after it was sent is retried on another provider only when its request carries the
//!   idempotent flag (which proxies set for `#[stardust(idempotent)]` methods).
//! - The request's deadline, trace id and metadata go along; a `Cancel` from the application
//!   cancels the call at the provider. One-way requests stay one-way.
//! - Responses go back as they are; framework errors keep their code (`Panicked`,
//!   `DeadlineExceeded`, ...); a service nobody provides is `NoProvider`, naming it.
//! - While the registry is unreachable, the agent keeps routing with the provider lists it has.
//!
//! Security: the agent accepts connections from loopback addresses only (others are told
//! `GoAway(PermissionDenied)`) and refuses to listen on anything but loopback. Any process on the
//! host can therefore call with the agent's app's rights: run one agent per app, on hosts whose
//! users you trust with them. (Unix sockets are not supported yet.)
//!
//! [`Stardust`]: crate::Stardust
//! [`Stardust::client`]: crate::Stardust::client

mod relay;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::Stardust;
use crate::balance::{Balancer, LeastLoaded};
use crate::discovery::StardustBuilder;
use crate::error::{Error, ErrorKind};
use crate::server::{Server, is_loopback};

use routes::{MakeBalancer, Routes};

/// Where an agent listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// Services an agent tracks at once unless told otherwise.
pub const DEFAULT_MAX_SERVICES: usize = 1024;

/// Builds an [`Agent`]: the registry, the app it acts for, and where local applications reach
/// it.
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct AgentBuilder {
    star: StardustBuilder,
    listen: String,
    max_services: usize,
    balancer: MakeBalancer,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("star", &self.star)
            .field("listen", &self.listen)
            .field("max_services", &self.max_services)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// Adds a registry address (`host:port`); several are tried in turn, at start and whenever
    /// the agent has to reconnect.
    pub fn registry(mut self, addr: impl Into<String>) -> AgentBuilder {
        self.star = self.star.registry(addr);
        self
    }

    /// The app the agent logs in as: the local applications' calls are made with its rights.
    pub fn app(mut self, id: impl Into<String>, secret: impl Into<String>) -> AgentBuilder {
        self.star = self.star.app(id, secret);
        self
    }

    /// Speaks TLS to the registry and to providers that speak it (see
    /// [`StardustBuilder::tls`]). Local applications always talk plaintext to the agent, over
    /// loopback.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> AgentBuilder {
        self.star = self.star.tls(tls);
        self
    }

    /// Where local applications connect (default [`DEFAULT_LISTEN`], `127.0.0.1:7700`). Must
    /// resolve to loopback addresses only; port 0 picks a free port
    /// ([`Agent::local_addr`] tells which).
    pub fn listen(mut self, addr: impl Into<String>) -> AgentBuilder {
        self.listen = addr.into();
        self
    }

    /// Most services tracked at once (default [`DEFAULT_MAX_SERVICES`]): each has a registry
    /// watch, a provider list and a balancer. Beyond it, the least recently called one is
    /// dropped (and watched again if called again), so a client naming endless services cannot
    /// grow the agent's memory.
    pub fn max_services(mut self, services: usize) -> AgentBuilder {
        self.max_services = services.max(1);
        self
    }

    /// How each service's calls are spread over its providers: `make` builds one balancer per
    /// service (default [`LeastLoaded::new`]; see [`balance`](crate::balance)).
    /// [`ConsistentHash`](crate::balance::ConsistentHash) has no keys to go by through an agent
    /// (requests carry none) and picks at random.
    pub fn balancer<B: Balancer>(
        mut self,
        make: impl Fn() -> B + Send + Sync + 'static,
    ) -> AgentBuilder {
        self.balancer = Arc::new(move || Arc::new(make()) as Arc<dyn Balancer>);
        self
    }

    /// Tunes the agent's registry session and balanced calls: heartbeat, pull interval,
    /// reconnection backoff, retry budget, outlier ejection (see [`StardustBuilder`]). The
    /// registry addresses, app and TLS set on this builder apply on top.
    pub fn session(
        mut self,
        tune: impl FnOnce(StardustBuilder) -> StardustBuilder,
    ) -> AgentBuilder {
        self.star = tune(self.star);
        self
    }

    /// Binds the listener, logs in to the registry and starts serving local applications.
    /// Fails if the listen address is not loopback, cannot be bound, or the login fails.
    pub async fn start(self) -> Result<Agent, Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.listen.as_str())
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("cannot resolve the listen address {}: {e}", self.listen),
                )
                .with_source(e)
            })?
            .collect();
        if let Some(outside) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "the agent listens on loopback only (local applications call without \
                     credentials): {} is not a loopback address; use 127.0.0.1 or ::1",
                    outside.ip()
                ),
            ));
        }
        let listener = TcpListener::bind(addrs.as_slice()).await.map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!("the agent cannot listen on {}: {e}", self.listen),
            )
            .with_source(e)
        })?;
        let star = self.star.connect().await?;
        let routes = Arc::new(Routes::new(
            star.session()?.clone(),
            self.balancer,
            self.max_services,
        ));
        let server = Server::builder()
            .allow_anonymous()
            .forward(routes.clone())
            .local_only()
            .listen(listener)?;
        tracing::info!(
            addr = %server.local_addr(),
            app = star.app(),
            "agent listening for local applications"
        );
        Ok(Agent {
            server,
            star,
            routes,
        })
    }
}

/// A running agent (see the [module documentation](self)). Dropping it stops it abruptly;
/// [`Agent::shutdown`] lets the calls in flight finish.
#[must_use = "the agent stops when this handle is dropped"]
pub struct Agent {
    server: Server,
    star: Stardust,
    routes: Arc<Routes>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("local_addr", &self.server.local_addr())
            .field("app", &self.star.app())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts building an agent.
    pub fn builder() -> AgentBuilder {
        AgentBuilder {
            star: Stardust::builder(),
            listen: DEFAULT_LISTEN.to_owned(),
            max_services: DEFAULT_MAX_SERVICES,
            balancer: Arc::new(|| Arc::new(LeastLoaded::new()) as Arc<dyn Balancer>),
        }
    }

    /// The address local applications connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The app the agent logged in as.
    pub fn app(&self) -> &str {
        self.star.app()
    }

    /// Services the agent tracks right now (at most its
    /// [`max_services`](AgentBuilder::max_services)).
    pub fn services(&self) -> usize {
        self.routes.len()
    }

    /// Connections from local applications open now.
    pub fn connection_count(&self) -> usize {
        self.server.connection_count()
    }

    /// Stops gracefully: local applications are told (`GoAway`), calls in flight finish (within
    /// 30 s), then the registry session ends.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        drop(self.star);
    }
}
