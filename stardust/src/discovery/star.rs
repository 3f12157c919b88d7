//! [`Stardust`]: the one handle a process builds to join a Stardust deployment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::task::AbortHandle;

use super::api::{ArgDescription, MethodDescription, Registration, ServiceDescription};
use super::provider::Provider;
use super::session::{Secret, Session, SessionConfig};
use crate::auth::{Authenticator, BoxFuture, Identity};
use crate::balance::{
    Balancer, Hedging, LeastLoaded, Outliers, Policy, RetryBudget, StallDetection,
};
use crate::client::ServiceClient;
use crate::client::{Client, DEFAULT_TIMEOUT};
use crate::error::{Error, ErrorKind};
use crate::server::ServerBuilder;
use crate::service::ServiceDescriptor;

/// Builds a [`Stardust`] handle: where the registry is and who this process is.
#[must_use = "a builder does nothing until `connect` is awaited"]
#[derive(Debug)]
pub struct StardustBuilder {
    registries: Vec<String>,
    app: Option<(String, Secret)>,
    cfg: SessionConfig,
    timeout: Duration,
    budget: (u32, f64),
    outliers: Outliers,
    stalls: StallDetection,
    hedging: Hedging,
    method_hedging: Vec<(Box<str>, Box<str>, Hedging)>,
    agent: Option<String>,
    tags: BTreeMap<String, String>,
}

impl StardustBuilder {
    /// Adds a registry address (`host:port`). Several may be given (the nodes of a registry
    /// sharing one etcd): they are tried in turn, at start and whenever the session has to
    /// reconnect, beginning after the node just lost. On reconnection the session logs in,
    /// registers and subscribes again by itself, keeping the old connection open until that is
    /// done so its providers never drop out of consumers' lists.
    pub fn registry(mut self, addr: impl Into<String>) -> StardustBuilder {
        self.registries.push(addr.into());
        self
    }

    /// The application id and secret this process logs in with.
    pub fn app(mut self, id: impl Into<String>, secret: impl Into<String>) -> StardustBuilder {
        self.app = Some((id.into(), Secret(secret.into())));
        self
    }

    /// Speaks TLS to the registry, trusting `tls`'s CA bundle, and to every provider the
    /// registry lists as speaking TLS (providers served with
    /// [`ServerBuilder::tls`](crate::ServerBuilder::tls) are registered that way). A host name in
    /// a registry or provider address is the name its certificate must carry; an IP address is
    /// checked as dialled.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> StardustBuilder {
        self.cfg.registry_tls = Some(tls.clone());
        self.cfg.tls = Some(tls);
        self
    }

    /// Speaks TLS to the registry only, trusting `tls`'s CA bundle (see
    /// [`tls`](StardustBuilder::tls)); providers are dialled as
    /// [`provider_tls`](StardustBuilder::provider_tls) says. For a registry and providers whose
    /// certificates come from different CAs, set both.
    #[cfg(feature = "tls")]
    pub fn registry_tls(mut self, tls: crate::tls::ClientTls) -> StardustBuilder {
        self.cfg.registry_tls = Some(tls);
        self
    }

    /// Speaks TLS to every provider the registry lists as speaking it, trusting `tls`'s CA
    /// bundle, whatever the registry connection uses. With a plaintext registry (no
    /// [`registry_tls`](StardustBuilder::registry_tls)), what the registry tells this process
    /// (provider addresses, whether they speak TLS, its token) crosses the network unencrypted:
    /// a party on the path could redirect calls to an endpoint of its choosing, whose
    /// certificate would then still have to verify against this bundle, and could read the
    /// token (useless to it: tokens are bound to this process's key). Keep such setups to
    /// networks you trust.
    #[cfg(feature = "tls")]
    pub fn provider_tls(mut self, tls: crate::tls::ClientTls) -> StardustBuilder {
        self.cfg.tls = Some(tls);
        self
    }

    /// How often providers report their status (their heartbeat; default 3 s). Keep it well
    /// under the registry's lease TTL.
    pub fn heartbeat(mut self, every: Duration) -> StardustBuilder {
        self.cfg.heartbeat = every;
        self
    }

    /// How often watched services are pulled from the registry, as a safety net behind its
    /// pushes (default 30 s).
    pub fn pull_interval(mut self, every: Duration) -> StardustBuilder {
        self.cfg.pull = every;
        self
    }

    /// Bounds of the exponential backoff between registry reconnection attempts
    /// (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> StardustBuilder {
        self.cfg.backoff_min = min;
        self.cfg.backoff_max = max.max(min);
        self
    }

    /// Default deadline of calls made through [`Stardust::client`] (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> StardustBuilder {
        self.timeout = timeout;
        self
    }

    /// Retry budget of the handle's proxies: retrying a call on another provider spends a token;
    /// tokens come at `min_per_sec` per second plus `ratio` per call made (default 10/s and 0.2:
    /// retries add at most about 20% to the traffic once the floor is spent). A call that may
    /// not be retried fails with the error of its last attempt, saying the budget is spent.
    pub fn retry_budget(mut self, min_per_sec: u32, ratio: f64) -> StardustBuilder {
        self.budget = (min_per_sec, ratio);
        self
    }

    /// Outlier ejection of the handle's proxies: a provider that fails `consecutive_failures`
    /// calls in a row (unreachable, connection lost, overloaded, shutting down, panicked,
    /// internal error, deadline exceeded, or suspected hung) takes no calls for `ejection`, then
    /// is probed back in: its next call decides (an answer clears it, a fault ejects it again).
    /// Default 5 and 10 s; 0 failures disables it. When every provider is ejected, ejection is
    /// ignored.
    pub fn outlier_ejection(
        mut self,
        consecutive_failures: u32,
        ejection: Duration,
    ) -> StardustBuilder {
        self.outliers = Outliers {
            consecutive: consecutive_failures,
            ejection,
        };
        self
    }

    /// Hung-provider detection of the handle's proxies (see [`StallDetection`]): a provider
    /// that holds calls without answering any for `max(10 × its latency average, 50 ms)` is
    /// left out of every choice, and gets one probe call per second until it answers. On by
    /// default; [`StallDetection::off`] turns it off.
    pub fn stall_detection(mut self, stalls: StallDetection) -> StardustBuilder {
        self.stalls = stalls;
        self
    }

    /// Hedging of the handle's calls that may run twice (idempotent methods, and calls of a
    /// [`Client::retry_lost_calls`] handle): default [`Hedging::adaptive`], a second try on
    /// another provider once a try has waited past the method's recent 99th percentile (at
    /// least 5 ms). [`Hedging::off`] turns it off; [`method_hedging`](Self::method_hedging)
    /// sets one method apart.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), stardust::Error> {
    /// use std::time::Duration;
    /// use stardust::balance::Hedging;
    /// let star = stardust::Stardust::builder()
    ///     .registry("127.0.0.1:6600")
    ///     .app("web", "s3cret")
    ///     // A fixed per-try timeout of 20 ms for every idempotent method...
    ///     .hedging(Hedging::after(Duration::from_millis(20)))
    ///     // ...except this one, which is never sent twice at once.
    ///     .method_hedging("calc.Calculator", "report", Hedging::off())
    ///     .connect()
    ///     .await?;
    /// # let _ = star; Ok(()) }
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> StardustBuilder {
        self.hedging = hedging;
        self
    }

    /// Hedging of one method (`service` as registered, `method` as declared), instead of the
    /// handle's [`hedging`](Self::hedging). Only calls that may run twice are ever hedged.
    pub fn method_hedging(
        mut self,
        service: impl Into<String>,
        method: impl Into<String>,
        hedging: Hedging,
    ) -> StardustBuilder {
        let (service, method) = (
            service.into().into_boxed_str(),
            method.into().into_boxed_str(),
        );
        self.method_hedging
            .retain(|(s, m, _)| !(*s == service && *m == method));
        self.method_hedging.push((service, method, hedging));
        self
    }

    /// Tags every service this handle registers with `key = value` (a deployment's labels:
    /// `canary = "true"`, `zone = "eu-1"`); traffic routes pick instances by them
    /// (`tag:canary`, `tag:zone=eu-1`), consumers see them in discovery.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> StardustBuilder {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Whether this handle's calls take the faults (delays, aborts) the registry's traffic
    /// rules inject for drills (default `true`); `false` opts out entirely, routes still apply.
    /// See [`traffic`](crate::traffic).
    pub fn faults(mut self, on: bool) -> StardustBuilder {
        self.cfg.faults = on;
        self
    }

    /// Seeds the random draws of the traffic rules (which route destination, whether a fault
    /// hits), for tests and reproducible drills: calls made one after another then get the
    /// same decisions in every run. Random by default.
    pub fn traffic_seed(mut self, seed: u64) -> StardustBuilder {
        self.cfg.traffic_seed = Some(seed);
        self
    }

    /// Consumes through the local agent ([`stardust::agent`](crate::agent)) listening at `addr`
    /// (`127.0.0.1:7700` for `stardust-registry agent` by default) instead of logging in to the
    /// registry: the handle holds no credentials and opens one connection, to the agent, which
    /// logs in, resolves providers, balances, fails over and presents its app's token to them.
    ///
    /// [`Stardust::client`] proxies then send every call to the agent and work unchanged; their
    /// balancer and version requirement are the agent's business (it balances with
    /// [`LeastLoaded`] over every registered version). The handle only consumes:
    /// [`Stardust::serve`] fails, as providers register themselves. [`app`](Self::app) is
    /// optional here and only names the handle ([`Stardust::app`]); its secret is not used.
    /// [`registry`](Self::registry) must not be set.
    ///
    /// ```no_run
    /// # #[stardust::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
    /// # async fn run() -> Result<(), stardust::Error> {
    /// let star = stardust::Stardust::builder().via_agent("127.0.0.1:7700").connect().await?;
    /// let calc = star.client::<CalculatorClient>();
    /// assert_eq!(calc.add(1, 2).await?, 3);
    /// # Ok(()) }
    /// ```
    pub fn via_agent(mut self, addr: impl Into<String>) -> StardustBuilder {
        self.agent = Some(addr.into());
        self
    }

    /// Connects to a registry and logs in (or, with [`via_agent`](Self::via_agent), connects
    /// to the agent). Fails if no registry answers or the login is refused; after that,
    /// registry outages are handled in the background.
    pub async fn connect(self) -> Result<Stardust, Error> {
        let policy = Arc::new(Policy {
            budget: RetryBudget::new(self.budget.0, self.budget.1),
            outliers: self.outliers,
            hedging: self.hedging,
            method_hedging: self.method_hedging,
            stalls: self.stalls,
        });
        if let Some(addr) = self.agent {
            if !self.registries.is_empty() {
                return Err(Error::new(
                    ErrorKind::Connect,
                    "both .registry(..) and .via_agent(..) were given: through an agent, the \
                     agent talks to the registry; drop one of them",
                ));
            }
            let client = Client::builder()
                .timeout(self.timeout)
                .connect(addr.as_str())
                .await?;
            tracing::debug!(agent = %addr, "consuming through a local agent");
            return Ok(Stardust {
                inner: Arc::new(StarInner {
                    mode: Mode::Agent {
                        client,
                        app: self.app.map(|(app, _)| app).unwrap_or_default(),
                    },
                    timeout: self.timeout,
                    tags: self.tags,
                    locals: Default::default(),
                }),
            });
        }
        let (app, secret) = self.app.ok_or_else(|| {
            Error::new(
                ErrorKind::Unauthorized,
                "no app credentials: call .app(id, secret)",
            )
        })?;
        if self.registries.is_empty() {
            return Err(Error::new(
                ErrorKind::Connect,
                "no registry address: call .registry(\"host:port\")",
            ));
        }
        // This process's proof-of-possession key: the registry binds its tokens to it, so a
        // token that leaks (to a rogue provider, say) is useless to anyone else.
        let key = crate::auth::ProofKey::generate()?;
        let session = Session::new(self.registries, app, secret, key, self.cfg, policy.clone());
        let client = session.establish().await?;
        session.resync(&client).await?;
        let task = tokio::spawn(session.clone().run());
        Ok(Stardust {
            inner: Arc::new(StarInner {
                mode: Mode::Registry {
                    session,
                    task: task.abort_handle(),
                },
                timeout: self.timeout,
                tags: self.tags,
                locals: Default::default(),
            }),
        })
    }
}

/// A process's membership in a Stardust deployment: logged in to the registry, it hosts
/// services ([`Stardust::serve`]) and hands out typed proxies that find providers through the
/// registry ([`Stardust::client`]).
///
/// ```no_run
/// # #[stardust::service] pub trait Calculator { async fn add(&self, a: i64, b: i64) -> i64; }
/// # struct MyCalc;
/// # impl Calculator for MyCalc { async fn add(&self, a: i64, b: i64) -> i64 { a + b } }
/// # async fn run() -> Result<(), stardust::Error> {
/// let star = stardust::Stardust::builder()
///     .registry("127.0.0.1:6600")
///     .app("calc-provider", "s3cret")
///     .connect()
///     .await?;
/// // Provider: serve and register.
/// let provider = star
///     .serve(stardust::Server::builder().serve(CalculatorServer::new(MyCalc)), "127.0.0.1:0")
///     .await?;
/// // Consumer: a typed proxy that resolves providers through the registry.
/// let calc = star.client::<CalculatorClient>();
/// assert_eq!(calc.add(1, 2).await?, 3);
/// provider.shutdown().await;
/// # Ok(()) }
/// ```
///
/// Cloning is cheap; the session ends (and this process's registrations with it) when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Stardust {
    pub(super) inner: Arc<StarInner>,
}

pub(super) struct StarInner {
    mode: Mode,
    timeout: Duration,
    /// Tags of every registration.
    tags: BTreeMap<String, String>,
    /// The services this handle serves, for in-process calls ([`Stardust::local_client`]).
    pub(super) locals: parking_lot::Mutex<Vec<crate::local::LocalService>>,
}

/// How the handle reaches providers.
enum Mode {
    /// Logged in to the registry itself.
    Registry {
        session: Arc<Session>,
        task: AbortHandle,
    },
    /// Through a local agent: one connection, shared by every proxy.
    Agent { client: Client, app: String },
}

impl Drop for StarInner {
    fn drop(&mut self) {
        if let Mode::Registry { session, task } = &self.mode {
            task.abort();
            session.close();
        }
    }
}

impl std::fmt::Debug for Stardust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stardust")
            .field("app", &self.app())
            .field("via_agent", &matches!(self.inner.mode, Mode::Agent { .. }))
            .finish_non_exhaustive()
    }
}

impl Stardust {
    /// Starts building a handle.
    pub fn builder() -> StardustBuilder {
        StardustBuilder {
            registries: Vec::new(),
            app: None,
            cfg: SessionConfig::default(),
            timeout: DEFAULT_TIMEOUT,
            budget: (10, 0.2),
            outliers: Outliers::default(),
            stalls: StallDetection::default(),
            hedging: Hedging::default(),
            method_hedging: Vec::new(),
            agent: None,
            tags: BTreeMap::new(),
        }
    }

    /// The application this process logged in as (through an agent: the id given to
    /// [`StardustBuilder::app`], if any; the agent logged in).
    pub fn app(&self) -> &str {
        match &self.inner.mode {
            Mode::Registry { session, .. } => session.app(),
            Mode::Agent { app, .. } => app,
        }
    }

    /// The registry session, unless the handle consumes through an agent.
    pub(crate) fn session(&self) -> Result<&Arc<Session>, Error> {
        match &self.inner.mode {
            Mode::Registry { session, .. } => Ok(session),
            Mode::Agent { .. } => Err(Error::new(
                ErrorKind::Unauthorized,
                "this handle consumes through an agent (via_agent) and holds no registry \
                 credentials; a provider logs in to the registry itself: build its handle with \
                 .registry(..).app(..)",
            )),
        }
    }

    /// Binds `builder`'s server on `addr`, requiring registry tokens from callers, and registers
    /// each of its services with the registry under the bound address.
    pub async fn serve(
        &self,
        builder: ServerBuilder,
        addr: impl ToSocketAddrs,
    ) -> Result<Provider, Error> {
        self.serve_advertised(builder, addr, None).await
    }

    /// Like [`Stardust::serve`], registering `advertise` as the address consumers should dial
    /// (for a server bound to `0.0.0.0` or behind a NAT).
    pub async fn serve_advertised(
        &self,
        builder: ServerBuilder,
        addr: impl ToSocketAddrs,
        advertise: Option<SocketAddr>,
    ) -> Result<Provider, Error> {
        let session = self.session()?.clone();
        let descriptors = builder.descriptors();
        let tls = builder.speaks_tls();
        let mut builder = builder.authenticator(SessionVerifier(session.clone()));
        if let Some(advertise) = advertise {
            builder = builder.advertised_addr(advertise);
        }
        let server = builder.bind(addr).await?;
        let endpoint = advertise.unwrap_or(server.local_addr()).to_string();
        let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
        self.add_locals(&server, &live);
        session.report_server(server.probe());
        let mut provider = Provider {
            server: Some(server),
            _star: self.clone(),
            session: session.clone(),
            endpoint,
            services: Vec::new(),
            live,
        };
        for d in descriptors {
            let registration = Registration {
                service: d.name.to_owned(),
                version: d.version.to_owned(),
                endpoint: provider.endpoint.clone(),
                weight: 100,
                tags: self.inner.tags.clone(),
                tls,
                description: Some(describe(d)),
            };
            session.register(registration).await?;
            provider.services.push(d.name);
        }
        Ok(provider)
    }

    /// A typed proxy for service `C` whose calls go to providers the registry lists for it
    /// (versions compatible with the one `C` was generated from: `^MAJOR.MINOR.PATCH`).
    ///
    /// Resolution is lazy: the first call waits for the registry's answer. The list is kept
    /// fresh by pushes and pulls; while the registry is unreachable the last list is used.
    ///
    /// Through an agent ([`StardustBuilder::via_agent`]) the proxy sends its calls to the agent,
    /// which does all of that.
    pub fn client<C: ServiceClient>(&self) -> C {
        self.client_matching::<C>(&format!("^{}", C::DESCRIPTOR.version))
    }

    /// Like [`Stardust::client`] with an explicit version requirement (`^1.2`, `*`).
    pub fn client_matching<C: ServiceClient>(&self, version_req: &str) -> C {
        self.client_matching_with::<C>(version_req, LeastLoaded::new())
    }

    /// Like [`Stardust::client`], with `balancer` choosing the provider of each call instead of
    /// the default [`LeastLoaded`] (see [`balance`](crate::balance) for the strategies).
    pub fn client_with<C: ServiceClient>(&self, balancer: impl Balancer) -> C {
        self.client_matching_with::<C>(&format!("^{}", C::DESCRIPTOR.version), balancer)
    }

    /// Like [`Stardust::client_matching`], with `balancer` choosing the provider of each call.
    ///
    /// Every proxy of this handle shares one connection per provider, whatever its balancer.
    pub fn client_matching_with<C: ServiceClient>(
        &self,
        version_req: &str,
        balancer: impl Balancer,
    ) -> C {
        let session = match &self.inner.mode {
            Mode::Registry { session, .. } => session,
            Mode::Agent { client, .. } => return C::from_client(client.clone()),
        };
        let watch = session.watch(C::DESCRIPTOR.name, version_req);
        let client = Client::builder().timeout(self.inner.timeout).balanced(
            watch,
            session.pool.clone(),
            Arc::new(balancer),
            C::DESCRIPTOR.methods.len(),
        );
        C::from_client(client)
    }

    /// A client for `service` (matching `version_req`) known only at run time, balanced like a
    /// typed proxy's, for [`Client::call_dynamic`]: what tools that call any service use (the
    /// operator CLI). Through an agent, the agent's client.
    pub fn client_for(&self, service: &str, version_req: &str) -> Client {
        let session = match &self.inner.mode {
            Mode::Registry { session, .. } => session,
            Mode::Agent { client, .. } => return client.clone(),
        };
        let watch = session.watch(service, version_req);
        Client::builder().timeout(self.inner.timeout).balanced(
            watch,
            session.pool.clone(),
            Arc::new(LeastLoaded::new()),
            0,
        )
    }
}

/// Verifies consumers' tokens with the registry's keys (fetched at login, refreshed when a token
/// names a key id not seen yet).
struct SessionVerifier(Arc<Session>);

impl Authenticator for SessionVerifier {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Error>> {
        self.0.verifier.authenticate(token)
    }
}

/// What the registry keeps of `d` for operators' tools.
fn describe(d: &ServiceDescriptor) -> ServiceDescription {
    ServiceDescription {
        docs: d.docs.to_owned(),
        methods: d
            .methods
            .iter()
            .map(|m| MethodDescription {
                name: m.name.to_owned(),
                args: m
                    .args
                    .iter()
                    .map(|a| ArgDescription {
                        name: a.name.to_owned(),
                        ty: a.ty.to_owned(),
                    })
                    .collect(),
                returns: m.returns.to_owned(),
                docs: m.docs.to_owned(),
                idempotent: m.idempotent,
                input_stream: m.input_stream,
                output_stream: m.output_stream,
            })
            .collect(),
    }
}
