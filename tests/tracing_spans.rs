//! Every call has a `tracing` span on both sides carrying service, method and trace id (and the
//! peer, on the provider), so one request can be followed across processes in the logs: a call
//! a handler makes carries the same trace id as the call it serves. A streaming call has its
//! spans too.

mod common;
#[path = "common/logs_service.rs"]
mod logs_service;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The spans created in this process: name and fields.
static SPANS: Mutex<Vec<(String, BTreeMap<String, String>)>> = Mutex::new(Vec::new());

/// Records every new span's name and fields; ignores everything else.
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

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        SPANS
            .lock()
            .push((span.metadata().name().to_owned(), fields));
        Id::from_u64(self.0.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_spans_carry_service_method_peer_and_one_trace_id_across_hops() {
    tracing::subscriber::set_global_default(Recorder(AtomicU64::new(1))).unwrap();
    let (front, _c1) = start_server().await;
    let (back, _c2) = start_server().await;
    let client = CalcClient::connect(front.local_addr()).await.unwrap();
    // front's handler calls back: two hops, one trace.
    let info = client.relay(back.local_addr().to_string()).await.unwrap();

    let spans = SPANS.lock().clone();
    let served: Vec<_> = spans
        .iter()
        .filter(|(n, _)| n == "stardust.serve")
        .collect();
    let called: Vec<_> = spans.iter().filter(|(n, _)| n == "stardust.call").collect();
    assert_eq!(served.len(), 2, "{spans:?}");
    assert_eq!(called.len(), 2, "{spans:?}");
    let trace = &served[0].1["trace_id"];
    assert_eq!(trace.len(), 16, "16 hex digits: {trace}");
    assert_eq!(format!("{:016x}", info.trace_id), *trace);
    for (_, fields) in served.iter().chain(called.iter()) {
        assert_eq!(&fields["trace_id"], trace, "{spans:?}");
        assert_eq!(fields["service"], "test.Calc");
    }
    let methods: Vec<&str> = served.iter().map(|(_, f)| f["method"].as_str()).collect();
    assert_eq!(methods, ["relay", "context"]);
    for (_, fields) in &served {
        assert!(fields["peer"].contains("127.0.0.1"), "{fields:?}");
    }

    // A streaming call: a client span and a server span, one trace id between them.
    let logs = stardust::Server::builder()
        .allow_anonymous()
        .serve(logs_service::LogsServer::new(
            logs_service::LogsImpl::default(),
        ))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let tail = logs_service::LogsClient::connect(logs.local_addr())
        .await
        .unwrap();
    let lines: Vec<_> = futures::StreamExt::collect(tail.tail("f".into(), 3).await.unwrap()).await;
    assert_eq!(lines.len(), 3);
    let spans = SPANS.lock().clone();
    let of = |name: &str| -> Vec<BTreeMap<String, String>> {
        spans
            .iter()
            .filter(|(n, f)| n == name && f.get("method").map(String::as_str) == Some("tail"))
            .map(|(_, f)| f.clone())
            .collect()
    };
    let (called, served) = (of("stardust.call"), of("stardust.serve"));
    assert_eq!((called.len(), served.len()), (1, 1), "{spans:?}");
    assert_eq!(called[0]["service"], "Logs");
    assert_eq!(called[0]["trace_id"], served[0]["trace_id"], "{spans:?}");
}
