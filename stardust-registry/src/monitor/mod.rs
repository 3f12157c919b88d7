//! Monitoring: the figures in status reports, folded into per-instance totals, and served over
//! HTTP (`/metrics`, `/api/...`, the console at `/`).
//!
//! Every heartbeat carries a [`Status`]: the sender's figures for the window since its previous
//! report (per service and method for what it served, per provider for what it called) and a few
//! process facts. [`Monitor::fold`] adds them to:
//!
//! * per instance (service + endpoint) and method, cumulative since the instance registered:
//!   calls, errors by kind, latency bucket counts and sum (a Prometheus histogram), the last
//!   window's figures (calls/s, errors, in flight, p50/p90/p99/max), and the trace ids of the
//!   latest reported slowest call and failure (exemplars, for the console's trace links);
//! * per instance and consumer app, what the consumers saw of it (calls, errors by kind), and per
//!   consumer session its last window: consumers that could not reach an instance make it
//!   `unreachable` even while the instance itself reports healthy figures;
//! * per session (process), its latest facts: uptime, software version, in flight, CPU, memory;
//! * per service, a short history of calls/s and errors/s (sample-and-hold per
//!   [`HISTORY_SLOT`], [`HISTORY_SLOTS`] of them) for the console's chart;
//! * per service, fault and kind, the calls consumers delayed or failed on purpose as the
//!   traffic rules told them (`Status.faults`), since the registry started ([`faults`]).
//!
//! Instances enter when they register and leave with their lease (deregistered, expired, or
//! their session ended): the registry calls [`Monitor::registered`] and [`Monitor::removed`]
//! while holding its own state lock, so the monitor's instances are exactly the live leases. A
//! service whose last instance left stays listed (with no instances) for [`GONE_KEEP`], so an
//! operator sees it go down rather than vanish.
//!
//! Everything sits behind one short lock, never held across an await; the HTTP side copies what
//! it needs ([`Monitor::snapshot`]) and renders outside it. Every table is bounded.

mod discovery_metrics;
mod faults;
mod fold;
pub(crate) mod http;
mod registry_state;
pub(crate) mod render;

pub(crate) use faults::FaultTotals;
pub use registry_state::LoginStats;
pub(crate) use registry_state::{FanoutStats, RegistryState};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use stardust::ErrorKind;
use stardust::discovery::api::{
    ErrorCount, Exemplar, Instance, LATENCY_BOUNDS_US, Latency, Status,
};
use stardust::traffic::Rules;

/// Latency buckets: one per bound in [`LATENCY_BOUNDS_US`], and the overflow bucket.
pub(crate) const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;
/// The history's resolution: one calls/s sample per service per slot.
pub(crate) const HISTORY_SLOT: Duration = Duration::from_secs(2);
/// Slots of history kept per service (15 minutes).
pub(crate) const HISTORY_SLOTS: usize = 450;
/// A slot without a report holds the previous sample for up to this many slots (reports come
/// every few seconds; a rate stays true until the next one). Longer gaps stay empty.
const HOLD_SLOTS: u64 = 15;
/// How stale a [`Monitor::shared_snapshot`] may be.
pub(crate) const SHARED_SNAPSHOT_AGE: Duration = Duration::from_secs(1);
/// How long a service without instances stays listed (with its history).
pub(crate) const GONE_KEEP: Duration = Duration::from_secs(300);
/// Services without instances kept at most (the oldest go first).
const MAX_GONE_SERVICES: usize = 1000;
/// Methods tracked per instance; figures for further methods are dropped.
const MAX_METHODS: usize = 512;
/// Error kinds tracked per method or consumer; further kinds are counted as `Internal`.
const MAX_ERROR_KINDS: usize = 32;
/// Consumer apps tracked per instance; further apps are not tracked.
const MAX_CONSUMER_APPS: usize = 256;
/// Consumer sessions whose last window is kept per consumer app and instance.
const MAX_CONSUMER_SESSIONS: usize = 64;
/// Longest method name accepted from a report.
const MAX_METHOD_LEN: usize = 256;
/// A consumer's report that it could not reach an instance counts for this long.
pub(crate) const UNREACHABLE_HOLD: Duration = Duration::from_secs(30);
/// An instance whose last window failed at least this share of its calls is `erroring`.
pub(crate) const ERRORING_RATE: f64 = 0.05;

/// Error kinds that mean the consumer could not reach the provider.
fn is_connect_failure(code: u16) -> bool {
    code == ErrorKind::Connect.code() || code == ErrorKind::ConnectionClosed.code()
}

/// The name of an error kind, for labels and JSON: `DeadlineExceeded`, or `code42` for a code
/// this version does not know.
pub(crate) fn kind_name(code: u16) -> String {
    let kind = ErrorKind::from_code(code);
    if kind.code() == code {
        format!("{kind:?}")
    } else {
        format!("code{code}")
    }
}

/// The registry's monitoring state (see the module docs).
pub(crate) struct Monitor {
    inner: Mutex<Inner>,
    /// The latest [`Monitor::shared_snapshot`].
    shared: Mutex<Option<Arc<Snapshot>>>,
    lease_ttl: Duration,
    /// Wall clock at a known instant: history timestamps are derived from monotonic time.
    epoch: (Instant, SystemTime),
}

#[derive(Default)]
struct Inner {
    services: BTreeMap<String, ServiceEntry>,
    sessions: HashMap<u64, SessionFacts>,
    faults: FaultTotals,
}

/// The instance `endpoint` of `service`, if `session` holds its lease.
fn own_instance<'a>(
    services: &'a mut BTreeMap<String, ServiceEntry>,
    service: &str,
    endpoint: &str,
    session: u64,
) -> Option<&'a mut InstanceStats> {
    services
        .get_mut(service)
        .and_then(|e| e.instances.get_mut(endpoint))
        .filter(|stats| stats.session == session)
}

/// One service: its live instances, its history, and when it lost its last instance.
#[derive(Clone, Default)]
pub(crate) struct ServiceEntry {
    pub instances: BTreeMap<String, InstanceStats>,
    pub history: History,
    pub gone: Option<Instant>,
    /// The sum of its instances' `rate`s, kept as they change: a heartbeat or a removal costs
    /// the instances it touches, not the service's whole list.
    pub rate_sum: (f64, f64),
}

/// One live instance (a lease) and its figures.
#[derive(Clone)]
pub(crate) struct InstanceStats {
    pub instance: Instance,
    pub session: u64,
    pub registered: Instant,
    /// When its lease was last renewed (registration or heartbeat).
    pub renewed: Instant,
    /// When a report last covered it.
    pub reported: Option<Instant>,
    /// The last report's window.
    pub window_ms: u64,
    /// Calls/s and errors/s over the last window (kept up to date by `fold`).
    pub rate: (f64, f64),
    pub methods: BTreeMap<String, MethodStats>,
    /// What consumers saw of it, by consumer app.
    pub consumers: BTreeMap<String, ConsumerStats>,
}

/// One method of one instance.
#[derive(Clone, Default)]
pub(crate) struct MethodStats {
    pub calls: u64,
    pub errors: BTreeMap<u16, u64>,
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
    /// Stream items its streaming calls received and sent, since it registered.
    pub items_in: u64,
    pub items_out: u64,
    /// The last report's window (zero when the method was absent from it).
    pub last: WindowFigures,
    /// The slowest traced call of the latest window that had one, and when it was reported.
    pub slowest: Option<(Exemplar, Instant)>,
    /// The latest traced failure, and when it was reported.
    pub failed: Option<(Exemplar, Instant)>,
}

/// Figures of one report window.
#[derive(Clone, Default)]
pub(crate) struct WindowFigures {
    pub calls: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub buckets: [u64; BUCKETS],
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What one consumer app saw of one instance.
#[derive(Clone, Default)]
pub(crate) struct ConsumerStats {
    pub calls: u64,
    pub errors: BTreeMap<u16, u64>,
    /// The last window of each consumer session that reported on the instance.
    pub sessions: BTreeMap<u64, ConsumerWindow>,
}

/// One consumer session's last window about one instance.
#[derive(Clone)]
pub(crate) struct ConsumerWindow {
    pub at: Instant,
    pub window_ms: u64,
    pub calls: u64,
    pub errors: u64,
    /// Calls that could not reach the provider (`Connect`, `ConnectionClosed`).
    pub connect_errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl ConsumerWindow {
    /// The consumer could not reach the instance in this window (at least half its calls failed
    /// to connect).
    pub fn unreachable(&self) -> bool {
        self.connect_errors > 0 && self.connect_errors * 2 >= self.calls
    }
}

/// A logged-in session (one process) and its latest report.
#[derive(Clone)]
pub(crate) struct SessionFacts {
    pub app: Arc<str>,
    pub peer: SocketAddr,
    pub since: Instant,
    /// Its live instances, as (service, endpoint).
    pub instances: Vec<(String, String)>,
    pub report: Option<ProcessReport>,
}

/// The process facts of a session's last report.
#[derive(Clone, Default)]
pub(crate) struct ProcessReport {
    pub at: Option<Instant>,
    pub uptime_ms: u64,
    pub version: String,
    pub in_flight: u64,
    pub window_ms: u64,
    pub cpu_ms: u64,
    pub cpu_ms_total: u64,
    pub rss_bytes: u64,
    /// Unbound tokens the process's providers accepted since it started (its last report).
    pub unbound_tokens_accepted: u64,
    pub reports: u64,
}

/// Calls/s and errors/s of a service, one sample per [`HISTORY_SLOT`].
#[derive(Clone, Default)]
pub(crate) struct History {
    /// The slot of the last sample (slot numbers count [`HISTORY_SLOT`]s since the Unix epoch).
    pub last_slot: u64,
    /// Samples ending at `last_slot`, oldest first; `None` where nothing was known.
    pub samples: VecDeque<Option<(f64, f64)>>,
}

impl History {
    fn record(&mut self, slot: u64, sample: (f64, f64)) {
        if self.samples.is_empty() || slot > self.last_slot + HISTORY_SLOTS as u64 {
            self.samples.clear();
        } else if slot < self.last_slot {
            return; // the clock went back: keep what we have
        } else if slot > self.last_slot {
            let held = self.samples.back().copied().flatten();
            for gap in 1..slot - self.last_slot {
                self.samples
                    .push_back(if gap <= HOLD_SLOTS { held } else { None });
            }
            self.samples.push_back(None);
        }
        if self.samples.is_empty() {
            self.samples.push_back(None);
        }
        *self.samples.back_mut().expect("not empty") = Some(sample);
        self.last_slot = slot;
        while self.samples.len() > HISTORY_SLOTS {
            self.samples.pop_front();
        }
    }
}

/// A copy of the monitor's state, rendered outside the lock.
pub(crate) struct Snapshot {
    pub now: Instant,
    pub now_ms: u64,
    pub lease_ttl: Duration,
    pub services: BTreeMap<String, ServiceEntry>,
    pub sessions: HashMap<u64, SessionFacts>,
    /// The injected-fault totals.
    pub faults: FaultTotals,
    /// The traffic rules: empty here, filled in by the HTTP side (from the registry, outside
    /// the monitor's lock) where it renders them.
    pub rules: Rules,
}

impl Monitor {
    pub(crate) fn new(lease_ttl: Duration) -> Monitor {
        Monitor {
            inner: Mutex::new(Inner::default()),
            shared: Mutex::new(None),
            lease_ttl,
            epoch: (Instant::now(), SystemTime::now()),
        }
    }

    fn epoch_ms(&self, now: Instant) -> u64 {
        let wall = self.epoch.1 + now.saturating_duration_since(self.epoch.0);
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn slot(&self, now: Instant) -> u64 {
        self.epoch_ms(now) / HISTORY_SLOT.as_millis() as u64
    }

    /// A session logged in. (Called under the registry's state lock.)
    pub(crate) fn session_started(&self, id: u64, app: Arc<str>, peer: SocketAddr, now: Instant) {
        self.inner.lock().sessions.insert(
            id,
            SessionFacts {
                app,
                peer,
                since: now,
                instances: Vec::new(),
                report: None,
            },
        );
    }

    /// A session ended (its instances are removed separately). (Under the state lock.)
    pub(crate) fn session_ended(&self, id: u64) {
        self.inner.lock().sessions.remove(&id);
    }

    /// An instance registered, or registered again (its figures carry on). (Under the state
    /// lock.)
    pub(crate) fn registered(&self, instance: &Instance, session: u64, now: Instant) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let entry = inner.services.entry(instance.service.clone()).or_default();
        entry.gone = None;
        let key = (instance.service.clone(), instance.endpoint.clone());
        match entry.instances.get_mut(&instance.endpoint) {
            Some(stats) => {
                stats.instance = instance.clone();
                stats.renewed = now;
                if stats.session != session {
                    if let Some(old) = inner.sessions.get_mut(&stats.session) {
                        old.instances.retain(|k| *k != key);
                    }
                    stats.session = session;
                }
            }
            None => {
                entry.instances.insert(
                    instance.endpoint.clone(),
                    InstanceStats {
                        instance: instance.clone(),
                        session,
                        registered: now,
                        renewed: now,
                        reported: None,
                        window_ms: 0,
                        rate: (0.0, 0.0),
                        methods: BTreeMap::new(),
                        consumers: BTreeMap::new(),
                    },
                );
            }
        }
        if let Some(s) = inner.sessions.get_mut(&session)
            && !s.instances.contains(&key)
        {
            s.instances.push(key);
        }
    }

    /// An instance's lease ended. (Under the state lock.)
    pub(crate) fn removed(&self, service: &str, endpoint: &str, now: Instant) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let Some(entry) = inner.services.get_mut(service) else {
            return;
        };
        let Some(stats) = entry.instances.remove(endpoint) else {
            return;
        };
        entry.rate_sum.0 -= stats.rate.0;
        entry.rate_sum.1 -= stats.rate.1;
        if let Some(s) = inner.sessions.get_mut(&stats.session) {
            s.instances
                .retain(|(sv, ep)| !(sv == service && ep == endpoint));
        }
        let became_gone = entry.instances.is_empty();
        if became_gone {
            entry.gone = Some(now);
            // No instance left: no rounding left over either.
            entry.rate_sum = (0.0, 0.0);
        }
        let slot = self.slot(now);
        let rate = service_rate(entry);
        entry.history.record(slot, rate);
        // Only a service going away can push the gone ones over their bound (and `snapshot`
        // drops the old ones): an instance leaving costs nothing per service.
        if became_gone {
            Self::prune(inner, now);
        }
    }

    /// A copy of everything, for rendering (gone services past [`GONE_KEEP`] are dropped
    /// first). With `history: false` the histories are left out.
    pub(crate) fn snapshot(&self, history: bool) -> Snapshot {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        Self::prune(&mut inner, now);
        let services = if history {
            inner.services.clone()
        } else {
            inner
                .services
                .iter()
                .map(|(name, e)| {
                    (
                        name.clone(),
                        ServiceEntry {
                            instances: e.instances.clone(),
                            history: History::default(),
                            gone: e.gone,
                            rate_sum: e.rate_sum,
                        },
                    )
                })
                .collect()
        };
        let sessions = inner.sessions.clone();
        let faults = inner.faults.clone();
        drop(inner);
        Snapshot {
            now,
            now_ms: self.epoch_ms(now),
            lease_ttl: self.lease_ttl,
            services,
            sessions,
            faults,
            rules: Rules::default(),
        }
    }

    /// A snapshot (without history) at most [`SHARED_SNAPSHOT_AGE`] old at `now`, shared by
    /// its callers: what registry calls any logged-in app may repeat (`services`) read, so a
    /// caller in a loop costs one copy of the figures per second rather than one per call, and
    /// heartbeats (which fold under the same lock) do not queue behind the copies.
    pub(crate) fn shared_snapshot(&self, now: Instant) -> Arc<Snapshot> {
        let mut shared = self.shared.lock();
        if let Some(s) = shared.as_ref()
            && now.saturating_duration_since(s.now) < SHARED_SNAPSHOT_AGE
        {
            return s.clone();
        }
        let s = Arc::new(self.snapshot(false));
        *shared = Some(s.clone());
        s
    }

    fn prune(inner: &mut Inner, now: Instant) {
        inner.services.retain(|_, e| {
            e.gone
                .is_none_or(|at| now.saturating_duration_since(at) < GONE_KEEP)
        });
        let gone = inner.services.values().filter(|e| e.gone.is_some()).count();
        if gone > MAX_GONE_SERVICES {
            let mut by_age: Vec<(Instant, String)> = inner
                .services
                .iter()
                .filter_map(|(n, e)| e.gone.map(|at| (at, n.clone())))
                .collect();
            by_age.sort();
            for (_, name) in by_age.into_iter().take(gone - MAX_GONE_SERVICES) {
                inner.services.remove(&name);
            }
        }
    }
}

/// The service's current calls/s and errors/s: the sum of its instances' last windows.
pub(crate) fn service_rate(entry: &ServiceEntry) -> (f64, f64) {
    // A running sum: never below zero from rounding.
    (entry.rate_sum.0.max(0.0), entry.rate_sum.1.max(0.0))
}

fn add_errors(into: &mut BTreeMap<u16, u64>, errors: &[ErrorCount]) -> u64 {
    let mut total = 0u64;
    for e in errors {
        if e.count == 0 {
            continue;
        }
        total = total.saturating_add(e.count);
        let code = if into.contains_key(&e.code) || into.len() < MAX_ERROR_KINDS {
            e.code
        } else {
            ErrorKind::Internal.code()
        };
        let n = into.entry(code).or_default();
        *n = n.saturating_add(e.count);
    }
    total
}

/// The report's bucket counts, if they have the expected shape.
fn buckets_of(latency: &Latency) -> Option<[u64; BUCKETS]> {
    <[u64; BUCKETS]>::try_from(latency.buckets.as_slice()).ok()
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl InstanceStats {
    /// Calls/s and errors/s over the last window, from its methods.
    fn window_rate(&self) -> (f64, f64) {
        if self.window_ms == 0 {
            return (0.0, 0.0);
        }
        let secs = self.window_ms as f64 / 1000.0;
        let (calls, errors) = self.methods.values().fold((0u64, 0u64), |(c, e), m| {
            (
                c.saturating_add(m.last.calls),
                e.saturating_add(m.last.errors),
            )
        });
        (calls as f64 / secs, errors as f64 / secs)
    }

    /// Consumer sessions that could not reach this instance in their last window (within
    /// [`UNREACHABLE_HOLD`]), by app.
    pub fn unreachable_from(&self, now: Instant) -> Vec<&str> {
        self.consumers
            .iter()
            .filter(|(_, c)| {
                c.sessions.values().any(|w| {
                    now.saturating_duration_since(w.at) < UNREACHABLE_HOLD && w.unreachable()
                })
            })
            .map(|(app, _)| app.as_str())
            .collect()
    }
}

/// The `q` quantile (0..1) of a latency histogram, in microseconds, interpolated within its
/// bucket; `max_us` bounds the overflow bucket and the result. `None` without calls.
pub(crate) fn quantile(buckets: &[u64; BUCKETS], q: f64, max_us: u64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && below + n >= rank {
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let upper = LATENCY_BOUNDS_US
                .get(i)
                .copied()
                .unwrap_or(max_us.max(lower));
            let upper = if max_us > 0 {
                upper.min(max_us.max(lower))
            } else {
                upper
            };
            let within = (rank - below) as f64 / n as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use stardust::discovery::api::{CallFigures, MethodFigures};

    fn instance(service: &str, endpoint: &str) -> Instance {
        Instance {
            app: "calc".into(),
            service: service.into(),
            version: "1.0.0".into(),
            endpoint: endpoint.into(),
            weight: 100,
            tags: Default::default(),
            tls: false,
        }
    }

    fn latency(us: u64, calls: u64) -> Latency {
        let mut buckets = vec![0; BUCKETS];
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS - 1);
        buckets[i] = calls;
        Latency {
            buckets,
            sum_us: us * calls,
            p50_us: us,
            p90_us: us,
            p99_us: us,
            max_us: us,
        }
    }

    fn served(service: &str, method: &str, calls: u64, errors: &[(u16, u64)]) -> MethodFigures {
        MethodFigures {
            service: service.into(),
            method: method.into(),
            calls,
            errors: errors
                .iter()
                .map(|&(code, count)| ErrorCount { code, count })
                .collect(),
            in_flight: 1,
            latency: latency(300, calls),
            items_in: 0,
            items_out: 0,
            slowest: None,
            failed: None,
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn a_services_rate_is_the_sum_of_its_instances_kept_as_they_change() {
        let m = Monitor::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for (session, endpoint) in [(1, "h:1"), (2, "h:2")] {
            m.session_started(session, "calc".into(), peer(), t0);
            m.registered(&instance("calc.C", endpoint), session, t0);
        }
        let report = |calls: u64, errors: u64| Status {
            window_ms: 1000,
            served: vec![served("calc.C", "add", calls, &[(5, errors)])],
            ..Status::default()
        };
        let exact = |m: &Monitor| {
            let snap = m.snapshot(false);
            let e = &snap.services["calc.C"];
            let sum = e
                .instances
                .values()
                .fold((0.0, 0.0), |(c, x), i| (c + i.rate.0, x + i.rate.1));
            (service_rate(e), sum)
        };
        for (i, (a, b)) in [(10, 4), (7, 30), (0, 2)].into_iter().enumerate() {
            let at = t0 + Duration::from_secs(i as u64 + 1);
            m.fold(1, &report(a, 1), at);
            m.fold(2, &report(b, 0), at);
            let (kept, sum) = exact(&m);
            assert!(
                (kept.0 - sum.0).abs() < 1e-9 && (kept.1 - sum.1).abs() < 1e-9,
                "{kept:?} {sum:?}"
            );
            assert!(sum.0 > 0.0);
        }
        m.removed("calc.C", "h:2", t0 + Duration::from_secs(5));
        let (kept, sum) = exact(&m);
        assert!((kept.0 - sum.0).abs() < 1e-9, "{kept:?} {sum:?}");
        m.removed("calc.C", "h:1", t0 + Duration::from_secs(5));
        assert_eq!(
            service_rate(&m.snapshot(false).services["calc.C"]),
            (0.0, 0.0)
        );
    }

    #[test]
    fn folds_windows_into_totals_and_last_window() {
        let m = Monitor::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.session_started(1, "calc".into(), peer(), t0);
        m.registered(&instance("calc.C", "h:1"), 1, t0);
        for (i, calls) in [3u64, 4, 5].into_iter().enumerate() {
            let status = Status {
                window_ms: 1000,
                served: vec![served("calc.C", "add", calls, &[(5, 1)])],
                ..Status::default()
            };
            m.fold(1, &status, t0 + Duration::from_secs(i as u64 + 1));
        }
        // A report without the method: its last window is empty, its totals stay.
        m.fold(
            1,
            &Status {
                window_ms: 1000,
                served: vec![served("calc.C", "sub", 2, &[])],
                ..Status::default()
            },
            t0 + Duration::from_secs(4),
        );
        let snap = m.snapshot(true);
        let stats = &snap.services["calc.C"].instances["h:1"];
        let add = &stats.methods["add"];
        assert_eq!(add.calls, 12);
        assert_eq!(add.errors[&5], 3);
        assert_eq!(add.buckets.iter().sum::<u64>(), 12);
        assert_eq!(add.sum_us, 300 * 12);
        assert_eq!(add.last.calls, 0);
        assert_eq!(stats.methods["sub"].last.calls, 2);
        assert_eq!(stats.rate, (2.0, 0.0));
        // Figures for services it did not register, or for instances not its own, are ignored.
        m.session_started(2, "other".into(), peer(), t0);
        m.fold(
            2,
            &Status {
                served: vec![served("calc.C", "add", 100, &[])],
                ..Status::default()
            },
            t0,
        );
        assert_eq!(
            m.snapshot(false).services["calc.C"].instances["h:1"].methods["add"].calls,
            12
        );
    }

    #[test]
    fn consumers_that_cannot_connect_make_an_instance_unreachable() {
        let m = Monitor::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.session_started(1, "calc".into(), peer(), t0);
        m.registered(&instance("calc.C", "h:1"), 1, t0);
        m.session_started(2, "web".into(), peer(), t0);
        let called = |calls, connect| Status {
            window_ms: 1000,
            called: vec![CallFigures {
                endpoint: "h:1".into(),
                service: "calc.C".into(),
                calls,
                errors: vec![ErrorCount {
                    code: ErrorKind::Connect.code(),
                    count: connect,
                }],
                latency: Latency::default(),
            }],
            ..Status::default()
        };
        m.fold(2, &called(10, 0), t0);
        let snap = m.snapshot(false);
        let stats = &snap.services["calc.C"].instances["h:1"];
        assert!(stats.unreachable_from(t0).is_empty());
        m.fold(2, &called(4, 4), t0 + Duration::from_secs(1));
        let snap = m.snapshot(false);
        let stats = &snap.services["calc.C"].instances["h:1"];
        assert_eq!(stats.unreachable_from(t0 + Duration::from_secs(1)), ["web"]);
        assert_eq!(stats.consumers["web"].calls, 14);
        assert_eq!(stats.consumers["web"].errors[&16], 4);
        // It holds for a while, then is forgotten.
        assert!(stats.unreachable_from(t0 + UNREACHABLE_HOLD * 2).is_empty());
    }

    #[test]
    fn removed_instances_go_and_services_linger() {
        let m = Monitor::new(Duration::from_secs(10));
        let t0 = Instant::now();
        m.session_started(1, "calc".into(), peer(), t0);
        m.registered(&instance("calc.C", "h:1"), 1, t0);
        m.registered(&instance("calc.C", "h:2"), 1, t0);
        m.removed("calc.C", "h:1", t0);
        let snap = m.snapshot(false);
        assert_eq!(snap.services["calc.C"].instances.len(), 1);
        assert!(snap.services["calc.C"].gone.is_none());
        m.removed("calc.C", "h:2", t0);
        let snap = m.snapshot(false);
        assert!(snap.services["calc.C"].instances.is_empty());
        assert!(snap.services["calc.C"].gone.is_some());
        assert!(snap.sessions[&1].instances.is_empty());
        // Re-registering brings it back with fresh totals.
        m.registered(&instance("calc.C", "h:1"), 1, t0);
        assert!(m.snapshot(false).services["calc.C"].gone.is_none());
        m.session_ended(1);
        assert!(m.snapshot(false).sessions.is_empty());
    }

    #[test]
    fn history_holds_short_gaps_and_is_bounded() {
        let mut h = History::default();
        h.record(100, (1.0, 0.0));
        h.record(103, (2.0, 0.0));
        assert_eq!(
            h.samples.iter().copied().collect::<Vec<_>>(),
            [
                Some((1.0, 0.0)),
                Some((1.0, 0.0)),
                Some((1.0, 0.0)),
                Some((2.0, 0.0))
            ]
        );
        h.record(103, (3.0, 1.0));
        assert_eq!(h.samples.back().copied().flatten(), Some((3.0, 1.0)));
        h.record(103 + HOLD_SLOTS + 5, (4.0, 0.0));
        assert!(h.samples.iter().any(Option::is_none));
        h.record(100_000, (5.0, 0.0));
        assert_eq!(h.samples.len(), 1);
        for s in 100_001..100_001 + 2 * HISTORY_SLOTS as u64 {
            h.record(s, (1.0, 0.0));
        }
        assert_eq!(h.samples.len(), HISTORY_SLOTS);
    }

    #[test]
    fn quantiles_from_buckets() {
        let mut b = [0u64; BUCKETS];
        assert_eq!(quantile(&b, 0.5, 0), None);
        b[3] = 100; // (100, 250] us
        assert_eq!(quantile(&b, 0.5, 240), Some(170));
        assert_eq!(quantile(&b, 1.0, 240), Some(240));
        b[BUCKETS - 1] = 1; // overflow, bounded by max
        assert_eq!(quantile(&b, 1.0, 20_000_000), Some(20_000_000));
        assert!(quantile(&b, 0.99, 20_000_000).unwrap() <= 250);
    }

    #[test]
    fn kind_names() {
        assert_eq!(kind_name(5), "DeadlineExceeded");
        assert_eq!(kind_name(16), "Connect");
        assert_eq!(kind_name(1), "Internal");
        assert_eq!(kind_name(999), "code999");
    }

    #[test]
    fn callers_within_a_second_share_one_snapshot() {
        let m = Monitor::new(Duration::from_secs(10));
        let first = m.shared_snapshot(Instant::now());
        let again = m.shared_snapshot(first.now + Duration::from_millis(999));
        assert!(Arc::ptr_eq(&first, &again));
        let later = m.shared_snapshot(first.now + SHARED_SNAPSHOT_AGE);
        assert!(!Arc::ptr_eq(&first, &later));
    }
}
