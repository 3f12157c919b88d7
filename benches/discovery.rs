//! Discovery at scale: one registry node in a process of its own, a load generator (this
//! process) with N provider sessions and M subscriber sessions, and what the registry does when
//! instances join, leave and crash while everyone watches.
//!
//! ```text
//! cargo bench --bench discovery                                  # full: 10,000 instances, 1,000 subscribers
//! STARDUST_DISCOVERY_QUICK=1 cargo test --bench discovery        # CI: 1,000 x 100, both shapes, < 60 s
//! STARDUST_DISCOVERY_SHAPES=spread cargo bench --bench discovery # one shape
//! ```
//!
//! Two shapes (`STARDUST_DISCOVERY_SHAPES`, comma list):
//! - `one-service`: every instance in ONE service, every subscriber watching it (fan-out's worst
//!   case: a change concerns everyone);
//! - `spread`: the instances spread over `STARDUST_DISCOVERY_SERVICES` services (100; quick 10),
//!   subscriber `j` watching service `j % services`.
//!
//! How a shape runs (see `discovery/run.rs`):
//! - This binary starts itself again as the registry (`STARDUST_DISCOVERY_ROLE=registry`):
//!   `stardust_registry::RegistryNode` with a config file written for the run (memory store,
//!   default 10 s lease TTL, two apps with a deliberately cheap argon2id hash, login throttling
//!   opened up for thousands of sessions from 127.0.0.1, a key file, monitoring on a free
//!   loopback port). Its RSS and CPU come from `/proc/<pid>`, per phase.
//! - Setup: every session connects and logs in (64 at a time). Providers heartbeat every 3 s
//!   with an empty status from then on, spread over the interval, and log in and register again
//!   when a heartbeat is refused, as a real provider does.
//! - Registration: each provider session registers its share (instance `i` goes to session
//!   `i % sessions`), all sessions at once; rate = instances / (first call to last answer).
//! - Subscribe burst: every subscriber calls `subscribe(service, "*")` at once.
//! - Registration burst: a tenth more instances, one call each, all at once, while everyone
//!   watches; timed until all are answered and until every view shows them.
//! - Events, `STARDUST_DISCOVERY_REPEATS` times (20; quick 5): join (register a new instance),
//!   graceful leave (deregister it), crash (close a provider session's connection). Push
//!   latency: from the start of the call (or the close) until each subscriber of the service
//!   sees the change in its view; p50/p99/max over subscribers x repeats.
//! - Registry restart (`discovery/restart.rs`; `STARDUST_DISCOVERY_RESTART=0` skips it): the
//!   registry process is killed (SIGKILL) and started again on the same port with the same
//!   config and key file; every provider and subscriber session comes back at once on a new
//!   connection, `resume`s with its token (a full login if refused), providers register again
//!   and heartbeat, subscribers `watch` again (a snapshot of the new epoch) and follow deltas.
//!   Timed from the new registry accepting connections until every subscriber's view shows all
//!   the live instances of its service; resumes vs. full logins counted by the bench and read
//!   from the registry's `/metrics`. The killed registry's rebuilt views do not count as
//!   instances vanishing; expiries in the restarted one do.
//! - Heartbeat round: every live provider gets one more heartbeat answered. A lease that
//!   expired at any point makes the session's next heartbeat refused, so none goes unseen even
//!   when the phases were short next to the 10 s lease TTL.
//! - Final check: every subscriber's view must equal `discover(service, "*")` (re-asked for a
//!   few seconds while pushes are still on their way).
//!
//! Counted throughout: lease expiries of live providers (heartbeats refused with "registrations
//! expired", and instances leaving a view without the bench removing them), sessions lost, call
//! errors. Every wait is bounded, and a shape as a whole too (280 s; quick 22 s): a phase that
//! overruns, 3 events in a row that some subscriber never sees, the registry exiting or growing
//! past `STARDUST_DISCOVERY_RSS_CAP_MB` (4096; it is then killed) is a collapse: the rest of the
//! shape is skipped, the table says what was seen.
//!
//! Exit status: quick mode panics after the report on any lease expiry, view mismatch, call
//! error or collapse; a full run reports those loudly and exits 0, unless the bench itself could
//! not run.
//!
//! Environment: `STARDUST_DISCOVERY_QUICK=1|0` (default: full under `cargo bench`, which passes
//! `--bench`, quick otherwise), `STARDUST_DISCOVERY_INSTANCES` (10,000; quick 1,000),
//! `STARDUST_DISCOVERY_SESSIONS` (provider sessions: 1,000; quick 100),
//! `STARDUST_DISCOVERY_SUBSCRIBERS` (1,000; quick 100), `STARDUST_DISCOVERY_SERVICES`,
//! `STARDUST_DISCOVERY_SHAPES`, `STARDUST_DISCOVERY_REPEATS`, `STARDUST_DISCOVERY_RSS_CAP_MB`,
//! `STARDUST_DISCOVERY_RESTART=1|0` (the restart phase; default 1).
//! Progress goes to stderr, the markdown tables to stdout.

#[path = "discovery/events.rs"]
mod events;
#[path = "discovery/ledger.rs"]
mod ledger;
#[path = "discovery/metrics.rs"]
mod metrics;
#[path = "discovery/options.rs"]
mod options;
#[path = "discovery/probe.rs"]
mod probe;
#[path = "discovery/procfs.rs"]
mod procfs;
#[path = "discovery/provider.rs"]
mod provider;
#[path = "discovery/registry_process.rs"]
mod registry_process;
#[path = "discovery/report.rs"]
mod report;
#[path = "discovery/restart.rs"]
mod restart;
#[path = "discovery/run.rs"]
mod run;
#[path = "discovery/session.rs"]
mod session;
#[path = "discovery/shape.rs"]
mod shape;
#[path = "discovery/stats.rs"]
mod stats;
#[path = "discovery/subscriber.rs"]
mod subscriber;
#[path = "discovery/view.rs"]
mod view;
#[path = "discovery/watchdog.rs"]
mod watchdog;

use std::time::Instant;

use options::Options;
use shape::Shape;

fn main() {
    if std::env::var(registry_process::ROLE_ENV).as_deref() == Ok("registry") {
        registry_process::registry_main();
    }
    let opts = Options::from_env().unwrap_or_else(|e| {
        eprintln!("discovery bench: {e}");
        std::process::exit(2);
    });
    raise_fd_limit();
    let header = report::header(
        opts.quick,
        procfs::cpu_count(),
        &procfs::cpu_model(),
        &procfs::load_average(),
        &procfs::utc_date(),
    );
    eprintln!("discovery bench: {header}");
    let started = Instant::now();
    let mut reports = Vec::new();
    for &kind in &opts.shapes {
        let shape = Shape::new(kind, &opts);
        eprintln!("[{}] {}", kind.name(), shape.describe());
        reports.push(run::run_shape(shape, &opts));
    }
    eprintln!(
        "discovery bench: done in {} s",
        stats::secs(started.elapsed())
    );

    println!("\n{header}\n");
    for r in &reports {
        println!("{}", r.markdown());
    }
    let problems: Vec<String> = reports.iter().flat_map(|r| r.problems()).collect();
    if !problems.is_empty() {
        eprintln!("\ndiscovery bench: PROBLEMS:");
        for p in &problems {
            eprintln!("  !!! {p}");
        }
    }
    if opts.quick && !problems.is_empty() {
        panic!(
            "discovery bench (quick mode): {} problem(s), first: {}",
            problems.len(),
            problems[0]
        );
    }
    if reports.iter().any(|r| r.failure.is_some()) {
        std::process::exit(1);
    }
}

/// Thousands of sessions need as many sockets (and the registry, started from here, inherits
/// the limit): the soft limit on open files goes up to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill in and read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
