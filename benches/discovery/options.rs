//! What a run measures: sizes, shapes, repeats and bounds, from the environment.

use std::time::Duration;

use crate::shape::ShapeKind;

/// One run's settings (see the crate docs for the environment variables).
#[derive(Debug, Clone)]
pub struct Options {
    /// Quick mode: small sizes, short bounds, and any lease expiry, view mismatch, error or
    /// collapse fails the run.
    pub quick: bool,
    pub shapes: Vec<ShapeKind>,
    /// Instances registered in the registration phase (the burst adds a tenth more).
    pub instances: usize,
    /// Provider sessions the instances are spread over.
    pub sessions: usize,
    pub subscribers: usize,
    /// Services of the spread shape.
    pub services: usize,
    /// How often each event (join, leave, crash) is repeated.
    pub repeats: usize,
    /// The registry (or this process) growing past this many bytes counts as a collapse: the
    /// registry is killed and the shape reported as far as it got.
    pub rss_cap_bytes: u64,
    /// Whether to run the registry-restart phase (`STARDUST_DISCOVERY_RESTART=0` skips it).
    pub restart: bool,
    pub bounds: Bounds,
}

/// Deadlines: every wait of the bench has one, so a collapsing registry ends a phase early
/// instead of hanging the run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// One shape from start to end: what each phase may take is also cut to what is left of
    /// it (keeping the final check's share), so a slow registry cannot stretch the run.
    pub shape: Duration,
    /// Connecting and logging in every session.
    pub setup: Duration,
    /// The registration phase.
    pub registration: Duration,
    /// The subscribe burst.
    pub subscribe_burst: Duration,
    /// The registration burst, until every view shows it.
    pub registration_burst: Duration,
    /// One event, until every subscriber of its service saw it.
    pub event: Duration,
    /// All events of a shape together.
    pub events: Duration,
    /// The registry restart, from the kill until every view is complete again.
    pub restart: Duration,
    /// Views converging to what `discover` says, at the end.
    pub final_check: Duration,
}

impl Options {
    pub fn from_env() -> Result<Options, String> {
        let quick = match var("STARDUST_DISCOVERY_QUICK").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => return Err(format!("STARDUST_DISCOVERY_QUICK={other}: use 1 or 0")),
            // `cargo bench` passes `--bench`; `cargo test --bench discovery` does not, so a
            // stray test run of every target stays short.
            None => !std::env::args().any(|a| a == "--bench"),
        };
        let (instances, sessions, subscribers, services, repeats) = if quick {
            (1_000, 100, 100, 10, 5)
        } else {
            (10_000, 1_000, 1_000, 100, 20)
        };
        let shapes = match var("STARDUST_DISCOVERY_SHAPES") {
            None => vec![ShapeKind::OneService, ShapeKind::Spread],
            Some(list) => list
                .split(',')
                .map(|n| {
                    ShapeKind::from_name(n.trim()).ok_or_else(|| {
                        format!("unknown shape `{}` (one-service, spread)", n.trim())
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let opts = Options {
            quick,
            shapes,
            instances: number("STARDUST_DISCOVERY_INSTANCES", instances)?,
            sessions: number("STARDUST_DISCOVERY_SESSIONS", sessions)?,
            subscribers: number("STARDUST_DISCOVERY_SUBSCRIBERS", subscribers)?,
            services: number("STARDUST_DISCOVERY_SERVICES", services)?,
            repeats: number("STARDUST_DISCOVERY_REPEATS", repeats)?,
            rss_cap_bytes: number("STARDUST_DISCOVERY_RSS_CAP_MB", 4096)? as u64 * 1024 * 1024,
            restart: match var("STARDUST_DISCOVERY_RESTART").as_deref() {
                None | Some("1" | "true" | "yes") => true,
                Some("0" | "false" | "no") => false,
                Some(other) => {
                    return Err(format!("STARDUST_DISCOVERY_RESTART={other}: use 1 or 0"));
                }
            },
            bounds: if quick { Bounds::QUICK } else { Bounds::FULL },
        };
        // Crashes take provider sessions away for good; the joins need one left over.
        if opts.sessions <= opts.repeats {
            return Err(format!(
                "STARDUST_DISCOVERY_SESSIONS={} must exceed the repeats ({}): each crash ends a session",
                opts.sessions, opts.repeats
            ));
        }
        Ok(opts)
    }
}

impl Bounds {
    /// Sized so the whole quick run (both shapes, debug build) stays under 60 s.
    const QUICK: Bounds = Bounds {
        shape: Duration::from_secs(22),
        setup: Duration::from_secs(20),
        registration: Duration::from_secs(15),
        subscribe_burst: Duration::from_secs(10),
        registration_burst: Duration::from_secs(10),
        event: Duration::from_secs(3),
        events: Duration::from_secs(15),
        // Whatever is left of the shape's budget, in practice: views complete within it or
        // quick mode fails.
        restart: Duration::from_secs(15),
        final_check: Duration::from_secs(5),
    };

    /// Sized so a full run of both shapes stays under ~10 minutes even when the registry
    /// collapses (it then ends at the first phase that overruns).
    const FULL: Bounds = Bounds {
        shape: Duration::from_secs(280),
        setup: Duration::from_secs(90),
        registration: Duration::from_secs(90),
        subscribe_burst: Duration::from_secs(60),
        registration_burst: Duration::from_secs(60),
        event: Duration::from_secs(10),
        events: Duration::from_secs(120),
        // Ten times the target (every view complete within 10 s of the registry being back).
        restart: Duration::from_secs(100),
        final_check: Duration::from_secs(20),
    };
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn number(name: &str, default: usize) -> Result<usize, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| format!("{name}={v}: use a positive number")),
    }
}
