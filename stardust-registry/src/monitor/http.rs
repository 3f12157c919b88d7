//! The monitoring HTTP server: `/metrics`, `/api/...` and the console, with hyper 1.
//!
//! It is read-only and unauthenticated, so it binds to loopback unless told otherwise, and when
//! it does listen on loopback it only answers requests addressed to a loopback host name (a
//! defence against DNS rebinding: a web page cannot read it through a name it controls). It is
//! bounded: at most [`MAX_CONNECTIONS`] connections, and when they are all taken a new one
//! takes the place of the connection idle the longest (see `slots`: idle sockets cannot lock it
//! out); a request header must arrive within [`HEADER_TIMEOUT`] (of the connection's start, or
//! of its previous response), and a connection lives at most [`MAX_CONNECTION_LIFE`] (browsers
//! reconnect transparently). Every response is rendered from a snapshot copied under the
//! monitor's lock, never holding it while writing.
//!
//! The one exception to "read-only": admins may log in to the console and call methods from it
//! (`POST /console/login`, `/console/call`, `/console/logout`; see `console_login` for the
//! sessions, CSRF tokens and limits, and `console_call`). The config's `trace_url` (or
//! `STARDUST_TRACE_URL`), e.g. `https://jaeger.example/trace/{trace_id}`, is the link template
//! the console applies wherever it shows a trace id.

mod console_call;
mod console_login;
mod slots;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::slots::{Admitted, Slots, Tracked};
use super::RegistryState;
use super::render::{self, RegistryFacts};

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

/// Connections served at once; beyond, a new one evicts the connection idle the longest (or is
/// closed at once if every one is answering a request).
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this, counted from the connection's start or its
/// previous response: an idle keep-alive connection is closed after it. (The console asks every
/// 1.5 s, within it.)
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed (gracefully, between requests) after this long.
pub(crate) const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// The console page: one self-contained page (inline CSS and JS, no external fetches), kept
/// as its markup, style and script in `console/` and joined at compile time.
const CONSOLE: &str = concat!(
    include_str!("console/top.html"),
    include_str!("console/console.css"),
    include_str!("console/middle.html"),
    include_str!("console/console.js"),
    include_str!("console/bottom.html"),
);

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// What the handlers need.
pub(crate) struct HttpContext {
    /// The registry service, seen through what monitoring reads of it.
    pub registry: Box<dyn RegistryState>,
    pub rpc_addr: SocketAddr,
    pub dev: bool,
    pub tls: bool,
    /// The store, as `Store::describe` says.
    pub store: String,
    /// This node's id.
    pub node: String,
    pub started: Instant,
    /// The console's trace link template ([`Config::trace_url`](crate::Config::trace_url), or
    /// `STARDUST_TRACE_URL`).
    pub trace_url: Option<String>,
}

struct Ctx {
    inner: HttpContext,
    /// Listening on loopback: only loopback Host names are answered.
    loopback: bool,
}

/// The running HTTP server; it stops when the node's stop signal fires.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits (bounded) for the accept loop to end after the stop signal: its port is free then.
    pub(crate) async fn stopped(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Binds `addr` (serving starts with [`serve`]).
pub(crate) async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves on `listener` until `stopping` turns `true` (or its sender is dropped).
pub(crate) fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    context: HttpContext,
    stopping: watch::Receiver<bool>,
) -> HttpServer {
    let ctx = Arc::new(Ctx {
        inner: context,
        loopback: addr.ip().is_loopback(),
    });
    let task = tokio::spawn(accept_loop(listener, ctx, stopping));
    HttpServer { addr, task }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, stopping: watch::Receiver<bool>) {
    let mut stop = stopping.clone();
    let slots = Slots::new(MAX_CONNECTIONS);
    let mut conns = JoinSet::new();
    let (mut refused, mut evicted) = (0u64, 0u64);
    loop {
        let mut failed = false;
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(admitted) = slots.admit(Instant::now()) else {
                        refused += 1;
                        if refused.is_power_of_two() {
                            tracing::warn!(%peer, refused, "monitoring HTTP: every connection is answering a request, closing new ones");
                        }
                        continue;
                    };
                    if admitted.evicted_other {
                        evicted += 1;
                        if evicted.is_power_of_two() {
                            tracing::info!(%peer, evicted, "monitoring HTTP: too many connections, closing the ones idle the longest");
                        }
                    }
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    let stopping = stopping.clone();
                    conns.spawn(serve_connection_from(stream, ctx, stopping, admitted, peer));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "monitoring HTTP: accept failed");
                    failed = true;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if failed {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(listener);
    // Connections were told to finish their response; give them a moment, then cut them.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

// Generic over the stream so the fuzz targets can drive it from memory (`fuzz` below).
#[cfg(feature = "fuzzing")]
async fn serve_connection<S>(
    stream: S,
    ctx: Arc<Ctx>,
    stopping: watch::Receiver<bool>,
    admitted: Admitted,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    serve_connection_from(stream, ctx, stopping, admitted, peer).await;
}

/// Serves one connection from `peer`.
async fn serve_connection_from<S>(
    stream: S,
    ctx: Arc<Ctx>,
    mut stopping: watch::Receiver<bool>,
    admitted: Admitted,
    peer: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let Admitted { slot, evicted, .. } = admitted;
    let service = service_fn(move |req: Request<Incoming>| {
        // Busy from here until hyper has taken the whole response body.
        let answering = slot.request();
        let ctx = ctx.clone();
        async move {
            let reply = if req.method() == Method::POST {
                post(&ctx, req, peer).await
            } else {
                handle(&ctx, &req)
            };
            Ok::<_, Infallible>(reply.map(|body| Tracked::new(body, answering)))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        // Evicted while idle: nothing to finish.
        _ = evicted => return,
        _ = stopping.wait_for(|s| *s) => {}
        _ = tokio::time::sleep(MAX_CONNECTION_LIFE) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => reply(status, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Reply {
    #[derive(Serialize)]
    struct E<'a> {
        error: &'a str,
    }
    let body = serde_json::to_vec(&E { error: message }).unwrap_or_default();
    reply(status, "application/json", body)
}

fn facts(ctx: &Ctx) -> RegistryFacts {
    let c = &ctx.inner;
    RegistryFacts {
        rpc_addr: c.rpc_addr,
        dev: c.dev,
        tls: c.tls,
        store: c.store.clone(),
        node: c.node.clone(),
        store_health: c.registry.store_health(),
        started: c.started,
        logins: c.registry.login_stats(),
    }
}

/// The monitor's figures with the registry's traffic rules (copied from the registry after
/// the monitor's lock is released: the two are never held together).
fn snapshot_with_rules(ctx: &Ctx) -> super::Snapshot {
    let mut snap = ctx.inner.registry.monitor().snapshot(false);
    snap.rules = ctx.inner.registry.rules();
    snap
}

/// Routes a POST: only the console's admin requests.
async fn post(ctx: &Ctx, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    if ctx.loopback && !loopback_host(req.headers().get(header::HOST)) {
        return error(StatusCode::FORBIDDEN, "not a loopback host");
    }
    match req.uri().path() {
        "/console/login" => console_login::login(ctx, req, peer).await,
        "/console/call" => console_call::call(ctx, req).await,
        "/console/logout" => console_login::logout(ctx, req.headers()),
        _ => not_allowed(),
    }
}

fn not_allowed() -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "only GET and HEAD are supported (and POST to /console/login, /console/call, \
         /console/logout)",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// Routes one request.
fn handle(ctx: &Ctx, req: &Request<Incoming>) -> Reply {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return not_allowed();
    }
    if ctx.loopback && !loopback_host(req.headers().get(header::HOST)) {
        return error(
            StatusCode::FORBIDDEN,
            "this registry's monitoring server listens on loopback and only answers requests \
             addressed to 127.0.0.1, [::1] or localhost",
        );
    }
    let monitor = ctx.inner.registry.monitor();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match path {
        "/" | "/index.html" => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", CONSOLE);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
        "/console/session" => console_login::session_info(ctx, req.headers()),
        "/healthz" => {
            // For load balancers and orchestrators: 503 while the node serves a stale table.
            let facts = facts(ctx);
            let (status, body) = match &facts.store_health {
                Ok(()) => (
                    StatusCode::OK,
                    serde_json::json!({"status": "ok", "store": facts.store, "node": facts.node}),
                ),
                Err(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "store unavailable", "store": facts.store,
                                       "node": facts.node, "error": why}),
                ),
            };
            reply(
                status,
                "application/json",
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
        "/metrics" => {
            let snap = snapshot_with_rules(ctx);
            let mut text = render::prometheus(&snap, &facts(ctx));
            let registry = &ctx.inner.registry;
            super::discovery_metrics::prometheus(
                &mut text,
                registry.fanout_stats(),
                registry.login_stats(),
                registry.subscriptions(),
            );
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        "/api" | "/api/" => json(
            StatusCode::OK,
            &serde_json::json!({
                "endpoints": {
                    "/api/services": "the registry's facts and every service with its instances, figures and traffic rules (routes, faults, injected fault counts)",
                    "/api/services/{name}": "one service",
                    "/api/instances": "every live instance, flat",
                    "/api/history?minutes=M": "calls/s and errors/s per service, one sample per slot (last M minutes, up to 15)",
                    "/metrics": "Prometheus text format",
                    "/healthz": "200 while the node follows its store, 503 (with the reason) while it cannot",
                    "/console/session": "the admin logged in to the console with this cookie (and its CSRF token), or null",
                    "POST /console/login": "admin apps only: form fields app and secret; sets the session cookie",
                    "POST /console/call": "with the session cookie and X-CSRF-Token: JSON {service, method, args, endpoint?}",
                    "POST /console/logout": "with the session cookie and X-CSRF-Token",
                }
            }),
        ),
        "/api/services" => {
            let snap = snapshot_with_rules(ctx);
            let registry = &ctx.inner.registry;
            let describe = |s: &str| registry.describe(s);
            json(
                StatusCode::OK,
                &render::overview(&snap, &facts(ctx), &describe),
            )
        }
        "/api/instances" => {
            let snap = monitor.snapshot(false);
            json(StatusCode::OK, &render::instances(&snap))
        }
        "/api/history" => {
            let minutes = query_param(query, "minutes").and_then(|m| m.parse::<u64>().ok());
            let snap = monitor.snapshot(true);
            json(StatusCode::OK, &render::history(&snap, minutes))
        }
        p if p.starts_with("/api/services/") => {
            let Some(name) = percent_decode(&p["/api/services/".len()..]) else {
                return error(StatusCode::BAD_REQUEST, "malformed service name");
            };
            let snap = snapshot_with_rules(ctx);
            match snap.services.get(&name) {
                Some(entry) => {
                    let described = ctx.inner.registry.describe(&name);
                    json(
                        StatusCode::OK,
                        &render::service_view(&name, entry, &snap, &described),
                    )
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no service named {name:?} is registered"),
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not found; see /api for the endpoints",
        ),
    }
}

/// The request is addressed to a loopback host (or names none, as HTTP/1.0 may).
fn loopback_host(host: Option<&HeaderValue>) -> bool {
    let Some(host) = host else { return true };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Decodes `%XX` escapes; `None` for malformed ones or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let ok = |h: &str| loopback_host(Some(&HeaderValue::from_str(h).unwrap()));
        for h in [
            "127.0.0.1:7601",
            "127.0.0.1",
            "[::1]:7601",
            "localhost:80",
            "LOCALHOST",
            "app.localhost:1",
            "127.1.2.3:9",
        ] {
            assert!(ok(h), "{h}");
        }
        for h in [
            "evil.example:7601",
            "10.0.0.1:7601",
            "[::2]:1",
            "localhost.evil.example",
        ] {
            assert!(!ok(h), "{h}");
        }
        assert!(loopback_host(None));
    }

    #[test]
    fn decoding() {
        assert_eq!(
            percent_decode("calc.Calculator").unwrap(),
            "calc.Calculator"
        );
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(query_param("a=1&minutes=5", "minutes"), Some("5"));
        assert_eq!(query_param("", "minutes"), None);
    }
}
