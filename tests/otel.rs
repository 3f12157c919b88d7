//! Stardust's spans through OpenTelemetry (feature `otel`, issue 21): one call from a consumer
//! through the sidecar agent to a provider that calls a second provider is one trace, whose
//! spans nest as the call travelled (consumer's client span, the agent's server and client
//! spans, the provider's server and client spans, the second provider's server span) and carry
//! the RPC attributes; a `traceparent` from outside Stardust is continued.
//!
//! `cargo test -p stardust-workspace --features otel --test otel`
#![cfg(feature = "otel")]

mod common;
#[path = "common/shard_service.rs"]
mod shard_service;

use std::sync::OnceLock;
use std::time::Duration;

use common::within;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use shard_service::{consumer, provider_star, registry, start_agent};
use stardust::{ErrorKind, Server};
use tracing_subscriber::layer::SubscriberExt;

#[stardust::service(name = "test.Hop", version = "1.0.0")]
pub trait Hop {
    /// Calls `hop(None)` on `next` if given; answers with the 32-digit trace id it saw.
    async fn hop(&self, next: Option<String>) -> String;
    /// Panics.
    async fn fail(&self) -> u32;
}

struct HopImpl;

impl Hop for HopImpl {
    async fn hop(&self, next: Option<String>) -> String {
        if let Some(next) = next {
            let client = HopClient::connect(next.as_str()).await.expect("connect");
            return client.hop(None).await.expect("second hop");
        }
        let ctx = stardust::Context::current().expect("context");
        format!("{:032x}", ctx.trace_context().expect("trace").trace_id)
    }

    async fn fail(&self) -> u32 {
        panic!("on purpose")
    }
}

/// The exporter every span of this process ends up in (one subscriber per process).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("stardust-otel-test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        exporter
    })
}

/// The spans of `trace` of `test.Hop` calls, once there are at least `n` (bounded wait: a
/// server span ends just after its response is sent). (The trace holds others too: the agent
/// asks the registry for providers of a service within the first call to it.)
async fn spans_of(trace: TraceId, n: usize) -> Vec<SpanData> {
    within("the spans of the trace", async {
        loop {
            let spans: Vec<SpanData> = exporter()
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .filter(|s| attr(s, "rpc.service").as_deref() == Some("test.Hop"))
                .collect();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The only span of `spans` whose parent is `parent`.
fn child_of(spans: &[SpanData], parent: SpanId) -> &SpanData {
    let children: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    assert_eq!(children.len(), 1, "children of {parent}: {children:#?}");
    children[0]
}

/// Checks that `span` is a `kind` span of `test.Hop.<method>` with the RPC attributes.
fn check_rpc(span: &SpanData, kind: SpanKind, method: &str) {
    assert_eq!(span.span_kind, kind, "{span:#?}");
    let name = if kind == SpanKind::Client {
        "stardust.call"
    } else {
        "stardust.serve"
    };
    assert_eq!(span.name, name, "{span:#?}");
    assert_eq!(attr(span, "rpc.system").as_deref(), Some("stardust"));
    assert_eq!(attr(span, "rpc.service").as_deref(), Some("test.Hop"));
    assert_eq!(attr(span, "rpc.method").as_deref(), Some(method));
}

/// A registry, the agent, provider A (registered: the agent routes to it) and provider B
/// (direct: A calls it by address). Returns what must stay alive, and B's address.
struct Scene {
    _node: stardust_registry::RegistryNode,
    _star: stardust::Stardust,
    _a: stardust::Provider,
    b: Server,
    _agent: stardust::agent::Agent,
    consumer: stardust::Stardust,
}

async fn scene() -> Scene {
    exporter();
    let node = registry().await;
    let star = provider_star(&node).await;
    let a = star
        .serve(
            Server::builder().serve(HopServer::new(HopImpl)),
            "127.0.0.1:0",
        )
        .await
        .expect("serve A");
    let b = Server::builder()
        .serve(HopServer::new(HopImpl))
        .allow_anonymous()
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let agent = start_agent(&node, 16).await;
    let consumer = consumer(&agent).await;
    Scene {
        _node: node,
        _star: star,
        _a: a,
        b,
        _agent: agent,
        consumer,
    }
}

/// `hop(B)` through the agent, waiting out the moment before the agent knows provider A.
async fn hop(client: &HopClient, b: &Server) -> String {
    within("the call through the agent", async {
        loop {
            match client.hop(Some(b.local_addr().to_string())).await {
                Err(e) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                other => return other.expect("hop"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_agent_and_two_providers_is_one_nested_trace() {
    let scene = scene().await;
    let client = scene.consumer.client::<HopClient>();
    let seen = hop(&client, &scene.b).await;
    // Calls before the one that got through (NoProvider) are traces of their own.
    let trace = TraceId::from_hex(&seen).unwrap();
    let spans = spans_of(trace, 6).await;
    assert_eq!(spans.len(), 6, "{spans:#?}");

    // consumer -> agent (server, client) -> A (server, client) -> B (server).
    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == SpanId::INVALID)
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    let consumer = roots[0];
    check_rpc(consumer, SpanKind::Client, "hop");
    let agent_server = child_of(&spans, consumer.span_context.span_id());
    check_rpc(agent_server, SpanKind::Server, "hop");
    let agent_client = child_of(&spans, agent_server.span_context.span_id());
    check_rpc(agent_client, SpanKind::Client, "hop");
    let a_server = child_of(&spans, agent_client.span_context.span_id());
    check_rpc(a_server, SpanKind::Server, "hop");
    let a_client = child_of(&spans, a_server.span_context.span_id());
    check_rpc(a_client, SpanKind::Client, "hop");
    let b_server = child_of(&spans, a_client.span_context.span_id());
    check_rpc(b_server, SpanKind::Server, "hop");

    // Addresses: where each client sent its call, where each provider's call came from.
    let b_port = scene.b.local_addr().port().to_string();
    assert_eq!(attr(a_client, "server.port"), Some(b_port), "{a_client:#?}");
    for client in [consumer, agent_client, a_client] {
        assert_eq!(attr(client, "server.address").as_deref(), Some("127.0.0.1"));
    }
    for server in [agent_server, a_server, b_server] {
        assert_eq!(
            attr(server, "network.peer.address").as_deref(),
            Some("127.0.0.1"),
            "{server:#?}"
        );
    }
    // Nothing failed.
    assert!(
        spans.iter().all(|s| s.status == Status::Unset),
        "{spans:#?}"
    );

    // A failed call: ERROR and the error's kind on the spans of both ends.
    let err = client.fail().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    let failed: Vec<SpanData> = within("the failed call's spans", async {
        loop {
            let spans: Vec<SpanData> = exporter()
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| attr(s, "rpc.method").as_deref() == Some("fail"))
                .collect();
            if spans.len() >= 4 {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for span in &failed {
        assert!(matches!(span.status, Status::Error { .. }), "{span:#?}");
        assert_eq!(attr(span, "error.type").as_deref(), Some("Panicked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_continued_through_the_agent() {
    const FOREIGN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let scene = scene().await;
    let client = scene.consumer.client::<HopClient>();
    // Once the agent routes to A, one call with the foreign context (retries would add spans).
    hop(&client, &scene.b).await;
    let client = HopClient::new(client.client().with_metadata("traceparent", FOREIGN));
    let seen = client
        .hop(Some(scene.b.local_addr().to_string()))
        .await
        .unwrap();
    assert_eq!(seen, "4bf92f3577b34da6a3ce929d0e0e4736");
    let trace = TraceId::from_hex(&seen).unwrap();
    let spans = spans_of(trace, 6).await;
    let foreign = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    // The consumer sent the foreign context as it was: its own span and the agent's server
    // span are both children of the foreign span; the rest nests under the agent's.
    let under_foreign: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == foreign)
        .collect();
    assert_eq!(under_foreign.len(), 2, "{spans:#?}");
    let agent_server = under_foreign
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("the agent's server span");
    let agent_client = child_of(&spans, agent_server.span_context.span_id());
    let a_server = child_of(&spans, agent_client.span_context.span_id());
    let a_client = child_of(&spans, a_server.span_context.span_id());
    let b_server = child_of(&spans, a_client.span_context.span_id());
    check_rpc(b_server, SpanKind::Server, "hop");
}
