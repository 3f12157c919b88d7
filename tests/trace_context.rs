//! W3C Trace Context across calls (issue 21): a call's `traceparent` carries one 128-bit trace
//! from the client through every provider it reaches, each hop a new span whose parent is the
//! span before it; a foreign `traceparent` is continued, a malformed one starts a new trace, and
//! an older peer's 64-bit trace id is the low half of the trace it joins.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use common::within;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello, RequestHead};
use stardust::{Context, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};

/// What a handler saw of its call's trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// The W3C trace id, 32 hex digits.
    pub trace_id: String,
    /// `Context::trace_id`, the 64-bit id.
    pub trace_id64: u64,
    pub span_id: u64,
    pub parent_span_id: u64,
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub traceparent: String,
    /// Whether `traceparent` was left in the call's metadata (it must not be).
    pub traceparent_in_metadata: bool,
}

#[stardust::service(name = "test.Trace")]
pub trait Probe {
    /// The trace the handler sees.
    async fn seen(&self) -> Seen;
    /// What this handler sees, and what a `seen` it calls on `target` sees.
    async fn relay(&self, target: String) -> (Seen, Seen);
}

struct ProbeImpl;

fn seen() -> Seen {
    let ctx = Context::current().expect("a handler has a context");
    let t = ctx.trace_context().expect("a served call has a trace");
    Seen {
        trace_id: format!("{:032x}", t.trace_id),
        trace_id64: ctx.trace_id(),
        span_id: t.span_id,
        parent_span_id: t.parent_span_id,
        sampled: t.sampled,
        tracestate: t.tracestate.clone(),
        traceparent: t.traceparent(),
        traceparent_in_metadata: ctx.metadata().get("traceparent").is_some(),
    }
}

impl Probe for ProbeImpl {
    async fn seen(&self) -> Seen {
        seen()
    }

    async fn relay(&self, target: String) -> (Seen, Seen) {
        let mine = seen();
        let client = ProbeClient::connect(target.as_str())
            .await
            .expect("relay connect");
        (mine, client.seen().await.expect("relay call"))
    }
}

async fn provider() -> stardust::Server {
    stardust::Server::builder()
        .serve(ProbeServer::new(ProbeImpl))
        .allow_anonymous()
        .bind("127.0.0.1:0")
        .await
        .unwrap()
}

// ------------------------------------------------------------- the spans of this process

/// `stardust.call` spans created in this process: their fields, as recorded.
static CALLS: Mutex<Vec<BTreeMap<String, String>>> = Mutex::new(Vec::new());

struct Recorder(AtomicU64);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.fetch_add(1, Ordering::Relaxed);
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        if span.metadata().name() == "stardust.call" {
            fields.insert("#".into(), id.to_string());
            CALLS.lock().push(fields);
        }
        Id::from_u64(id)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let id = id.into_u64().to_string();
        let mut calls = CALLS.lock();
        if let Some(fields) = calls.iter_mut().find(|f| f["#"] == id) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn record_spans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(Recorder(AtomicU64::new(1))).unwrap();
    });
}

/// The recorded `stardust.call` span whose `traceparent` named `span_id`.
fn call_span(span_id: u64) -> BTreeMap<String, String> {
    let id = format!("{span_id:016x}");
    CALLS
        .lock()
        .iter()
        .find(|f| f.get("span_id") == Some(&id))
        .cloned()
        .unwrap_or_else(|| panic!("no stardust.call span with span_id {id}"))
}

// ------------------------------------------------------------------------ a raw old client

/// Sends one `seen` request with `trace_id` and `meta` over a raw connection, as a client
/// written from the protocol document (or an older Stardust) would, and decodes the answer.
async fn raw_seen(addr: SocketAddr, trace_id: u64, meta: &Metadata) -> Seen {
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "old-client".into(),
        max_frame: None,
        meta: Default::default(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    let head = RequestHead {
        id: 1,
        flags: 0,
        service: "test.Trace",
        method: "seen",
        timeout_us: 10_000_000,
        trace_id,
        meta,
    };
    message::put_request(&mut out, &head, &[0u8; 0], u32::MAX).unwrap();
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    within("the raw call's response", async {
        loop {
            if let Ok(Some(h)) = frame::parse_header(&buf, u32::MAX)
                && buf.len() >= h.frame_len()
            {
                let f = buf.split_to(h.frame_len());
                let body = &f[frame::HEADER_LEN..];
                if h.kind == Kind::Response as u8 {
                    return stardust::__wire::codec::decode_value(body).unwrap();
                }
                assert_eq!(h.kind, Kind::HelloAck as u8, "unexpected frame {h:?}");
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

// -------------------------------------------------------------------------------- the tests

const FOREIGN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_two_providers_with_linked_spans() {
    record_spans();
    let (a, b) = (provider().await, provider().await);
    let client = ProbeClient::connect(a.local_addr()).await.unwrap();
    let (at_a, at_b) = within("relay", client.relay(b.local_addr().to_string()))
        .await
        .unwrap();

    // One 128-bit trace at both providers; the 64-bit trace id is its low half.
    assert_eq!(at_a.trace_id, at_b.trace_id);
    assert_ne!(at_a.trace_id, format!("{:032x}", 0));
    assert_eq!(at_a.trace_id64, at_b.trace_id64);
    assert_eq!(format!("{:016x}", at_a.trace_id64), at_a.trace_id[16..]);
    assert!(at_a.sampled && at_b.sampled);
    assert!(!at_a.traceparent_in_metadata && !at_b.traceparent_in_metadata);

    // client's span -> A's span -> A's call's span -> B's span.
    let top = call_span(at_a.parent_span_id);
    assert_eq!(top["parent_span_id"], format!("{:016x}", 0), "{top:?}");
    assert_eq!(top["trace_id"], &at_a.trace_id[16..]);
    let hop = call_span(at_b.parent_span_id);
    assert_eq!(
        hop["parent_span_id"],
        format!("{:016x}", at_a.span_id),
        "{hop:?}"
    );
    assert_eq!(hop["trace_id"], &at_a.trace_id[16..]);
    let spans = [
        at_a.parent_span_id,
        at_a.span_id,
        at_b.parent_span_id,
        at_b.span_id,
    ];
    for (i, x) in spans.iter().enumerate() {
        assert_ne!(*x, 0);
        assert!(!spans[i + 1..].contains(x), "span ids repeat: {spans:x?}");
    }
    // What a handler would hand a system outside Stardust: this trace, under its own span.
    assert_eq!(
        at_a.traceparent,
        format!("00-{}-{:016x}-01", at_a.trace_id, at_a.span_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_continued_with_its_tracestate() {
    let (a, b) = (provider().await, provider().await);
    let client = stardust::Client::connect(a.local_addr()).await.unwrap();
    let foreign = client
        .with_metadata("traceparent", FOREIGN)
        .with_metadata("tracestate", "vendor=abc,other=1");
    let (at_a, at_b) = within(
        "relay",
        ProbeClient::new(foreign).relay(b.local_addr().to_string()),
    )
    .await
    .unwrap();
    assert_eq!(at_a.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(at_a.parent_span_id, 0x00f067aa0ba902b7);
    assert_eq!(at_a.trace_id64, 0xa3ce929d0e0e4736);
    assert!(at_a.sampled);
    assert_eq!(at_a.tracestate.as_deref(), Some("vendor=abc,other=1"));
    // ...and A's own call to B continues it, forwarding the tracestate.
    assert_eq!(at_b.trace_id, at_a.trace_id);
    assert_ne!(at_b.parent_span_id, at_a.parent_span_id);
    assert_eq!(at_b.tracestate.as_deref(), Some("vendor=abc,other=1"));

    // Not sampled upstream: the flag goes along.
    let unsampled = FOREIGN.replace("-01", "-00");
    let client = ProbeClient::new(client.with_metadata("traceparent", unsampled));
    let (at_a, at_b) = client.relay(b.local_addr().to_string()).await.unwrap();
    assert!(!at_a.sampled && !at_b.sampled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let server = provider().await;
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ] {
        let meta: Metadata = [("traceparent", bad), ("tracestate", "vendor=abc")]
            .into_iter()
            .collect();
        let seen = raw_seen(server.local_addr(), 0, &meta).await;
        assert_ne!(seen.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
        assert_ne!(seen.trace_id64, 0, "{bad}");
        assert_eq!(seen.parent_span_id, 0, "a new trace has no parent: {bad}");
        assert!(!seen.traceparent_in_metadata, "{bad}");
    }
    // A Stardust client replaces a malformed one with its own.
    let client = stardust::Client::connect(server.local_addr())
        .await
        .unwrap();
    let client = ProbeClient::new(client.with_metadata("traceparent", "00-zz"));
    let seen = client.seen().await.unwrap();
    assert_ne!(seen.parent_span_id, 0);
    assert_eq!(format!("{:016x}", seen.trace_id64), seen.trace_id[16..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_call_joins_the_trace_of_its_64_bit_id() {
    let server = provider().await;
    let seen = raw_seen(server.local_addr(), 0x0123_4567_89ab_cdef, &Metadata::new()).await;
    assert_eq!(seen.trace_id, "00000000000000000123456789abcdef");
    assert_eq!(seen.trace_id64, 0x0123_4567_89ab_cdef);
    assert_eq!(seen.parent_span_id, 0x0123_4567_89ab_cdef);
    assert!(seen.sampled);
    // A valid traceparent wins over the field.
    let meta: Metadata = [("traceparent", FOREIGN)].into_iter().collect();
    let seen = raw_seen(server.local_addr(), 7, &meta).await;
    assert_eq!(seen.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(seen.parent_span_id, 0x00f067aa0ba902b7);
    // No trace at all: a new one.
    let seen = raw_seen(server.local_addr(), 0, &Metadata::new()).await;
    assert_ne!(seen.trace_id64, 0);
    assert_eq!(seen.parent_span_id, 0);
}
