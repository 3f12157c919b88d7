//! An injected fault is marked in the call's trace span (field `fault`), so whoever reads the
//! trace of a failed or slow call sees a drill, not an outage. (A process of its own: it
//! installs a global `tracing` subscriber.)

#[path = "common/canary_service.rs"]
mod canary;
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use canary::*;
use parking_lot::Mutex;
use stardust::traffic::FaultAction;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// A span's name and fields.
type Span = (String, BTreeMap<String, String>);

/// Every span's name and fields (recorded later too), by id.
static SPANS: Mutex<BTreeMap<u64, Span>> = Mutex::new(BTreeMap::new());

/// Each span's metadata, for `current_span`.
static META: Mutex<BTreeMap<u64, &'static Metadata<'static>>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The spans entered on this thread, innermost last (what `Span::current` asks for).
    static ENTERED: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

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
        let id = self.0.fetch_add(1, Ordering::Relaxed);
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        SPANS
            .lock()
            .insert(id, (span.metadata().name().to_owned(), fields));
        META.lock().insert(id, span.metadata());
        Id::from_u64(id)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = SPANS.lock().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, id: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(id.into_u64()));
    }
    fn exit(&self, id: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(i) = e.iter().rposition(|x| *x == id.into_u64()) {
                e.remove(i);
            }
        });
    }
    fn current_span(&self) -> tracing_core::span::Current {
        match ENTERED.with(|e| e.borrow().last().copied()) {
            Some(id) => match META.lock().get(&id) {
                Some(meta) => tracing_core::span::Current::new(Id::from_u64(id), meta),
                None => tracing_core::span::Current::none(),
            },
            None => tracing_core::span::Current::none(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_fault_is_marked_in_the_call_span() {
    tracing::subscriber::set_global_default(Recorder(AtomicU64::new(1))).unwrap();
    let mut s = Scene::start(WEB, |b| b).await;
    let (client, admin) = (&s.client, &mut s.admin);
    let abort = FaultAction::Abort {
        error: "Internal".into(),
    };
    admin.set_fault(fault("drill", 100.0, abort)).await;
    admin.synced(&[client]).await;
    SPANS.lock().clear();
    let err = client.which().await.unwrap_err();
    assert!(err.message().contains("fault `drill`"), "{err}");
    // Probes take no fault (the test's faults are on `which` only); the probe route decides
    // whether this one reaches a provider.
    let _ = client.probe().await;
    let spans = SPANS.lock().clone();
    let calls: Vec<_> = spans
        .values()
        .filter(|(name, _)| name == "stardust.call")
        .map(|(_, fields)| fields)
        .collect();
    let which = calls
        .iter()
        .find(|f| f["method"] == "which")
        .expect("a span");
    assert_eq!(
        which.get("fault").map(String::as_str),
        Some("drill"),
        "{calls:?}"
    );
    let probe = calls
        .iter()
        .find(|f| f["method"] == "probe")
        .expect("a span");
    assert_eq!(probe.get("fault"), None, "{calls:?}");
}
