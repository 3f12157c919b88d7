//! The provider side: a listener, its connections, and the calls running on them.
//!
//! ```no_run
//! # use stardust::Server;
//! # async fn run(svc: impl stardust::Service) -> Result<(), stardust::Error> {
//! let server = Server::builder()
//!     .serve(svc)
//!     .allow_anonymous() // or .authenticator(..) to require registry tokens
//!     .bind("127.0.0.1:0")
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.shutdown().await; // graceful: in-flight calls finish first
//! # Ok(()) }
//! ```

mod builder;
mod call;
mod connection;
mod handshake;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::auth::{BoxFuture, ServerAuth};
use crate::error::{Error, ErrorKind};
use crate::interceptor::Interceptor;
use crate::monitor::ServiceFigures;
use crate::service::CallName;
use crate::service::Service;

pub use builder::ServerBuilder;
pub(crate) use builder::ServerConfig;
use connection::ServerConn;
// A connection's notification handle lives with the transport (the call context holds one).
pub use crate::transport::{EncodedNotification, Notifier};

/// Where a server sends requests for services it does not host, instead of answering
/// `UnknownService`: an agent forwarding them to providers. Only consulted when the service
/// lookup fails, so hosted services never pay for it.
pub(crate) trait Forward: Send + Sync + 'static {
    /// Starts forwarding `call`; the future gives the raw body of the response (sent back in a
    /// `Response` frame as it is) or the error to answer with. The future is polled once at
    /// once, then by the connection's forwarding task, tracked like a handler's task
    /// (cancellation, drain, the in-flight cap). For a one-way request its output is dropped.
    fn forward(&self, call: Forwarded) -> BoxFuture<'static, Result<Bytes, Error>>;

    /// Starts forwarding the streaming call `call`, whose input arrives in `io.input` and whose
    /// output items go to `io.output`; the future gives the raw body of the final response or
    /// the error. It runs as a task of its own (a stream is long-lived); dropping it
    /// (cancellation) must end the stream upstream too.
    fn forward_stream(
        &self,
        call: Forwarded,
        io: ForwardedStream,
    ) -> BoxFuture<'static, Result<Bytes, Error>>;
}

/// The two ends of a forwarded streaming call on the server's side: what its client sends, and
/// where the items for its client go (each item a raw MessagePack body; flow control applies
/// on both).
pub(crate) struct ForwardedStream {
    /// The client's input items; dropping it before its end tells the client to stop sending.
    pub(crate) input: Option<Box<dyn crate::stream::RawSource>>,
    pub(crate) output: call::StreamOut,
}

/// A request as it arrived, for a [`Forward`].
pub(crate) struct Forwarded {
    pub(crate) name: CallName,
    /// The address of the connection it came on (the application, for an agent).
    pub(crate) peer: std::net::SocketAddr,
    /// The request's flags ([`FLAG_ONE_WAY`](crate::protocol::frame::FLAG_ONE_WAY),
    /// [`FLAG_IDEMPOTENT`](crate::protocol::frame::FLAG_IDEMPOTENT)).
    pub(crate) flags: u8,
    pub(crate) deadline: Option<tokio::time::Instant>,
    pub(crate) trace_id: u64,
    /// The request's `traceparent`, if it had a valid one (taken out of `meta`).
    pub(crate) trace: Option<crate::trace_context::TraceParent>,
    pub(crate) meta: crate::Metadata,
    /// The MessagePack argument array, as received.
    pub(crate) args: Bytes,
}

/// Whether `ip` is this host's loopback, including an IPv4 loopback address mapped into IPv6
/// (`::ffff:127.0.0.1`, how a dual-stack listener sees an IPv4 peer).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A running server. Dropping it stops the server abruptly (like a crash: connections are cut);
/// call [`Server::shutdown`] for a graceful stop.
#[must_use = "the server stops when this handle is dropped"]
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<ServerShared>,
    accept: AbortHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

pub(crate) struct ServerShared {
    /// A list, not a map: servers host a handful of services, and comparing a few short names
    /// beats hashing the name on every call.
    services: Vec<(&'static str, Arc<dyn Service>)>,
    /// Call figures of each hosted service, indexed like `services` (shared with its
    /// in-process callers: [`Server::local_services`]).
    pub(crate) figures: Box<[Arc<ServiceFigures>]>,
    pub(crate) interceptors: Vec<Arc<dyn Interceptor>>,
    pub(crate) config: ServerConfig,
    pub(crate) auth: ServerAuth,
    /// Where requests for services not hosted here go, if anywhere.
    pub(crate) forward: Option<Arc<dyn Forward>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// Entries of `conns` still in their handshake (`conn` is `None`); changed under its lock.
    handshakes: AtomicUsize,
    /// Connections being told why they are refused (see [`turn_away`]).
    turning_away: AtomicUsize,
    conns_changed: Notify,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
}

struct ConnEntry {
    conn: Option<Arc<ServerConn>>,
    task: AbortHandle,
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Number of open client connections.
    pub fn connection_count(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Unbound (bearer) tokens accepted since the server started, in handshakes and renewals:
    /// only ever non-zero with [`require_proof(false)`](ServerBuilder::require_proof), and how
    /// an operator sees which clients still need upgrading before turning it back on.
    pub fn unbound_tokens_accepted(&self) -> u64 {
        self.shared
            .auth
            .unbound_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls whose handlers are running right now (handlers that complete without waiting are
    /// answered inline and never counted).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// The hosted services that clients in this process may call in-process
    /// ([`crate::local`]), with this server's interceptors and figures.
    pub fn local_services(&self) -> Vec<crate::local::LocalService> {
        let shared = &self.shared;
        shared
            .services
            .iter()
            .zip(shared.figures.iter())
            .filter_map(|((_, service), figures)| {
                let local = crate::local::LocalService::from(service.local()?);
                Some(local.hosted(figures.clone(), shared.interceptors.clone()))
            })
            .collect()
    }

    /// A handle that counts this server's in-flight calls without keeping it alive (status
    /// reports).
    pub(crate) fn probe(&self) -> ServerProbe {
        ServerProbe(Arc::downgrade(&self.shared))
    }

    /// Serves until `signal` completes, then shuts down gracefully ([`Server::shutdown`]): the
    /// usual end of a provider's `main`, with `tokio::signal::ctrl_c()` (tokio's `signal`
    /// feature) as the signal. (A `Server` serves in the background from `bind` on, and
    /// dropping it stops it at once; this keeps it alive until asked to stop.)
    ///
    /// ```no_run
    /// # async fn run(server: stardust::Server) {
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// // ... hand `stop` to whatever decides when to stop ...
    /// # drop(stop);
    /// server
    ///     .serve_until(async {
    ///         let _ = stopped.await;
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn serve_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Graceful shutdown: stop accepting, tell every client (a `GoAway` frame), let in-flight
    /// calls finish within the configured grace period, then close.
    pub async fn shutdown(self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.accept.abort();
        let conns: Vec<Arc<ServerConn>> = self
            .shared
            .conns
            .lock()
            .values()
            .filter_map(|e| e.conn.clone())
            .collect();
        for conn in &conns {
            conn.begin_drain();
        }
        drop(conns);
        let grace = self.shared.config.shutdown_grace;
        let all_closed = async {
            loop {
                let changed = self.shared.conns_changed.notified();
                if self.shared.conns.lock().is_empty() {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(grace, all_closed).await.is_err() {
            tracing::warn!(
                remaining = self.shared.conns.lock().len(),
                "shutdown grace period over; closing connections with calls still running"
            );
        }
        // Drop aborts whatever is left.
    }

    /// Stops at once: listener and every connection are dropped, in-flight calls abandoned.
    /// Clients see their connections fail. Equivalent to dropping the handle.
    pub fn abort(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        let entries: Vec<ConnEntry> = self.shared.conns.lock().drain().map(|(_, e)| e).collect();
        for e in entries {
            e.task.abort();
            if let Some(conn) = e.conn {
                conn.abort();
            }
        }
    }
}

async fn accept_loop(shared: Arc<ServerShared>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept: back off briefly instead of
                // spinning, and keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.config.local_only && !is_loopback(peer.ip()) {
            tracing::warn!(%peer, "connection refused: only local applications may connect here");
            let err = Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "this agent serves applications on its own host only; {} is not a loopback \
                     address",
                    peer.ip()
                ),
            );
            turn_away(&shared, stream, err);
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        // Register before the task can finish, under the lock, so its removal never races ahead.
        let mut conns = shared.conns.lock();
        let limit = shared.config.max_connections;
        if conns.len() >= limit {
            drop(conns);
            tracing::warn!(%peer, limit, "connection refused: the server is at its connection limit");
            let err = Error::new(
                ErrorKind::Overloaded,
                format!(
                    "the provider is at its limit of {limit} connections; retry later or elsewhere"
                ),
            );
            turn_away(&shared, stream, err);
            continue;
        }
        let pending = shared.config.max_pending_handshakes;
        if shared.handshakes.load(Ordering::Relaxed) >= pending {
            drop(conns);
            tracing::warn!(%peer, limit = pending, "connection refused: too many handshakes in progress");
            let err = Error::new(
                ErrorKind::Overloaded,
                format!(
                    "the provider has {pending} connections in their handshake (its limit); retry \
                     later or elsewhere"
                ),
            );
            turn_away(&shared, stream, err);
            continue;
        }
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(connection::serve(shared.clone(), stream, peer, id));
        conns.insert(
            id,
            ConnEntry {
                conn: None,
                task: task.abort_handle(),
            },
        );
    }
}

/// Tells a connection the server has no room for why, then closes it. The refusal takes a
/// moment (the reason is written, then the client's pipelined frames are drained so they do not
/// reset it); at most [`ServerConfig::max_pending_handshakes`] refusals run at once, and beyond
/// that a flood of connections is closed without a word rather than held open to be told.
fn turn_away(shared: &Arc<ServerShared>, stream: TcpStream, err: Error) {
    if shared.turning_away.fetch_add(1, Ordering::Relaxed) >= shared.config.max_pending_handshakes {
        shared.turning_away.fetch_sub(1, Ordering::Relaxed);
        drop(stream);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        handshake::turn_away(
            stream,
            shared.config.tls.clone(),
            shared.config.hello_limit(),
            err,
        )
        .await;
        shared.turning_away.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Reads a server's figures for status reports while it exists.
#[derive(Clone)]
pub(crate) struct ServerProbe(std::sync::Weak<ServerShared>);

impl ServerProbe {
    /// The unbound tokens the server accepted so far (0 once it is gone).
    pub(crate) fn unbound_tokens_accepted(&self) -> u64 {
        self.0
            .upgrade()
            .map_or(0, |s| s.auth.unbound_accepted.load(Ordering::Relaxed))
    }

    /// The server's in-flight calls, or `None` once it is gone.
    pub(crate) fn get(&self) -> Option<usize> {
        self.0.upgrade().map(|s| s.in_flight())
    }

    /// Appends the server's per-method figures since the previous call; `false` once the server
    /// is gone.
    pub(crate) fn take_windows(
        &self,
        into: &mut Vec<crate::protocol::registry::MethodFigures>,
    ) -> bool {
        match self.0.upgrade() {
            Some(s) => {
                for figures in s.figures.iter() {
                    figures.take_windows(into);
                }
                true
            }
            None => false,
        }
    }
}

impl ServerShared {
    fn in_flight(&self) -> usize {
        let conns: Vec<Arc<ServerConn>> = self
            .conns
            .lock()
            .values()
            .filter_map(|e| e.conn.clone())
            .collect();
        conns.iter().map(|c| c.in_flight()).sum()
    }

    /// The hosted service whose name is `name` (the bytes a request carries), and its index
    /// (for its figures).
    pub(crate) fn service_bytes(&self, name: &[u8]) -> Option<(usize, &Arc<dyn Service>)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n.as_bytes() == name)
            .map(|(i, (_, s))| (i, s))
    }

    /// Makes a handshaken connection reachable for shutdown.
    fn attach(&self, id: u64, conn: &Arc<ServerConn>) {
        if let Some(e) = self.conns.lock().get_mut(&id)
            && e.conn.replace(conn.clone()).is_none()
        {
            self.handshakes.fetch_sub(1, Ordering::Relaxed);
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            conn.begin_drain();
        }
    }

    fn detach(&self, id: u64) {
        if let Some(e) = self.conns.lock().remove(&id)
            && e.conn.is_none()
        {
            self.handshakes.fetch_sub(1, Ordering::Relaxed);
        }
        self.conns_changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_peers_count_as_local() {
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.1",
            "192.168.1.20",
            "0.0.0.0",
            "::",
            "::ffff:10.0.0.1",
            "fe80::1",
            "2001:db8::1",
        ] {
            assert!(!is_loopback(remote.parse().unwrap()), "{remote}");
        }
    }
}
