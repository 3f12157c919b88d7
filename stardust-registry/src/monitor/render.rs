//! Rendering a [`Snapshot`]: JSON for `/api/...` and Prometheus text for `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use stardust::discovery::api::LATENCY_BOUNDS_US;

use super::{
    BUCKETS, ERRORING_RATE, HISTORY_SLOT, HISTORY_SLOTS, InstanceStats, ServiceEntry, Snapshot,
    UNREACHABLE_HOLD, kind_name, quantile,
};
use crate::LoginStats;

/// Facts about the registry itself, shown in the console's header and in `/metrics`.
pub(crate) struct RegistryFacts {
    pub rpc_addr: SocketAddr,
    pub dev: bool,
    pub tls: bool,
    /// Where registrations live: `memory`, or the etcd URL of a registry with several nodes.
    pub store: String,
    /// This node's name in a shared store's entries.
    pub node: String,
    /// Whether the node follows its store (`Err(why)` otherwise).
    pub store_health: Result<(), String>,
    pub started: Instant,
    pub logins: LoginStats,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn age_ms(now: Instant, then: Instant) -> u64 {
    ms(now.saturating_duration_since(then))
}

/// Rounds a rate for JSON (three decimals is plenty, and keeps payloads short).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// An instance's health, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    /// Consumers report they cannot connect to it.
    Unreachable,
    /// No report within about two report intervals.
    Stale,
    /// Its last window (or its consumers' last windows) had errors on 5% of calls or more.
    Erroring,
    /// None of the above.
    Healthy,
}

impl Health {
    pub(crate) const ALL: [Health; 4] = [
        Health::Healthy,
        Health::Erroring,
        Health::Stale,
        Health::Unreachable,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Unreachable => "unreachable",
            Health::Stale => "stale",
            Health::Erroring => "erroring",
            Health::Healthy => "healthy",
        }
    }
}

/// An instance's health and the reasons for it.
fn health(stats: &InstanceStats, snap: &Snapshot) -> (Health, Vec<String>) {
    let now = snap.now;
    let mut health = Health::Healthy;
    let mut reasons = Vec::new();
    let unreachable = stats.unreachable_from(now);
    if !unreachable.is_empty() {
        health = health.min(Health::Unreachable);
        reasons.push(format!(
            "consumers cannot connect to it: {}",
            unreachable.join(", ")
        ));
    }
    let interval = if stats.window_ms > 0 {
        Duration::from_millis(stats.window_ms).clamp(Duration::from_millis(100), snap.lease_ttl)
    } else {
        snap.lease_ttl / 3
    };
    match stats.reported {
        None if now.saturating_duration_since(stats.registered) > snap.lease_ttl / 2 => {
            health = health.min(Health::Stale);
            reasons.push("no report since it registered".into());
        }
        None => reasons.push("awaiting its first report".into()),
        Some(at) => {
            let age = now.saturating_duration_since(at);
            if age > interval * 2 + Duration::from_secs(2) {
                health = health.min(Health::Stale);
                reasons.push(format!("no report for {:.1} s", age.as_secs_f64()));
            }
        }
    }
    let (calls, errors) = stats.methods.values().fold((0u64, 0u64), |(c, e), m| {
        (
            c.saturating_add(m.last.calls),
            e.saturating_add(m.last.errors),
        )
    });
    if calls > 0 && errors as f64 >= calls as f64 * ERRORING_RATE {
        health = health.min(Health::Erroring);
        reasons.push(format!(
            "{errors} of {calls} calls failed in its last report"
        ));
    }
    let (c_calls, c_errors) = stats
        .consumers
        .values()
        .flat_map(|c| c.sessions.values())
        .filter(|w| now.saturating_duration_since(w.at) < UNREACHABLE_HOLD)
        .fold((0u64, 0u64), |(c, e), w| {
            // Connect failures already make it `unreachable`.
            let errors = w.errors.saturating_sub(w.connect_errors);
            (c.saturating_add(w.calls), e.saturating_add(errors))
        });
    if c_calls > 0 && c_errors as f64 >= c_calls as f64 * ERRORING_RATE {
        health = health.min(Health::Erroring);
        reasons.push(format!(
            "consumers saw {c_errors} of {c_calls} calls fail recently"
        ));
    }
    (health, reasons)
}

// ---------------------------------------------------------------------------------------------
// JSON

#[derive(Serialize)]
pub(crate) struct Overview {
    registry: RegistryView,
    services: Vec<ServiceView>,
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

    fn add(&mut self, w: &super::WindowFigures) {
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

pub(crate) fn service_view(name: &str, entry: &ServiceEntry, snap: &Snapshot) -> ServiceView {
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
    let (calls_per_s, errors_per_s) = super::service_rate(entry);
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
    }
}

/// `/api/services`: the registry's facts and every service with its instances.
pub(crate) fn overview(snap: &Snapshot, facts: &RegistryFacts) -> Overview {
    let services: Vec<ServiceView> = snap
        .services
        .iter()
        .map(|(name, e)| service_view(name, e, snap))
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

#[derive(Serialize)]
pub(crate) struct HistoryView {
    /// Width of one sample.
    slot_ms: u64,
    now_ms: u64,
    services: BTreeMap<String, SeriesView>,
}

#[derive(Serialize)]
struct SeriesView {
    /// Start of the last sample's slot (Unix epoch ms); sample `i` of `n` starts
    /// `(n - 1 - i) * slot_ms` before it.
    end_ms: u64,
    calls_per_s: Vec<Option<f64>>,
    errors_per_s: Vec<Option<f64>>,
}

/// `/api/history[?minutes=M]`: calls/s and errors/s per service, one sample per slot.
pub(crate) fn history(snap: &Snapshot, minutes: Option<u64>) -> HistoryView {
    let slot_ms = ms(HISTORY_SLOT);
    let keep = minutes.map_or(HISTORY_SLOTS, |m| {
        ((m.saturating_mul(60_000) / slot_ms) as usize).clamp(1, HISTORY_SLOTS)
    });
    let services = snap
        .services
        .iter()
        .map(|(name, e)| {
            let h = &e.history;
            let skip = h.samples.len().saturating_sub(keep);
            let samples = h.samples.iter().skip(skip);
            (
                name.clone(),
                SeriesView {
                    end_ms: h.last_slot * slot_ms,
                    calls_per_s: samples.clone().map(|s| s.map(|s| round3(s.0))).collect(),
                    errors_per_s: samples.map(|s| s.map(|s| round3(s.1))).collect(),
                },
            )
        })
        .collect();
    HistoryView {
        slot_ms,
        now_ms: snap.now_ms,
        services,
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format 0.0.4

/// Escapes a label value: backslash, double quote and line feed.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `name="value",...` with values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

fn seconds_label(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `/metrics`.
pub(crate) fn prometheus(snap: &Snapshot, facts: &RegistryFacts) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let now = snap.now;
    let instances = || {
        snap.services
            .iter()
            .flat_map(|(name, e)| e.instances.values().map(move |s| (name.as_str(), s)))
    };
    let methods = || {
        instances().flat_map(|(service, s)| {
            s.methods
                .iter()
                .map(move |(m, stats)| (service, s.instance.endpoint.as_str(), m.as_str(), stats))
        })
    };

    family(
        &mut out,
        "stardust_calls_total",
        "counter",
        "Calls a provider instance completed, per method, since it registered (from its reports).",
    );
    for (service, instance, method, m) in methods() {
        let l = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let _ = writeln!(out, "stardust_calls_total{{{l}}} {}", m.calls);
    }
    family(
        &mut out,
        "stardust_errors_total",
        "counter",
        "Calls a provider instance completed with an error, per method and error kind.",
    );
    for (service, instance, method, m) in methods() {
        for (code, n) in &m.errors {
            let kind = kind_name(*code);
            let l = labels(&[
                ("service", service),
                ("method", method),
                ("instance", instance),
                ("kind", &kind),
            ]);
            let _ = writeln!(out, "stardust_errors_total{{{l}}} {n}");
        }
    }
    family(
        &mut out,
        "stardust_in_flight",
        "gauge",
        "Calls running on a provider instance at its last report, per method.",
    );
    for (service, instance, method, m) in methods() {
        let l = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let _ = writeln!(out, "stardust_in_flight{{{l}}} {}", m.last.in_flight);
    }
    family(
        &mut out,
        "stardust_call_duration_seconds",
        "histogram",
        "How long a provider instance took to serve calls, per method (request to response).",
    );
    for (service, instance, method, m) in methods() {
        let base = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let mut cumulative = 0u64;
        for (i, n) in m.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| seconds_label(*us));
            let _ = writeln!(
                out,
                "stardust_call_duration_seconds_bucket{{{base},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "stardust_call_duration_seconds_sum{{{base}}} {}",
            m.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "stardust_call_duration_seconds_count{{{base}}} {cumulative}"
        );
    }

    family(
        &mut out,
        "stardust_consumer_calls_total",
        "counter",
        "Calls consumers of an app made to a provider instance, as the consumers saw them.",
    );
    for (service, s) in instances() {
        for (app, c) in &s.consumers {
            let l = labels(&[
                ("consumer_app", app),
                ("service", service),
                ("instance", &s.instance.endpoint),
            ]);
            let _ = writeln!(out, "stardust_consumer_calls_total{{{l}}} {}", c.calls);
        }
    }
    family(
        &mut out,
        "stardust_consumer_errors_total",
        "counter",
        "Calls consumers of an app made to a provider instance that failed, per error kind \
         (Connect: the provider could not be reached).",
    );
    for (service, s) in instances() {
        for (app, c) in &s.consumers {
            for (code, n) in &c.errors {
                let kind = kind_name(*code);
                let l = labels(&[
                    ("consumer_app", app),
                    ("service", service),
                    ("instance", &s.instance.endpoint),
                    ("kind", &kind),
                ]);
                let _ = writeln!(out, "stardust_consumer_errors_total{{{l}}} {n}");
            }
        }
    }

    family(
        &mut out,
        "stardust_instances",
        "gauge",
        "Live (leased) instances per service; services that lost their last instance stay at 0 \
         for a few minutes.",
    );
    for (name, e) in &snap.services {
        let l = labels(&[("service", name)]);
        let _ = writeln!(out, "stardust_instances{{{l}}} {}", e.instances.len());
    }
    family(
        &mut out,
        "stardust_instance_info",
        "gauge",
        "Always 1: an instance's registration (app, service version, weight in its own gauge).",
    );
    for (service, s) in instances() {
        let i = &s.instance;
        let l = labels(&[
            ("service", service),
            ("instance", &i.endpoint),
            ("app", &i.app),
            ("version", &i.version),
            ("tls", if i.tls { "true" } else { "false" }),
        ]);
        let _ = writeln!(out, "stardust_instance_info{{{l}}} 1");
    }
    family(
        &mut out,
        "stardust_instance_weight",
        "gauge",
        "An instance's registered weight.",
    );
    for (service, s) in instances() {
        let l = labels(&[("service", service), ("instance", &s.instance.endpoint)]);
        let _ = writeln!(out, "stardust_instance_weight{{{l}}} {}", s.instance.weight);
    }
    family(
        &mut out,
        "stardust_instance_health",
        "gauge",
        "1 for an instance's current health state (healthy, erroring, stale, unreachable), 0 for \
         the others.",
    );
    for (service, s) in instances() {
        let (h, _) = health(s, snap);
        for state in Health::ALL {
            let l = labels(&[
                ("service", service),
                ("instance", &s.instance.endpoint),
                ("state", state.as_str()),
            ]);
            let _ = writeln!(
                out,
                "stardust_instance_health{{{l}}} {}",
                u8::from(state == h)
            );
        }
    }
    family(
        &mut out,
        "stardust_instance_lease_age_seconds",
        "gauge",
        "Seconds since an instance's lease was last renewed.",
    );
    for (service, s) in instances() {
        let l = labels(&[("service", service), ("instance", &s.instance.endpoint)]);
        let _ = writeln!(
            out,
            "stardust_instance_lease_age_seconds{{{l}}} {}",
            now.saturating_duration_since(s.renewed).as_secs_f64()
        );
    }

    // Process facts, per session: labelled by its endpoints (one series each), or by its
    // address for a process that registers nothing (a consumer).
    let mut processes: Vec<(String, String, &super::ProcessReport)> = Vec::new();
    for s in snap.sessions.values() {
        let Some(report) = &s.report else { continue };
        let mut endpoints: Vec<&str> = s.instances.iter().map(|(_, e)| e.as_str()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        if endpoints.is_empty() {
            processes.push((s.app.to_string(), s.peer.to_string(), report));
        }
        for e in endpoints {
            processes.push((s.app.to_string(), e.to_owned(), report));
        }
    }
    processes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    processes.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    type Fact = fn(&super::ProcessReport, Instant) -> Option<f64>;
    let facts_list: [(&str, &str, &str, Fact); 5] = [
        (
            "stardust_process_uptime_seconds",
            "gauge",
            "Seconds since the process started (from its last report).",
            |r, _| Some(r.uptime_ms as f64 / 1e3),
        ),
        (
            "stardust_process_in_flight",
            "gauge",
            "Calls the process was serving at its last report.",
            |r, _| Some(r.in_flight as f64),
        ),
        (
            "stardust_process_cpu_seconds_total",
            "counter",
            "CPU time (user + system) the process reported using since the registry first saw it.",
            |r, _| Some(r.cpu_ms_total as f64 / 1e3),
        ),
        (
            "stardust_process_resident_memory_bytes",
            "gauge",
            "The process's resident memory at its last report (absent when it does not report it).",
            |r, _| (r.rss_bytes > 0).then_some(r.rss_bytes as f64),
        ),
        (
            "stardust_process_report_age_seconds",
            "gauge",
            "Seconds since the process's last report.",
            |r, now| {
                r.at.map(|at| now.saturating_duration_since(at).as_secs_f64())
            },
        ),
    ];
    for (name, kind, help, get) in facts_list {
        family(&mut out, name, kind, help);
        for (app, instance, report) in &processes {
            let l = labels(&[("app", app), ("instance", instance)]);
            if let Some(v) = get(report, now) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    }

    family(
        &mut out,
        "stardust_registry_sessions",
        "gauge",
        "Logged-in registry connections.",
    );
    let _ = writeln!(out, "stardust_registry_sessions {}", snap.sessions.len());
    family(
        &mut out,
        "stardust_registry_logins_total",
        "counter",
        "Registry logins by outcome since it started.",
    );
    let l = facts.logins;
    for (outcome, n) in [
        ("succeeded", l.succeeded),
        ("failed", l.failed),
        ("throttled", l.throttled),
        ("busy", l.busy),
    ] {
        let _ = writeln!(
            out,
            "stardust_registry_logins_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    family(
        &mut out,
        "stardust_registry_store_up",
        "gauge",
        "1 while the registry follows its store (always, in memory); 0 while a shared store \
         (etcd) cannot be reached or watched.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_store_up {}",
        u8::from(facts.store_health.is_ok())
    );
    family(
        &mut out,
        "stardust_registry_uptime_seconds",
        "gauge",
        "Seconds since the registry started.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_uptime_seconds {}",
        now.saturating_duration_since(facts.started).as_secs_f64()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(
            labels(&[("service", "s\"1"), ("method", "m")]),
            r#"service="s\"1",method="m""#
        );
    }

    #[test]
    fn le_labels_are_seconds() {
        assert_eq!(seconds_label(25), "0.000025");
        assert_eq!(seconds_label(1_000_000), "1");
        assert_eq!(seconds_label(2_500_000), "2.5");
    }
}
