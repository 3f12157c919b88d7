//! What one shape measured, and the markdown table it is printed as (ready to paste into
//! benches/RESULTS.md).

use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::LoginCounters;
use crate::shape::Shape;
use crate::stats::{latency_cell, mb, percentiles_ms, round, secs};

/// Resources a phase cost: wall time, and CPU of the registry and of the load generator.
#[derive(Debug, Clone)]
pub struct PhaseCost {
    pub name: &'static str,
    pub wall: Duration,
    /// `None` when the registry was gone before the phase ended.
    pub registry_cpu: Option<Duration>,
    pub own_cpu: Duration,
}

/// Calls made at once, and how long until all returned.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub calls: usize,
    /// First call to the last one's return (an answer or a failure); `None` if they had not all
    /// returned when the phase ended.
    pub done: Option<Duration>,
    /// Each successful call's duration.
    pub call_times: Vec<Duration>,
    pub errors: usize,
    /// Until every subscriber's view showed the result (registration burst only).
    pub visible: Option<Duration>,
}

/// Push latencies of one kind of event over every repeat.
#[derive(Debug, Clone, Default)]
pub struct EventFigures {
    /// Per subscriber of the changed service, per event.
    pub seen: Vec<Duration>,
    /// Subscribers that did not see an event within its deadline (summed over events).
    pub missed: usize,
    pub events: usize,
    /// The register/deregister calls (join, leave).
    pub calls: Vec<Duration>,
}

/// The registry restart: killed with SIGKILL, started again on its port with its key file, every
/// session back on a new connection.
#[derive(Debug, Clone, Default)]
pub struct RestartFigures {
    /// Why it did not run although the phases before it did.
    pub skipped: Option<&'static str>,
    /// From the SIGKILL until the new registry accepted connections; `None`: not restarted.
    pub down: Option<Duration>,
    /// Per subscriber whose view was complete again: from the new registry accepting
    /// connections until then.
    pub views: Vec<Duration>,
    /// Subscribers whose view was not complete when the phase ended.
    pub incomplete: usize,
    /// From the new registry accepting connections until every session was back (logged in,
    /// registered again or watching); `None` if not all were.
    pub sessions_back: Option<Duration>,
    /// Provider and subscriber sessions to bring back.
    pub sessions: usize,
    /// Sessions back by `resume`, and by a full login (`first_fallback` says why the first).
    pub resumed: usize,
    pub logged_in: usize,
    pub first_fallback: Option<String>,
    /// Sessions that did not come back (connecting, logging in, registering or watching
    /// failed).
    pub failed: usize,
    /// Instances registered again.
    pub registered: usize,
    /// The restarted registry's own counters (`/metrics`), or why they could not be read.
    pub registry: Option<Result<LoginCounters, String>>,
}

/// Registry memory at three moments.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Every session logged in, nothing registered yet.
    pub before_registering: Option<u64>,
    /// `VmHWM` at the end (or the last reading before the registry went away).
    pub peak: Option<u64>,
    pub end: Option<u64>,
    /// Instances registered at the end, for bytes per instance.
    pub instances: usize,
    /// The registry killed by the restart phase, right before: bytes per instance come from
    /// it (the process measured before registering), not from its fresh successor.
    pub before_restart: Option<MemoryAt>,
}

/// A registry process's memory at one moment.
#[derive(Debug, Clone, Copy)]
pub struct MemoryAt {
    pub rss: Option<u64>,
    pub peak: Option<u64>,
    pub instances: usize,
}

/// Everything one shape's run found.
#[derive(Default)]
pub struct ShapeReport {
    pub shape: Option<Shape>,
    /// The bench itself could not run the shape (not a collapse): why.
    pub failure: Option<String>,
    /// Why the registry was declared collapsed, if it was.
    pub collapse: Option<String>,
    pub registration: Burst,
    pub subscribe_burst: Burst,
    pub registration_burst: Burst,
    pub join: EventFigures,
    pub leave: EventFigures,
    pub crash: EventFigures,
    pub restart: RestartFigures,
    /// Repeats of (join, leave, crash) run, of those asked for.
    pub repeats: (usize, usize),
    pub heartbeats: Vec<Duration>,
    pub expiries: u64,
    pub vanished: usize,
    pub sessions_lost: u64,
    pub heartbeat_errors: u64,
    pub reregistered: u64,
    pub bad_pushes: u64,
    /// Delta gaps and resync demands repaired by asking again.
    pub resyncs: u64,
    /// Which discovery protocol the subscribers followed.
    pub protocol: &'static str,
    /// Subscribers whose view differs from `discover` at the end, of those compared; `None` if
    /// the check could not run.
    pub mismatches: Option<(usize, usize)>,
    pub final_check_note: Option<String>,
    pub memory: Memory,
    pub phases: Vec<PhaseCost>,
    /// The load generator's peak RSS: during this shape if `own_peak_reset`, else since the
    /// run started (the kernel would not reset it).
    pub own_peak_rss: Option<u64>,
    pub own_peak_reset: bool,
    pub first_error: Option<String>,
}

impl ShapeReport {
    /// What makes a quick run fail (and what a full run shouts about).
    pub fn problems(&self) -> Vec<String> {
        let name = self.shape.as_ref().map_or("?", |s| s.kind.name());
        let mut out = Vec::new();
        if let Some(f) = &self.failure {
            out.push(format!("{name}: the bench failed: {f}"));
        }
        if let Some(c) = &self.collapse {
            out.push(format!("{name}: the registry collapsed: {c}"));
        }
        if self.expiries > 0 || self.vanished > 0 || self.sessions_lost > 0 {
            out.push(format!(
                "{name}: lease expiries of live providers: {} heartbeats refused, {} instances vanished from views, {} sessions lost",
                self.expiries, self.vanished, self.sessions_lost
            ));
        }
        match self.mismatches {
            Some((0, _)) => {}
            Some((bad, of)) => out.push(format!(
                "{name}: {bad} of {of} subscribers' views differ from discover()"
            )),
            None if self.failure.is_none() => out.push(format!(
                "{name}: views were not compared with discover(): {}",
                self.final_check_note.as_deref().unwrap_or("not reached")
            )),
            None => {}
        }
        if self.restart.logged_in > 0 {
            out.push(format!(
                "{name}: {} of {} sessions could not resume after the registry restart (first: {})",
                self.restart.logged_in,
                self.restart.sessions,
                self.restart.first_fallback.as_deref().unwrap_or("?")
            ));
        }
        let errors = self.registration.errors
            + self.subscribe_burst.errors
            + self.registration_burst.errors
            + self.restart.failed
            + self.heartbeat_errors as usize
            + self.bad_pushes as usize;
        if errors > 0 {
            out.push(format!(
                "{name}: {errors} calls failed (first: {})",
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        out
    }

    /// The shape's markdown table.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let Some(shape) = &self.shape else {
            return s;
        };
        let _ = writeln!(s, "**{}** — {}\n", shape.kind.name(), shape.describe());
        let _ = writeln!(s, "| measure | value |\n|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row("outcome", self.outcome());
        row(
            "subscriber protocol",
            format!("{} ({} gaps/resyncs repaired)", self.protocol, self.resyncs),
        );
        row("registration", self.registration_cell());
        row(
            "subscribe burst",
            burst_cell(&self.subscribe_burst, "subscribes"),
        );
        let mut burst = burst_cell(&self.registration_burst, "registrations");
        if let Some(v) = self.registration_burst.visible {
            let _ = write!(burst, "; in every view after **{} s**", secs(v));
        }
        row("registration burst", burst);
        let (done, asked) = self.repeats;
        for (name, ev) in [
            ("join", &self.join),
            ("graceful leave", &self.leave),
            ("crash (connection closed)", &self.crash),
        ] {
            row(
                &format!("{name} → subscribers"),
                event_cell(ev, done, asked),
            );
        }
        row(
            "registry restart → every view complete",
            self.restart.cell(),
        );
        row(
            "register call (join) / deregister call (leave)",
            format!(
                "{} / {}",
                latency_cell(&self.join.calls),
                latency_cell(&self.leave.calls)
            ),
        );
        row(
            "heartbeat round trip",
            format!(
                "{} ({} heartbeats)",
                latency_cell(&self.heartbeats),
                self.heartbeats.len()
            ),
        );
        row(
            "lease expiries of live providers",
            format!(
                "**{}** heartbeats refused as expired; **{}** instances vanished from views; {} sessions lost; {} instances registered again",
                self.expiries, self.vanished, self.sessions_lost, self.reregistered
            ),
        );
        row("view mismatches at the end", self.mismatch_cell());
        row("registry RSS", self.memory_cell());
        row("phase wall time s", self.phases_cell(|p| Some(p.wall)));
        row("registry CPU s", self.phases_cell(|p| p.registry_cpu));
        row(
            "load generator CPU s",
            self.phases_cell(|p| Some(p.own_cpu))
                + &self.own_peak_rss.map_or(String::new(), |b| {
                    let when = if self.own_peak_reset {
                        ""
                    } else {
                        " (whole run)"
                    };
                    format!("; peak RSS {}{when}", mb(b))
                }),
        );
        if let Some(e) = &self.first_error {
            row("first error", format!("`{}`", e.replace('|', "/")));
        }
        s
    }

    fn outcome(&self) -> String {
        match (&self.failure, &self.collapse) {
            (Some(f), _) => format!("**FAILED**: {f}"),
            (None, Some(c)) => format!("**COLLAPSED**: {c}"),
            (None, None) if self.problems().is_empty() => "ok".to_owned(),
            (None, None) => "**finished with problems** (see below)".to_owned(),
        }
    }

    fn registration_cell(&self) -> String {
        let b = &self.registration;
        match b.done {
            Some(t) => format!(
                "{} instances in {} s: **{:.0} /s** ({} failed)",
                b.calls,
                secs(t),
                b.calls as f64 / t.as_secs_f64().max(1e-9),
                b.errors
            ),
            None => burst_cell(b, "registrations"),
        }
    }

    fn mismatch_cell(&self) -> String {
        match (self.mismatches, &self.final_check_note) {
            (Some((bad, of)), Some(note)) => format!("**{bad}** of {of} subscribers ({note})"),
            (Some((bad, of)), None) => format!("**{bad}** of {of} subscribers"),
            (None, Some(note)) => format!("not checked: {note}"),
            (None, None) => "not checked".to_owned(),
        }
    }

    fn memory_cell(&self) -> String {
        let m = &self.memory;
        let opt = |b: Option<u64>| b.map_or("?".to_owned(), mb);
        let (rss, instances) = match m.before_restart {
            Some(at) => (at.rss, at.instances),
            None => (m.end, m.instances),
        };
        let per_instance = match (m.before_registering, rss) {
            (Some(before), Some(rss)) if instances > 0 => format!(
                ": **{} B per instance**",
                (rss.saturating_sub(before)) / instances as u64
            ),
            _ => String::new(),
        };
        match m.before_restart {
            Some(at) => format!(
                "before registering {}, peak **{}**, before the restart {}{per_instance}; the restarted registry at the end {}",
                opt(m.before_registering),
                opt(m.peak),
                opt(at.rss),
                opt(m.end)
            ),
            None => format!(
                "before registering {}, peak **{}**, end {}{per_instance}",
                opt(m.before_registering),
                opt(m.peak),
                opt(m.end)
            ),
        }
    }

    fn phases_cell(&self, of: impl Fn(&PhaseCost) -> Option<Duration>) -> String {
        let mut total = Duration::ZERO;
        let mut parts = Vec::new();
        for p in &self.phases {
            match of(p) {
                Some(cpu) => {
                    total += cpu;
                    parts.push(format!("{} {}", p.name, secs(cpu)));
                }
                None => parts.push(format!("{} ?", p.name)),
            }
        }
        format!("{} · total **{}**", parts.join(" · "), secs(total))
    }
}

impl RestartFigures {
    /// One line for stderr.
    pub fn progress(&self) -> String {
        let views = match percentiles_ms(&self.views) {
            Some((_, _, max)) if self.incomplete == 0 => {
                format!("every view complete after {} s", round(max / 1000.0))
            }
            _ => format!("{} views not complete", self.incomplete),
        };
        format!(
            "{views}; {} of {} sessions resumed, {} full logins, {} failed, {} not back",
            self.resumed,
            self.sessions,
            self.logged_in,
            self.failed,
            self.not_back()
        )
    }

    /// Sessions still on their way back (logging in, registering, watching) when the phase
    /// ended.
    fn not_back(&self) -> usize {
        self.sessions - self.resumed - self.logged_in - self.failed
    }

    fn cell(&self) -> String {
        if let Some(why) = self.skipped {
            return format!("skipped ({why})");
        }
        let Some(down) = self.down else {
            return "not run".to_owned();
        };
        let mut s = match percentiles_ms(&self.views) {
            Some((p50, p99, max)) if self.incomplete == 0 => format!(
                "**{} s** after the new registry accepted connections (per subscriber p50 {} / p99 {} ms)",
                round(max / 1000.0),
                round(p50),
                round(p99)
            ),
            _ => format!(
                "**{} of {} views not complete**",
                self.incomplete,
                self.incomplete + self.views.len()
            ),
        };
        let _ = write!(
            s,
            "; registry back {} s after the SIGKILL; {} sessions: **{} resumed**, {} full logins, {} failed",
            secs(down),
            self.sessions,
            self.resumed,
            self.logged_in,
            self.failed
        );
        match self.sessions_back {
            Some(t) => {
                let _ = write!(s, ", all back after {} s", secs(t));
            }
            None => {
                let _ = write!(s, ", **{} not back**", self.not_back());
            }
        }
        let _ = write!(s, "; {} instances registered again", self.registered);
        match &self.registry {
            Some(Ok(c)) => {
                let _ = write!(
                    s,
                    "; the registry counted {} resumes, {} refused, {} logins",
                    c.resumed, c.resume_refused, c.logins
                );
            }
            Some(Err(e)) => {
                let _ = write!(s, "; its counters unreadable: {e}");
            }
            None => {}
        }
        s
    }
}

fn burst_cell(b: &Burst, what: &str) -> String {
    let ok = format!(
        "{} ok: {}; {} failed",
        b.call_times.len(),
        latency_cell(&b.call_times),
        b.errors
    );
    match b.done {
        Some(t) => format!("{} {what} returned in **{} s** ({ok})", b.calls, secs(t)),
        None if b.calls == 0 => "not run".to_owned(),
        None => format!("{} {what}: **not all returned** ({ok})", b.calls),
    }
}

fn event_cell(ev: &EventFigures, done: usize, asked: usize) -> String {
    if ev.events == 0 {
        return "not run".to_owned();
    }
    let missed = if ev.missed > 0 {
        format!(", **{} not seen within the deadline**", ev.missed)
    } else {
        String::new()
    };
    let cut = if done < asked {
        format!(" (cut short: {done} of {asked} repeats)")
    } else {
        String::new()
    };
    format!(
        "{} ({} events, {} samples{missed}){cut}",
        latency_cell(&ev.seen),
        ev.events,
        ev.seen.len()
    )
}

/// The run's header, before the tables.
pub fn header(quick: bool, cpus: usize, model: &str, load: &str, date: &str) -> String {
    format!(
        "#### {date} — {} mode, {cpus} CPUs ({model}), load {load} at start",
        if quick { "quick" } else { "full" }
    )
}
