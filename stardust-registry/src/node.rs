//! [`RegistryNode`]: a running registry, embedded in any Tokio program.
//!
//! The top of the crate: it assembles the pieces below it (the store named by the config, the
//! registry service, the monitoring HTTP server that reads the service's state) and nothing
//! below imports it.

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

use std::net::SocketAddr;
use std::time::Duration;

use stardust::discovery::api::RegistryServer;
use tokio::net::ToSocketAddrs;
use tokio::sync::watch;

use crate::config::store::StoreConfig;
use crate::config::{Config, ConfigError, DEFAULT_LISTEN, HttpListen};
use crate::keys::{KeyError, KeyRing};
use crate::monitor::LoginStats;
use crate::monitor::http::{self, HttpContext, HttpServer};
use crate::service::{Registered, RegistryImpl};
use crate::store::Store;

/// A running registry: a Stardust server hosting the `stardust.Registry` service.
///
/// Dropping it stops the registry abruptly (connections are cut); [`RegistryNode::shutdown`]
/// stops it gracefully and releases its port.
#[must_use = "the registry stops when this handle is dropped"]
pub struct RegistryNode {
    /// Sending `true` (or dropping it) stops the sweeper, the session watchers, the store's
    /// tasks and the HTTP server. First field, so a dropped node stops them *before* its
    /// connections are cut: a node that dies must not end its sessions (which would remove
    /// their registrations from a shared store; other nodes take over, or leases expire).
    stop: watch::Sender<bool>,
    server: stardust::Server,
    registry: RegistryImpl,
    keys: KeyRing,
    config: Config,
    /// The monitoring HTTP server, if any.
    http: Option<HttpServer>,
    /// This node's name in the entries it owns in a shared store.
    node_id: String,
}

impl std::fmt::Debug for RegistryNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryNode")
            .field("local_addr", &self.server.local_addr())
            .field("http_addr", &self.http_addr())
            .field("dev", &self.config.dev)
            .finish_non_exhaustive()
    }
}

/// Configures and starts a [`RegistryNode`].
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `bind` is awaited"]
pub struct RegistryNodeBuilder {
    config: Option<Config>,
    keys: Option<KeyRing>,
    tls: Option<stardust::tls::ServerTls>,
    http_listen: Option<HttpListen>,
}

impl RegistryNode {
    /// Starts building a registry. A config is required: [`Config::dev`] for development,
    /// so dev mode is always an explicit choice.
    pub fn builder() -> RegistryNodeBuilder {
        RegistryNodeBuilder::default()
    }

    /// The address the registry listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The address the monitoring HTTP server (`/metrics`, `/api/...`, the console at `/`)
    /// listens on, or `None` when it serves none (see [`Config::http_listen`]).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// The signing keys (to mint tokens in tests, or rotate with [`KeyRing::rotate`]).
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// This node's name in a shared store (a random `node-…` per start): the owner written into
    /// the registrations made through it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The registrations this node knows, ordered by service and endpoint: with a shared store,
    /// the whole registry's (made through any node).
    pub fn registrations(&self) -> Vec<Registered> {
        self.registry.registrations()
    }

    /// Whether this node follows its store: `Err(why)` while a shared store (etcd) cannot be
    /// reached or watched; the node then serves the last registrations it knew and refuses
    /// changes (`RegistryError::Unavailable`). Always `Ok` with the memory store. The
    /// monitoring server answers `/healthz` with it.
    pub fn store_health(&self) -> Result<(), String> {
        self.registry.store_health()
    }

    /// The traffic rules this node serves (with a shared store: as last reported by it).
    pub fn rules(&self) -> stardust::traffic::Rules {
        self.registry.current_rules()
    }

    /// Subscriptions live on this node, over all its sessions (each pushes a service's
    /// instance list to one connection whenever it changes).
    pub fn subscriptions(&self) -> usize {
        self.registry.subscriptions()
    }

    /// The configuration the registry runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters of logins since the registry started: succeeded, failed, throttled, refused as
    /// busy, and argon2 computations run.
    pub fn login_stats(&self) -> LoginStats {
        self.registry.login_stats()
    }

    /// Stops gracefully: no new connections, clients are told (`GoAway`), calls in flight
    /// finish; sessions, registrations and subscriptions end. Returns once the listening port is
    /// free again, so a new registry can bind it at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let addr = self.server.local_addr();
        self.server.shutdown().await;
        if let Some(http) = self.http {
            let http_addr = http.local_addr();
            http.stopped().await;
            wait_port_released(http_addr).await;
        }
        wait_port_released(addr).await;
        tracing::info!(%addr, "registry stopped");
    }
}

impl RegistryNodeBuilder {
    /// The configuration to run with (validated by `bind`).
    pub fn config(mut self, config: Config) -> RegistryNodeBuilder {
        self.config = Some(config);
        self
    }

    /// Signs with this key ring instead of opening the config's key file (or making an
    /// in-memory key): e.g. to share keys between registries in a test.
    pub fn key_ring(mut self, keys: KeyRing) -> RegistryNodeBuilder {
        self.keys = Some(keys);
        self
    }

    /// Serves over TLS with `tls` (instead of the config's `[tls]` files, if any).
    pub fn tls(mut self, tls: stardust::tls::ServerTls) -> RegistryNodeBuilder {
        self.tls = Some(tls);
        self
    }

    /// Serves monitoring over HTTP (`/metrics`, `/api/...`, the console at `/`) on `addr`
    /// (`"127.0.0.1:0"` for any free port; [`RegistryNode::http_addr`] tells which), or not at
    /// all with `"off"`. Overrides the config's [`http_listen`](Config::http_listen).
    pub fn http_listen(mut self, addr: impl AsRef<str>) -> RegistryNodeBuilder {
        self.http_listen = Some(HttpListen::parse(addr.as_ref()));
        self
    }

    /// Starts the registry on the config's `listen` address, or `127.0.0.1:7600`.
    pub async fn bind_configured(self) -> Result<RegistryNode, Error> {
        let addr = self
            .config
            .as_ref()
            .and_then(|c| c.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        self.bind(addr).await
    }

    /// Validates the config, opens (or creates) the key file, and starts serving on `addr`
    /// (this overrides the config's `listen`), and monitoring over HTTP if configured.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<RegistryNode, Error> {
        // Secure by default: dev mode is never implied by a missing config.
        let config = self.config.ok_or_else(|| {
            Error::Config(ConfigError::new(
                "no config given: call .config(..) with your apps, or .config(Config::dev()) for \
                 an explicit development registry",
            ))
        })?;
        config.validate().map_err(Error::Config)?;
        let keys = match (self.keys, &config.key_file) {
            (Some(keys), _) => keys,
            (None, Some(path)) => KeyRing::open(path, config.token_ttl).map_err(Error::Keys)?,
            (None, None) => KeyRing::in_memory(config.token_ttl).map_err(Error::Keys)?,
        };
        let tls = match (self.tls, &config.tls) {
            (Some(tls), _) => Some(tls),
            (None, Some(files)) => Some(files.load().map_err(Error::Tls)?),
            (None, None) => None,
        };
        let http_addr = match self.http_listen.as_ref().or(config.http_listen.as_ref()) {
            Some(HttpListen::On(addr)) => Some(addr.clone()),
            Some(HttpListen::Off) | None => None,
        };
        let http_listener = match &http_addr {
            Some(addr) => Some(http::bind(addr).await.map_err(|e| Error::HttpBind {
                addr: addr.clone(),
                source: e,
            })?),
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let node_id = node_id();
        let store = open_store(&config, &keys, &node_id, &stopping).await?;
        let registry = RegistryImpl::new(
            config.clone(),
            keys.clone(),
            store.clone(),
            node_id.clone(),
            stopping.clone(),
        );
        // A shared store reports the whole registry's registrations before this node serves.
        store
            .attach(registry.view())
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
        let mut server = stardust::Server::builder()
            // The registry is where apps log in: its connections start anonymous, and each
            // method checks the session itself.
            .allow_anonymous()
            .features(crate::service::FEATURES)
            .max_connections(config.limits.max_connections)
            .max_pending_handshakes(config.limits.max_pending_handshakes)
            .serve(RegistryServer::new(registry.clone()));
        let tls_on = tls.is_some();
        if let Some(tls) = tls {
            server = server.tls(tls);
        }
        let server = server.bind(addr).await.map_err(Error::Bind)?;
        tokio::spawn(registry.clone().run_sweeper());
        tokio::spawn(registry.clone().run_publisher());
        let addr = server.local_addr();
        let http = http_listener.map(|(listener, http_addr)| {
            let context = HttpContext {
                registry: Box::new(registry.clone()),
                rpc_addr: addr,
                dev: config.dev,
                tls: tls_on,
                store: store.describe(),
                node: node_id.clone(),
                started: std::time::Instant::now(),
                trace_url: trace_url(&config),
            };
            if !http_addr.ip().is_loopback() {
                tracing::warn!(
                    %http_addr,
                    "the monitoring HTTP server (metrics, API, console) listens on a non-loopback \
                     address without authentication: anyone who can reach it sees every service, \
                     instance and figure; restrict access to it"
                );
            }
            tracing::info!(%http_addr, "monitoring console on http://{http_addr}/ (metrics at /metrics, JSON at /api)");
            http::serve(listener, http_addr, context, stopping)
        });
        if config.dev {
            tracing::warn!(
                %addr,
                "DEV MODE IS ON: any app name can log in, an unknown app is created with the \
                 secret of its first login (kept in memory until restart), and EVERY APP MAY \
                 PROVIDE AND CONSUME EVERY SERVICE, whatever its `provide` list says. Never \
                 expose a dev-mode registry to untrusted networks."
            );
        } else {
            // Least privilege: an app without a `provide` list provides nothing. Said once, at
            // start-up, for each such app, so an upgrade that changed what they may do is
            // noticed before their registrations are refused.
            for (app, _) in config.apps.iter().filter(|(_, a)| a.provide.is_none()) {
                tracing::warn!(
                    app = %app,
                    "app `{app}` has no `provide` list and may provide no service; add \
                     `provide = [\"name.Service\"]` (or `[\"*\"]`) under [apps.{app}] if it is a provider"
                );
            }
        }
        if keys.file().is_none() {
            tracing::warn!(
                "signing key kept in memory only: tokens become invalid when this registry stops"
            );
        }
        tracing::info!(
            %addr,
            store = %store.describe(),
            node = %node_id,
            apps = config.apps.len(),
            kid = %keys.signing_kid(),
            token_ttl = ?config.token_ttl,
            lease_ttl = ?config.lease_ttl,
            concurrent_hashes = config.login_throttle.concurrent_hashes(),
            "registry listening"
        );
        Ok(RegistryNode {
            node_id,
            server,
            registry,
            keys,
            config,
            http,
            stop,
        })
    }
}

/// A random name for this node's run, found in the entries it owns in a shared store.
fn node_id() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::fill(&mut bytes).is_err() {
        // Uniqueness matters, secrecy does not: the time will do.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("node-{hex}")
}

/// Opens the configured store (connecting to etcd, bounded).
async fn open_store(
    config: &Config,
    keys: &KeyRing,
    node_id: &str,
    stopping: &watch::Receiver<bool>,
) -> Result<std::sync::Arc<dyn Store>, Error> {
    match &config.store {
        StoreConfig::Memory => {
            let store = crate::store::memory::MemoryStore::open(config.rules_file.clone())
                .map_err(Error::Store)?;
            Ok(std::sync::Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd { endpoints, prefix } => {
            let store = crate::store::etcd::EtcdStore::connect(crate::store::etcd::EtcdOptions {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                node: node_id.to_owned(),
                lease_ttl: config.lease_ttl,
                keys: keys.clone(),
                apps: config.apps.clone(),
                stopping: stopping.clone(),
                access: config.etcd.clone(),
            })
            .await
            .map_err(|e| Error::Store(e.to_string()))?;
            Ok(std::sync::Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        StoreConfig::Etcd { .. } => {
            let _ = (keys, node_id, stopping);
            Err(Error::Config(ConfigError::new(format!(
                "store `{}` needs a registry built with the `etcd` feature",
                config.store
            ))))
        }
    }
}

/// Waits (bounded) until nothing listens on `addr` any more: the server's accept task drops its
/// listener asynchronously after shutdown.
async fn wait_port_released(addr: SocketAddr) {
    let probe = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        // Like the registry's own listener: TIME_WAIT leftovers do not count, a listener does.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)
    };
    for attempt in 0..400u32 {
        match probe() {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            // Anything else (no such interface, ...) is not ours to wait for.
            Err(_) => return,
        }
        if attempt < 50 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tracing::warn!(%addr, "the registry's port still seems in use after shutdown");
}

/// Why a registry could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The key file could not be read or created.
    Keys(KeyError),
    /// The listening socket could not be bound.
    Bind(stardust::Error),
    /// The TLS certificate or key could not be loaded.
    Tls(stardust::Error),
    /// The shared store (etcd) could not be reached or read.
    Store(String),
    /// The monitoring HTTP server could not listen.
    HttpBind {
        /// The address it was to listen on.
        addr: String,
        /// Why it could not.
        source: std::io::Error,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Keys(e) => e.fmt(f),
            Error::Bind(e) => write!(f, "the registry cannot listen: {e}"),
            Error::Tls(e) => write!(f, "the registry cannot load its TLS files: {e}"),
            Error::Store(e) => write!(f, "the registry cannot use its store: {e}"),
            Error::HttpBind { addr, source } => write!(
                f,
                "the registry's monitoring HTTP server cannot listen on {addr}: {source} \
                 (set http_listen to another address, or \"off\")"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Keys(e) => Some(e),
            Error::Bind(e) => Some(e),
            Error::Tls(e) => Some(e),
            Error::Store(_) => None,
            Error::HttpBind { source, .. } => Some(source),
        }
    }
}

/// The console's trace link template: the config's, else `STARDUST_TRACE_URL` when it is one
/// (a malformed variable is ignored with a warning; the config's was validated).
fn trace_url(config: &Config) -> Option<String> {
    config.trace_url.clone().or_else(|| {
        let url = std::env::var("STARDUST_TRACE_URL").ok()?;
        if crate::config::is_trace_url(&url) {
            Some(url)
        } else {
            tracing::warn!(
                "STARDUST_TRACE_URL is ignored: it must be an http:// or https:// URL template \
                 containing {{trace_id}}"
            );
            None
        }
    })
}
