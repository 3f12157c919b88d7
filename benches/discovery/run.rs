//! One shape, start to end: a fresh registry process, the sessions, then the phases in order,
//! each measured and bounded. A phase that overruns its bound declares a collapse; the phases
//! after it are skipped, and the end of the run (final comparison, figures) still happens.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stardust::discovery::api::RegistryClient;
use tokio::task::JoinSet;

use crate::ledger::Ledger;
use crate::options::{Bounds, Options};
use crate::probe::{Probe, Probes};
use crate::procfs::Pid;
use crate::provider::{HEARTBEAT_EVERY, Provider};
use crate::registry_process::{CONSUMER_APP, LEASE_TTL, PROVIDER_APP, RegistryProcess};
use crate::report::{Burst, MemoryAt, PhaseCost, ShapeReport};
use crate::session::{self, Session};
use crate::shape::{Shape, endpoint};
use crate::stats::secs;
use crate::subscriber::{Sinks, Subscriber};
use crate::view::{InstanceRef, View, endpoint_key};
use crate::watchdog::Watchdog;

/// How often the final check asks `discover` again while views converge.
const RECHECK_EVERY: Duration = Duration::from_millis(200);
/// How often the heartbeat round looks whether every provider had its heartbeat answered.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Runs one shape against a registry process of its own.
pub fn run_shape(shape: Shape, opts: &Options) -> ShapeReport {
    let mut report = ShapeReport {
        shape: Some(shape.clone()),
        ..ShapeReport::default()
    };
    let mut registry = match RegistryProcess::start() {
        Ok(r) => r,
        Err(e) => {
            report.failure = Some(e);
            return report;
        }
    };
    let Pid::Of(pid) = registry.pid() else {
        unreachable!("a child's pid")
    };
    let watchdog = Watchdog::start(pid, opts.rss_cap_bytes);
    report.own_peak_reset = Pid::reset_own_peak();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report.failure = Some(format!("cannot build the runtime: {e}"));
            return report;
        }
    };
    // Providers on a runtime of their own, as they are processes of their own in a deployment:
    // their heartbeats must not queue behind the subscribers' decoding in the load generator
    // (that would measure the load generator, not the registry).
    let providers_rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("providers")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report.failure = Some(format!("cannot build the providers' runtime: {e}"));
            return report;
        }
    };
    rt.block_on(async {
        let mut run = Run {
            providers_rt: providers_rt.handle().clone(),
            shape: &shape,
            bounds: opts.bounds,
            repeats: opts.repeats,
            restart: opts.restart,
            registry: &mut registry,
            watchdog: &watchdog,
            ledger: Arc::default(),
            probes: Arc::default(),
            providers: Vec::new(),
            subscribers: Vec::new(),
            checker: None,
            started: Instant::now(),
        };
        run.go(&mut report).await;
    });
    // Closes every session before the registry goes (then the watchdog, which may kill it).
    rt.shutdown_timeout(Duration::from_secs(10));
    providers_rt.shutdown_timeout(Duration::from_secs(10));
    report.collapse = watchdog.reason();
    drop(watchdog);
    drop(registry);
    report
}

/// The sessions and shared state of one shape's run.
pub struct Run<'a> {
    pub shape: &'a Shape,
    pub bounds: Bounds,
    pub repeats: usize,
    /// Whether to run the registry-restart phase.
    restart: bool,
    pub registry: &'a mut RegistryProcess,
    pub watchdog: &'a Watchdog,
    /// Where provider sessions (their connections and heartbeats) run.
    pub providers_rt: tokio::runtime::Handle,
    pub ledger: Arc<Ledger>,
    pub probes: Arc<Probes>,
    /// By session number; `None` once crashed.
    pub providers: Vec<Option<Arc<Provider>>>,
    pub subscribers: Vec<Arc<Subscriber>>,
    /// A consumer session of its own, for `discover` at the end.
    pub checker: Option<Session>,
    /// When the shape started (its budget runs from here).
    started: Instant,
}

impl Run<'_> {
    async fn go(&mut self, report: &mut ShapeReport) {
        let b = self.bounds;
        let name = self.shape.kind.name();

        let meter = Meter::start(self.pid());
        let limit = self.limit(b.setup);
        let setup = bounded(self.watchdog, "setup", limit, self.setup()).await;
        report.phases.push(meter.stop("setup"));
        match setup {
            Some(Ok(())) => eprintln!("[{name}] sessions open"),
            Some(Err(e)) => report.failure = Some(e),
            None => {} // a collapse, already said
        }
        report.memory.before_registering = self.pid().rss();

        if self.going() {
            let meter = Meter::start(self.pid());
            let (limit, out) = (self.limit(b.registration), &mut report.registration);
            bounded(self.watchdog, "registration", limit, self.registration(out)).await;
            report.phases.push(meter.stop("registration"));
            eprintln!("[{name}] registration: {}", progress(&report.registration));
        }
        if self.going() {
            let meter = Meter::start(self.pid());
            let (limit, out) = (self.limit(b.subscribe_burst), &mut report.subscribe_burst);
            bounded(
                self.watchdog,
                "subscribe burst",
                limit,
                self.subscribe_burst(out),
            )
            .await;
            report.phases.push(meter.stop("subscribe burst"));
            eprintln!(
                "[{name}] subscribe burst: {}",
                progress(&report.subscribe_burst)
            );
        }
        if self.going() {
            let meter = Meter::start(self.pid());
            let (limit, out) = (
                self.limit(b.registration_burst),
                &mut report.registration_burst,
            );
            let burst = self.registration_burst(out);
            bounded(self.watchdog, "registration burst", limit, burst).await;
            report.phases.push(meter.stop("registration burst"));
            eprintln!(
                "[{name}] registration burst: {}",
                progress(&report.registration_burst)
            );
        }
        if self.going() {
            let meter = Meter::start(self.pid());
            let (limit, watchdog) = (self.limit(b.events), self.watchdog);
            bounded(watchdog, "events", limit, self.events(report)).await;
            report.phases.push(meter.stop("events"));
            let (done, asked) = report.repeats;
            eprintln!("[{name}] events: {done} of {asked} repeats");
        }
        if self.going() && !self.restart {
            report.restart.skipped = Some("STARDUST_DISCOVERY_RESTART=0");
        } else if self.going() {
            report.memory.before_restart = Some(MemoryAt {
                rss: self.pid().rss(),
                peak: self.pid().peak_rss(),
                instances: self.ledger.live(),
            });
            let meter = Meter::start(self.pid());
            let limit = self.limit(b.restart);
            if let Err(e) = self.registry_restart(limit, &mut report.restart).await {
                report.failure = Some(e);
            }
            let meter = meter.after_restart(self.pid());
            report.phases.push(meter.stop("registry restart"));
            eprintln!("[{name}] registry restart: {}", report.restart.progress());
        }
        if self.going() && report.failure.is_none() {
            let meter = Meter::start(self.pid());
            let limit = self.limit(HEARTBEAT_EVERY + LEASE_TTL);
            bounded(
                self.watchdog,
                "heartbeat round",
                limit,
                self.heartbeat_round(),
            )
            .await;
            report.phases.push(meter.stop("heartbeat round"));
        }
        if report.failure.is_none() && !self.subscribers.is_empty() {
            let meter = Meter::start(self.pid());
            self.final_check(report).await;
            report.phases.push(meter.stop("final check"));
        }
        self.figures(report);
    }

    /// What a phase bounded by `bound` may take: no more than is left of the shape's budget,
    /// less the final check's share.
    fn limit(&self, bound: Duration) -> Duration {
        let end = self.started + self.bounds.shape - self.bounds.final_check;
        bound.min(end.saturating_duration_since(Instant::now()))
    }

    /// The registry process (a new one after the restart phase).
    pub fn pid(&self) -> Pid {
        self.registry.pid()
    }

    /// Whether to run the next phase: nothing failed or collapsed so far.
    fn going(&self) -> bool {
        self.watchdog.reason().is_none() && !self.subscribers.is_empty()
    }

    /// Opens every session: the providers start heartbeating at once, spread over the interval.
    async fn setup(&mut self) -> Result<(), String> {
        // Views key instances by a 64-bit hash of their endpoint: two endpoints of one run
        // sharing a key would make views differ for no fault of the registry.
        let all = self.shape.join_instance(self.repeats);
        let keys: std::collections::HashSet<_> = (0..all)
            .map(|i| crate::view::endpoint_key(&crate::shape::endpoint(i)))
            .collect();
        if keys.len() != all {
            return Err("two endpoints of this run hash to the same view key".into());
        }
        let s = self.shape.sessions;
        let (addr, ledger) = (self.registry.addr(), self.ledger.clone());
        self.providers = self
            .providers_rt
            .spawn(async move {
                let clients = session::open_many(addr, PROVIDER_APP, s).await?;
                Ok::<_, String>(
                    clients
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let phase = HEARTBEAT_EVERY.mul_f64(i as f64 / s as f64);
                            Some(Arc::new(Provider::start(c, phase, ledger.clone())))
                        })
                        .collect(),
                )
            })
            .await
            .map_err(|e| format!("opening the provider sessions died: {e}"))??;
        let m = self.shape.subscribers;
        let clients = session::open_many(addr, CONSUMER_APP, m).await?;
        self.checker = Some(session::open(addr, CONSUMER_APP).await?);
        self.subscribers = clients
            .into_iter()
            .enumerate()
            .map(|(j, c)| Arc::new(Subscriber::new(j, self.shape.service_watched_by(j), c)))
            .collect();
        Ok(())
    }

    /// Every provider registers its share, one instance after the other, all at once.
    async fn registration(&self, out: &mut Burst) {
        let shape = self.shape;
        out.calls = shape.instances;
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for (p, provider) in self.providers.iter().enumerate() {
            let provider = provider.clone().expect("no crash yet");
            let regs: Vec<_> = (p..shape.instances)
                .step_by(shape.sessions)
                .map(|i| shape.registration(i))
                .collect();
            let ledger = self.ledger.clone();
            tasks.spawn(async move {
                let mut done = Vec::with_capacity(regs.len());
                for reg in regs {
                    done.push(provider.register(reg, &ledger).await);
                }
                done
            });
        }
        while let Some(joined) = tasks.join_next().await {
            for r in joined.unwrap_or_else(|e| vec![Err(format!("task died: {e}"))]) {
                self.record(out, r);
            }
        }
        out.done = Some(start.elapsed());
    }

    /// Every subscriber subscribes at once.
    async fn subscribe_burst(&self, out: &mut Burst) {
        out.calls = self.subscribers.len();
        let sinks = Sinks {
            ledger: self.ledger.clone(),
            probes: self.probes.clone(),
        };
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for sub in &self.subscribers {
            let (sub, sinks) = (sub.clone(), sinks.clone());
            let name = self.shape.service_name(sub.service());
            tasks.spawn(async move { sub.subscribe(name, sinks).await });
        }
        while let Some(joined) = tasks.join_next().await {
            self.record(
                out,
                joined.unwrap_or_else(|e| Err(format!("task died: {e}"))),
            );
        }
        out.done = Some(start.elapsed());
    }

    /// A tenth more instances registered at once, one call each, while everyone watches; done
    /// when every subscriber's view shows all of its service's new instances.
    async fn registration_burst(&self, out: &mut Burst) {
        let shape = self.shape;
        let new = shape.instances..shape.instances + shape.burst;
        out.calls = shape.burst;
        let keys = new
            .clone()
            .map(|i| (shape.service_of(i), endpoint_key(&endpoint(i))));
        let probe = Probe::start(shape, keys, true);
        self.probes.install(probe.clone());
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for i in new {
            let provider = self.providers[shape.session_of(i)]
                .clone()
                .expect("no crash yet");
            let (reg, ledger) = (shape.registration(i), self.ledger.clone());
            tasks.spawn(async move { provider.register(reg, &ledger).await });
        }
        while let Some(joined) = tasks.join_next().await {
            self.record(
                out,
                joined.unwrap_or_else(|e| Err(format!("task died: {e}"))),
            );
        }
        out.done = Some(start.elapsed());
        let far = tokio::time::Instant::now() + self.bounds.registration_burst;
        if probe.wait(far, self.watchdog.collapsed()).await {
            out.visible = probe.outcome().0.into_iter().max();
        }
        self.probes.clear();
    }

    /// Waits until every live provider has had a heartbeat answered that it sent after this
    /// started. A lease that expired at any time in the run makes the session's next heartbeat
    /// refused (and counted), so after this round none can go unnoticed, however short the
    /// phases were next to the lease TTL.
    async fn heartbeat_round(&self) {
        let since = Instant::now();
        let live = || self.providers.iter().flatten();
        while !live().all(|p| p.heartbeat_answered_since(since)) {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Counts one call's outcome into a burst.
    fn record(&self, out: &mut Burst, outcome: Result<Duration, String>) {
        match outcome {
            Ok(took) => out.call_times.push(took),
            Err(e) => {
                out.errors += 1;
                self.ledger.error(e);
            }
        }
    }

    /// Waits (bounded) until every subscriber's view equals what `discover` answers, and counts
    /// the ones that still differ.
    async fn final_check(&self, report: &mut ShapeReport) {
        let Some(checker) = &self.checker else {
            report.final_check_note = Some("no session to ask with".into());
            return;
        };
        let deadline = Instant::now() + self.bounds.final_check;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let discovered = self.discover_all(&checker.client);
            let expected = match tokio::time::timeout(remaining, discovered).await {
                Ok(Ok(expected)) => expected,
                Ok(Err(e)) => {
                    report.final_check_note = Some(format!("discover failed: {e}"));
                    return;
                }
                Err(_) => {
                    report.final_check_note = Some(format!(
                        "discover did not answer within {} s",
                        secs(self.bounds.final_check)
                    ));
                    return;
                }
            };
            let bad = self
                .subscribers
                .iter()
                .filter(|s| !s.shows(&expected[&s.service()]))
                .count();
            report.mismatches = Some((bad, self.subscribers.len()));
            // The last look: say how a differing view differs.
            if bad > 0
                && Instant::now() + RECHECK_EVERY >= deadline
                && let Some(s) = self
                    .subscribers
                    .iter()
                    .find(|s| !s.shows(&expected[&s.service()]))
            {
                let (missing, extra, changed) = s.diff(&expected[&s.service()]);
                report.final_check_note = Some(format!(
                    "a differing view: {missing} missing, {extra} extra, {changed} changed"
                ));
            }
            if bad == 0 || Instant::now() + RECHECK_EVERY >= deadline {
                return;
            }
            // Pushes may still be on their way: ask again, within the deadline.
            tokio::time::sleep(RECHECK_EVERY).await;
        }
    }

    /// What `discover(service, "*")` answers, as a view, for every watched service.
    async fn discover_all(&self, checker: &RegistryClient) -> Result<HashMap<usize, View>, String> {
        let mut views = HashMap::new();
        for sub in &self.subscribers {
            let service = sub.service();
            if views.contains_key(&service) {
                continue;
            }
            let name = self.shape.service_name(service);
            let list = match checker.discover(name, "*".into()).await {
                Ok(Ok(list)) => list,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => return Err(e.to_string()),
            };
            views.insert(service, View::of(list.iter().map(InstanceRef::from)));
        }
        Ok(views)
    }

    /// Memory, correctness counters and the first error, at the end.
    fn figures(&self, report: &mut ShapeReport) {
        let l = &self.ledger;
        report.memory.end = self.pid().rss();
        // Killed by the watchdog, the registry has no `VmHWM` left: its samples tell the peak.
        let sampled = Some(self.watchdog.peak_sampled()).filter(|&b| b > 0);
        let killed = report.memory.before_restart.and_then(|m| m.peak);
        report.memory.peak = self.pid().peak_rss().max(sampled).max(killed);
        report.memory.instances = l.live();
        report.heartbeats = l
            .heartbeats_us()
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        report.expiries = Ledger::get(&l.expiries);
        report.vanished = l.vanished();
        report.sessions_lost = Ledger::get(&l.sessions_lost);
        report.heartbeat_errors = Ledger::get(&l.heartbeat_errors);
        report.reregistered = Ledger::get(&l.reregistered);
        report.bad_pushes = Ledger::get(&l.bad_pushes);
        report.resyncs = Ledger::get(&l.resyncs);
        report.protocol = self.subscribers.first().map_or("none", |s| s.protocol());
        report.own_peak_rss = Pid::Own.peak_rss();
        report.first_error = l.first_error();
    }
}

/// Runs `fut` for at most `limit`; `None` if it overran (a collapse, declared here) or a
/// collapse was declared meanwhile.
pub async fn bounded<T>(
    watchdog: &Watchdog,
    phase: &str,
    limit: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        out = fut => Some(out),
        _ = tokio::time::sleep(limit) => {
            watchdog.declare(format!("{phase} not done within {} s", secs(limit)));
            None
        }
        _ = watchdog.collapsed() => None,
    }
}

fn progress(b: &Burst) -> String {
    match b.done {
        Some(t) => format!("{} calls in {} s, {} failed", b.calls, secs(t), b.errors),
        None => format!("{} of {} returned ok", b.call_times.len(), b.calls),
    }
}

/// CPU of the registry and of this process over one phase.
pub struct Meter {
    pid: Pid,
    wall: Instant,
    registry: Option<Duration>,
    own: Duration,
}

impl Meter {
    pub fn start(pid: Pid) -> Meter {
        Meter {
            pid,
            wall: Instant::now(),
            registry: pid.cpu(),
            own: Pid::Own.cpu().unwrap_or_default(),
        }
    }

    /// `pid` is the registry now: if it was restarted during the phase, its CPU is the new
    /// process's since it started (the killed one's share of the phase went with it).
    pub fn after_restart(mut self, pid: Pid) -> Meter {
        if pid != self.pid {
            self.pid = pid;
            self.registry = Some(Duration::ZERO);
        }
        self
    }

    pub fn stop(self, name: &'static str) -> PhaseCost {
        PhaseCost {
            name,
            wall: self.wall.elapsed(),
            registry_cpu: self
                .pid
                .cpu()
                .zip(self.registry)
                .map(|(end, start)| end.saturating_sub(start)),
            own_cpu: Pid::Own.cpu().unwrap_or_default().saturating_sub(self.own),
        }
    }
}
