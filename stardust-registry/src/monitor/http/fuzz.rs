//! The monitoring HTTP server driven from memory, for the fuzz targets in `fuzz/` (hidden
//! `fuzzing` feature; not a public API).
//!
//! Requests go through the very connection handler the server runs for every socket
//! ([`serve_connection`]: hyper's HTTP/1 parser, its limits and timeouts, then routing), over an
//! in-memory duplex stream, against a monitor that already holds a couple of services with
//! figures, so every route has something to render. The registry behind it is the caller's
//! (`node::fuzz` builds a real one): monitoring sits below the registry service and only sees it
//! through [`RegistryState`](crate::monitor::RegistryState).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stardust::discovery::api::{
    CallFigures, ErrorCount, Exemplar, FaultCount, Instance, LATENCY_BOUNDS_US, Latency,
    MethodFigures, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::slots::Slots;
use super::{Ctx, HttpContext, serve_connection};
use crate::monitor::Monitor;

/// The connection handler of a monitoring server without a socket.
pub(crate) struct MemoryServer {
    ctx: Arc<Ctx>,
    stopping: watch::Receiver<bool>,
}

impl MemoryServer {
    /// Serves `context` as if listening on loopback, after filling its registry's monitor with
    /// sample figures ([`populate`]). Connections stop when `stopping` turns `true`.
    pub(crate) fn new(context: HttpContext, stopping: watch::Receiver<bool>) -> MemoryServer {
        populate(context.registry.monitor());
        let ctx = Arc::new(Ctx {
            inner: context,
            loopback: true,
        });
        MemoryServer { ctx, stopping }
    }

    /// Sends `request` (any bytes) on a fresh connection and returns every byte the server
    /// answered until it closed the connection (at the latest when its timeouts expire, which a
    /// paused clock makes immediate).
    ///
    /// The client never half-closes: the server drops a connection whose client did, without
    /// answering, like any hyper server that does not enable half-closures.
    pub(crate) async fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        // A slot of its own, as the accept loop would give it (the fuzzed connection is the
        // only one, so it is never evicted).
        let admitted = Slots::new(1)
            .admit(Instant::now())
            .expect("an empty table has room");
        let conn = serve_connection(server, self.ctx.clone(), self.stopping.clone(), admitted);
        let send = async {
            // The server may close before reading everything: not an error here.
            let _ = wr.write_all(request).await;
        };
        let mut answer = Vec::new();
        let receive = rd.read_to_end(&mut answer);
        let ((), (), _) = tokio::join!(conn, send, receive);
        answer
    }
}

/// What a provider's session would have left in the monitor: two services (one with a name that
/// needs percent-encoding in a URL) and a report with served and called figures and a fault it
/// injected.
fn populate(monitor: &Monitor) {
    let now = Instant::now();
    let session = 1;
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    monitor.session_started(session, Arc::from("calc-provider"), peer, now);
    for (service, endpoint) in [
        ("calc.Calculator", "127.0.0.1:9000"),
        ("odd/name ü", "127.0.0.1:9001"),
    ] {
        let instance = Instance {
            app: "calc-provider".to_owned(),
            service: service.to_owned(),
            version: "1.2.0".to_owned(),
            endpoint: endpoint.to_owned(),
            weight: 100,
            tags: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
            tls: false,
        };
        monitor.registered(&instance, session, now);
    }
    let mut buckets = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
    buckets[3] = 40;
    buckets[7] = 2;
    let latency = Latency {
        buckets,
        sum_us: 12_000,
        p50_us: 200,
        p90_us: 900,
        p99_us: 4_000,
        max_us: 4_500,
    };
    let status = Status {
        in_flight: 1,
        uptime_ms: 60_000,
        version: "stardust-rust/0.1.0".to_owned(),
        window_ms: 5_000,
        cpu_ms: 20,
        rss_bytes: 8 << 20,
        unbound_tokens_accepted: 3,
        served: vec![MethodFigures {
            service: "calc.Calculator".to_owned(),
            method: "add".to_owned(),
            calls: 42,
            errors: vec![ErrorCount { code: 3, count: 1 }],
            in_flight: 1,
            latency: latency.clone(),
            items_in: 0,
            items_out: 0,
            slowest: Some(Exemplar {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                latency_us: 1200,
                error: None,
            }),
            // Not a trace id: the registry must drop it.
            failed: Some(Exemplar {
                trace_id: "<a href=x>".to_owned(),
                latency_us: 7,
                error: Some(3),
            }),
        }],
        called: vec![CallFigures {
            endpoint: "127.0.0.1:9001".to_owned(),
            service: "odd/name ü".to_owned(),
            calls: 7,
            errors: vec![ErrorCount { code: 12, count: 2 }],
            latency,
        }],
        faults: vec![FaultCount {
            service: "odd/name ü".to_owned(),
            fault: "slow \"one\"".to_owned(),
            kind: "delay".to_owned(),
            count: 3,
        }],
    };
    monitor.fold(session, &status, now + Duration::from_secs(5));
}
