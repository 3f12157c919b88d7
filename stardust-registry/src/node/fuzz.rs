//! [`MonitorHarness`]: a registry's monitoring server without a socket, for the fuzz targets in
//! `fuzz/` (hidden `fuzzing` feature, re-exported as `stardust_registry::__fuzz`; not a public
//! API).
//!
//! It lives with the node because, like the node, it assembles a registry service and a
//! monitoring server; the in-memory connection handling it drives is monitoring's own
//! (`monitor::http::fuzz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::config::Config;
use crate::keys::KeyRing;
use crate::monitor::http::HttpContext;
use crate::monitor::http::fuzz::MemoryServer;
use crate::service::RegistryImpl;
use crate::store::memory::MemoryStore;

/// A registry's monitoring server without a socket.
pub struct MonitorHarness {
    runtime: tokio::runtime::Runtime,
    server: MemoryServer,
    /// Kept so the connection handler's stop signal never fires.
    _stop: watch::Sender<bool>,
}

impl MonitorHarness {
    /// A dev-mode registry listening (as far as the handler knows) on loopback, with two
    /// services registered and one status report folded in.
    pub fn new() -> MonitorHarness {
        // A paused clock: when the connection waits for bytes that will never come, time jumps
        // to its next timeout (headers, connection lifetime) instead of sleeping through it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        let (stop, stopping) = watch::channel(false);
        let config = Config::dev();
        let keys = KeyRing::in_memory(config.token_ttl).expect("an in-memory key ring");
        let registry = RegistryImpl::new(
            config,
            keys,
            Arc::new(MemoryStore::default()),
            "fuzz-node".to_owned(),
            stopping.clone(),
        );
        let context = HttpContext {
            registry: Box::new(registry),
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 7600)),
            dev: true,
            tls: false,
            store: "memory".to_owned(),
            node: "fuzz-node".to_owned(),
            started: Instant::now(),
            trace_url: None,
        };
        MonitorHarness {
            runtime,
            server: MemoryServer::new(context, stopping),
            _stop: stop,
        }
    }

    /// Sends `request` (any bytes) on a fresh connection and returns every byte the server
    /// answered until it closed the connection (at the latest when its timeouts expire, which
    /// the paused clock makes immediate).
    ///
    /// The client never half-closes: the server drops a connection whose client did, without
    /// answering, like any hyper server that does not enable half-closures.
    pub fn exchange(&self, request: &[u8]) -> Vec<u8> {
        self.runtime.block_on(self.server.exchange(request))
    }
}

impl Default for MonitorHarness {
    fn default() -> Self {
        MonitorHarness::new()
    }
}
