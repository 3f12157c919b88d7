//! The JSON views of services and instances (`/api/services`, `/api/instances`,
//! `/api/services/{name}`): per instance its health, process facts, last window, totals,
//! methods and consumers; per service the same added up over its instances.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use stardust::discovery::api::{Exemplar, VersionDescription};

use super::health::{Health, health};
use super::traffic::{TrafficSummary, TrafficView, summary, traffic_view};
use super::{RegistryFacts, age_ms, ms, round3};
use crate::monitor::{
    BUCKETS, InstanceStats, ServiceEntry, Snapshot, UNREACHABLE_HOLD, WindowFigures, kind_name,
    quantile, service_rate,
};

#[derive(Serialize)]
pub(crate) struct Overview {
    registry: RegistryView,
    services: Vec<ServiceView>,
    /// The traffic rules' revision, where faults are on, and the rules of services not listed.
    traffic: TrafficSummary,
}

#[derive(Serialize)]
struct RegistryView {
    version: &'static str,
    listen: String,
    dev: bool,
    tls: bool,
    store: String,
    node: String,
    uptime_ms: u64,
    now_ms: u64,
    lease_ttl_ms: u64,
    sessions: usize,
    instances: usize,
    logins: LoginsView,
}

#[derive(Serialize)]
struct LoginsView {
    succeeded: u64,
    failed: u64,
    throttled: u64,
    busy: u64,
}

#[derive(Serialize)]
pub(crate) struct ServiceView {
    name: String,
    /// healthy | degraded (some instances not healthy) | unhealthy (none healthy) | down (no
    /// instances)
    health: &'static str,
    instance_count: usize,
    /// Milliseconds since its last instance went (only when it has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    gone_ms: Option<u64>,
    calls_total: u64,
    errors_total: u64,
    /// Calls per second over the instances' last report windows.
    calls_per_s: f64,
    errors_per_s: f64,
    /// Errors / calls over the last windows (0 without calls).
    error_rate: f64,
    in_flight: u64,
    /// Latency over the last windows, all methods and instances (`null` without calls).
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    instances: Vec<InstanceView>,
    /// Its traffic rules (routes, faults) and the faults consumers injected.
    traffic: TrafficView,
    /// The service's doc comment, as its providers described it (newest version's).
    docs: String,
    /// Its methods as its providers described them (every described version's, by name).
    methods: Vec<DescribedMethod>,
}

/// One method as providers described it.
#[derive(Serialize)]
struct DescribedMethod {
    name: String,
    /// As written in Rust: `add(a: i64, b: i64) -> i64`.
    signature: String,
    docs: String,
    idempotent: bool,
    /// The versions that have it, lowest first.
    versions: Vec<String>,
}

/// The methods of every described version (the newest version's signature and docs first).
fn described_methods(described: &[VersionDescription]) -> (String, Vec<DescribedMethod>) {
    let mut docs = String::new();
    let mut out: Vec<DescribedMethod> = Vec::new();
    for v in described.iter().rev() {
        let Some(d) = &v.description else { continue };
        if docs.is_empty() {
            docs = d.docs.clone();
        }
        for m in &d.methods {
            match out.iter_mut().find(|o| o.name == m.name) {
                Some(o) => o.versions.insert(0, v.version.clone()),
                None => out.push(DescribedMethod {
                    name: m.name.clone(),
                    signature: m.signature(),
                    docs: m.docs.clone(),
                    idempotent: m.idempotent,
                    versions: vec![v.version.clone()],
                }),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (docs, out)
}

#[derive(Serialize)]
pub(crate) struct InstanceView {
    service: String,
    endpoint: String,
    app: String,
    version: String,
    weight: u32,
    tags: BTreeMap<String, String>,
    tls: bool,
    health: Health,
    health_reasons: Vec<String>,
    /// Consumer apps that could not reach it recently.
    unreachable_from: Vec<String>,
    registered_ms: u64,
    /// Since its lease was last renewed (registration or heartbeat).
    lease_age_ms: u64,
    /// Since a report last covered it (`null` before the first).
    report_age_ms: Option<u64>,
    process: Option<ProcessView>,
    last: WindowView,
    totals: TotalsView,
    methods: Vec<MethodView>,
    consumers: Vec<ConsumerView>,
}

#[derive(Serialize)]
struct ProcessView {
    /// The process's address as the registry sees it.
    peer: String,
    /// Since it logged in to the registry.
    session_ms: u64,
    uptime_ms: u64,
    /// The framework version it runs.
    software_version: String,
    in_flight: u64,
    /// CPU time over the last window, in percent of one core (`null` when not reported).
    cpu_percent: Option<f64>,
    cpu_ms_total: u64,
    /// Resident memory (`null` when not reported).
    rss_bytes: Option<u64>,
    reports: u64,
}

#[derive(Serialize, Default)]
struct WindowView {
    window_ms: u64,
    calls: u64,
    errors: u64,
    calls_per_s: f64,
    errors_per_s: f64,
    error_rate: f64,
    in_flight: u64,
    p50_us: Option<u64>,
    p90_us: Option<u64>,
    p99_us: Option<u64>,
    max_us: Option<u64>,
}

#[derive(Serialize, Default)]
struct TotalsView {
    calls: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct MethodView {
    method: String,
    totals: TotalsView,
    latency_sum_us: u64,
    last: WindowView,
    /// The slowest call (with a sampled trace) of the latest report window that had one.
    slowest: Option<ExemplarView>,
    /// The latest failed call with a sampled trace.
    last_failure: Option<ExemplarView>,
}

/// A call picked out by a report, for the console to link to the trace UI.
#[derive(Serialize)]
struct ExemplarView {
    /// W3C trace id: 32 lowercase hex digits.
    trace_id: String,
    latency_us: u64,
    /// The error kind of a failed call.
    error: Option<String>,
    /// Since the report that carried it.
    age_ms: u64,
}

fn exemplar_view(e: &Option<(Exemplar, Instant)>, now: Instant) -> Option<ExemplarView> {
    e.as_ref().map(|(e, at)| ExemplarView {
        trace_id: e.trace_id.clone(),
        latency_us: e.latency_us,
        error: e.error.map(kind_name),
        age_ms: age_ms(now, *at),
    })
}

#[derive(Serialize)]
struct ConsumerView {
    app: String,
    calls_total: u64,
    errors_total: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// Consumer sessions that reported on it within the last 30 s.
    recent_sessions: usize,
    /// Their last windows, added up.
    recent_calls: u64,
    recent_errors: u64,
    recent_connect_errors: u64,
    /// Their calls per second (each over its own window).
    recent_calls_per_s: f64,
    /// The slowest p50 and p99 among them, as the consumers measured (`null` without calls).
    recent_p50_us: Option<u64>,
    recent_p99_us: Option<u64>,
    unreachable: bool,
}

fn totals(calls: u64, errors: &BTreeMap<u16, u64>) -> TotalsView {
    TotalsView {
        calls,
        errors: errors.values().fold(0u64, |a, n| a.saturating_add(*n)),
        errors_by_kind: errors.iter().map(|(c, n)| (kind_name(*c), *n)).collect(),
    }
}

fn rate(n: u64, window_ms: u64) -> f64 {
    if window_ms == 0 {
        0.0
    } else {
        round3(n as f64 * 1000.0 / window_ms as f64)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0
    }
}

/// Latency of several windows together: the one window's own figures when only one had calls
/// (exact), else estimated from the merged buckets.
struct Merge {
    buckets: [u64; BUCKETS],
    max_us: u64,
    windows: u32,
    single: Option<(u64, u64, u64)>,
}

impl Merge {
    fn new() -> Merge {
        Merge {
            buckets: [0; BUCKETS],
            max_us: 0,
            windows: 0,
            single: None,
        }
    }

    fn add(&mut self, w: &WindowFigures) {
        if w.calls == 0 {
            return;
        }
        self.windows += 1;
        self.single = Some((w.p50_us, w.p90_us, w.p99_us));
        for (t, n) in self.buckets.iter_mut().zip(&w.buckets) {
            *t = t.saturating_add(*n);
        }
        self.max_us = self.max_us.max(w.max_us);
    }

    /// (p50, p90, p99, max)
    fn get(&self) -> (Option<u64>, Option<u64>, Option<u64>, Option<u64>) {
        match (self.windows, self.single) {
            (0, _) => (None, None, None, None),
            (1, Some((p50, p90, p99))) => (Some(p50), Some(p90), Some(p99), Some(self.max_us)),
            _ => (
                quantile(&self.buckets, 0.5, self.max_us),
                quantile(&self.buckets, 0.9, self.max_us),
                quantile(&self.buckets, 0.99, self.max_us),
                Some(self.max_us),
            ),
        }
    }
}

fn instance_view(service: &str, stats: &InstanceStats, snap: &Snapshot) -> InstanceView {
    let now = snap.now;
    let (health, health_reasons) = health(stats, snap);
    let process = snap.sessions.get(&stats.session).map(|s| {
        let r = s.report.clone().unwrap_or_default();
        ProcessView {
            peer: s.peer.to_string(),
            session_ms: age_ms(now, s.since),
            uptime_ms: r.uptime_ms,
            software_version: r.version,
            in_flight: r.in_flight,
            cpu_percent: (r.window_ms > 0 && r.reports > 0 && (r.cpu_ms > 0 || r.rss_bytes > 0))
                .then(|| (r.cpu_ms as f64 * 1000.0 / r.window_ms as f64).round() / 10.0),
            cpu_ms_total: r.cpu_ms_total,
            rss_bytes: (r.rss_bytes > 0).then_some(r.rss_bytes),
            reports: r.reports,
        }
    });
    let mut merge = Merge::new();
    let mut last = WindowView {
        window_ms: stats.window_ms,
        ..WindowView::default()
    };
    let mut total_errors = BTreeMap::<u16, u64>::new();
    let mut total_calls = 0u64;
    let methods = stats
        .methods
        .iter()
        .map(|(name, m)| {
            merge.add(&m.last);
            last.calls += m.last.calls;
            last.errors += m.last.errors;
            last.in_flight += m.last.in_flight;
            total_calls = total_calls.saturating_add(m.calls);
            for (c, n) in &m.errors {
                *total_errors.entry(*c).or_default() += n;
            }
            let mut one = Merge::new();
            one.add(&m.last);
            let (p50_us, p90_us, p99_us, max_us) = one.get();
            MethodView {
                method: name.clone(),
                totals: totals(m.calls, &m.errors),
                latency_sum_us: m.sum_us,
                last: WindowView {
                    window_ms: stats.window_ms,
                    calls: m.last.calls,
                    errors: m.last.errors,
                    calls_per_s: rate(m.last.calls, stats.window_ms),
                    errors_per_s: rate(m.last.errors, stats.window_ms),
                    error_rate: ratio(m.last.errors, m.last.calls),
                    in_flight: m.last.in_flight,
                    p50_us,
                    p90_us,
                    p99_us,
                    max_us,
                },
                slowest: exemplar_view(&m.slowest, now),
                last_failure: exemplar_view(&m.failed, now),
            }
        })
        .collect();
    (last.p50_us, last.p90_us, last.p99_us, last.max_us) = merge.get();
    last.calls_per_s = rate(last.calls, stats.window_ms);
    last.errors_per_s = rate(last.errors, stats.window_ms);
    last.error_rate = ratio(last.errors, last.calls);
    let consumers = stats
        .consumers
        .iter()
        .map(|(app, c)| {
            let recent: Vec<_> = c
                .sessions
                .values()
                .filter(|w| now.saturating_duration_since(w.at) < UNREACHABLE_HOLD)
                .collect();
            ConsumerView {
                app: app.clone(),
                calls_total: c.calls,
                errors_total: c.errors.values().sum(),
                errors_by_kind: c.errors.iter().map(|(k, n)| (kind_name(*k), *n)).collect(),
                recent_sessions: recent.len(),
                recent_calls: recent.iter().map(|w| w.calls).sum(),
                recent_errors: recent.iter().map(|w| w.errors).sum(),
                recent_connect_errors: recent.iter().map(|w| w.connect_errors).sum(),
                recent_calls_per_s: round3(
                    recent
                        .iter()
                        .map(|w| rate(w.calls, w.window_ms))
                        .sum::<f64>(),
                ),
                recent_p50_us: recent
                    .iter()
                    .filter(|w| w.calls > 0)
                    .map(|w| w.p50_us)
                    .max(),
                recent_p99_us: recent
                    .iter()
                    .filter(|w| w.calls > 0)
                    .map(|w| w.p99_us)
                    .max(),
                unreachable: recent.iter().any(|w| w.unreachable()),
            }
        })
        .collect();
    let i = &stats.instance;
    InstanceView {
        service: service.to_owned(),
        endpoint: i.endpoint.clone(),
        app: i.app.clone(),
        version: i.version.clone(),
        weight: i.weight,
        tags: i.tags.clone(),
        tls: i.tls,
        health,
        health_reasons,
        unreachable_from: stats
            .unreachable_from(now)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        registered_ms: age_ms(now, stats.registered),
        lease_age_ms: age_ms(now, stats.renewed),
        report_age_ms: stats.reported.map(|at| age_ms(now, at)),
        process,
        last,
        totals: totals(total_calls, &total_errors),
        methods,
        consumers,
    }
}

pub(crate) fn service_view(
    name: &str,
    entry: &ServiceEntry,
    snap: &Snapshot,
    described: &[VersionDescription],
) -> ServiceView {
    let (docs, methods) = described_methods(described);
    let instances: Vec<InstanceView> = entry
        .instances
        .values()
        .map(|s| instance_view(name, s, snap))
        .collect();
    let mut merge = Merge::new();
    for stats in entry.instances.values() {
        for m in stats.methods.values() {
            merge.add(&m.last);
        }
    }
    let (p50_us, _, p99_us, _) = merge.get();
    let healthy = instances
        .iter()
        .filter(|i| i.health == Health::Healthy)
        .count();
    let health = match (instances.len(), healthy) {
        (0, _) => "down",
        (n, h) if n == h => "healthy",
        (_, 0) => "unhealthy",
        _ => "degraded",
    };
    let (calls_per_s, errors_per_s) = service_rate(entry);
    let sum = |f: fn(&InstanceView) -> u64| instances.iter().map(f).sum::<u64>();
    let (last_calls, last_errors) = (sum(|i| i.last.calls), sum(|i| i.last.errors));
    ServiceView {
        name: name.to_owned(),
        health,
        instance_count: instances.len(),
        gone_ms: entry.gone.map(|at| age_ms(snap.now, at)),
        calls_total: sum(|i| i.totals.calls),
        errors_total: sum(|i| i.totals.errors),
        calls_per_s: round3(calls_per_s),
        errors_per_s: round3(errors_per_s),
        error_rate: ratio(last_errors, last_calls),
        in_flight: sum(|i| i.last.in_flight),
        p50_us,
        p99_us,
        instances,
        traffic: traffic_view(name, snap),
        docs,
        methods,
    }
}

/// `/api/services`: the registry's facts and every service with its instances.
pub(crate) fn overview(
    snap: &Snapshot,
    facts: &RegistryFacts,
    describe: &dyn Fn(&str) -> Vec<VersionDescription>,
) -> Overview {
    let services: Vec<ServiceView> = snap
        .services
        .iter()
        .map(|(name, e)| service_view(name, e, snap, &describe(name)))
        .collect();
    Overview {
        registry: RegistryView {
            version: env!("CARGO_PKG_VERSION"),
            listen: facts.rpc_addr.to_string(),
            dev: facts.dev,
            tls: facts.tls,
            store: facts.store.clone(),
            node: facts.node.clone(),
            uptime_ms: age_ms(snap.now, facts.started),
            now_ms: snap.now_ms,
            lease_ttl_ms: ms(snap.lease_ttl),
            sessions: snap.sessions.len(),
            instances: services.iter().map(|s| s.instance_count).sum(),
            logins: LoginsView {
                succeeded: facts.logins.succeeded,
                failed: facts.logins.failed,
                throttled: facts.logins.throttled,
                busy: facts.logins.busy,
            },
        },
        traffic: summary(snap, |s| snap.services.contains_key(s)),
        services,
    }
}

/// `/api/instances`: every live instance, flat.
pub(crate) fn instances(snap: &Snapshot) -> Vec<InstanceView> {
    snap.services
        .iter()
        .flat_map(|(name, e)| e.instances.values().map(move |s| (name, s)))
        .map(|(name, s)| instance_view(name, s, snap))
        .collect()
}
