//! Stardust against tarpc, a naive hand-written RPC ("raw") and the bound of one connection
//! ("ceiling"), on the same two-method service (see `rpc/service.rs`); `stardust-tls` is
//! Stardust over TLS 1.3 (rustls) with a self-signed certificate made at start-up, and
//! `stardust-agent` the same client as `stardust` calling through a sidecar agent (its server
//! process hosts a development registry, the provider registered there and the agent; the
//! report prints the latency the agent hop adds), and `stardust-balanced` a `Stardust::client`
//! proxy that finds the provider through a registry in the server process and balances per
//! call (the report prints what that path adds over a fixed-address client); `stardust-rules10`
//! is that path with 10 traffic rules for the service (`stardust::traffic`).
//!
//! ```text
//! cargo bench --bench rpc                                  # full run: 3 rounds, medians
//! STARDUST_BENCH_QUICK=1 cargo test --bench rpc            # CI smoke run, debug build
//! STARDUST_BENCH_ONLY=stardust,raw STARDUST_BENCH_SCENARIOS=seq-add cargo bench --bench rpc
//! ```
//!
//! How a measurement is taken:
//! - Provider and consumer are separate processes: for every (implementation, scenario, round)
//!   this binary re-executes itself as a server (`STARDUST_BENCH_ROLE=server`,
//!   `STARDUST_BENCH_IMPL=...`), reads the port it prints, and asks it for "stats" on stdin
//!   (CPU time, peak RSS, socket write syscalls) before and after the measured phase. A fresh
//!   server per scenario makes its peak RSS that scenario's.
//! - Both processes run a multi-threaded tokio runtime with 2 workers, on 127.0.0.1 only, with a
//!   bounded number of calls and a timeout per phase.
//! - Each run does a warm-up phase (10% of the calls) first, then the measured phase.
//! - `seq-add` pins client and server to different CPUs: unpinned, this VM's latency is bimodal
//!   (~5 µs when both land on one core, ~60 µs across cores), which would make medians of a few
//!   rounds meaningless. Throughput scenarios run unpinned, letting the scheduler balance.
//! - Implementations run interleaved (the order rotates each round) and every number reported
//!   is a median over rounds, so drift of the machine hits all of them alike.
//! - A failed call, a wrong result or a timeout makes the process exit non-zero (after the
//!   report); nothing about speed is asserted.
//!
//! Environment: `STARDUST_BENCH_QUICK=1|0` (default: full under `cargo bench`, which passes
//! `--bench`, quick otherwise, so a stray `cargo test --all-targets` stays short),
//! `STARDUST_BENCH_ONLY`, `STARDUST_BENCH_SCENARIOS` (comma lists), `STARDUST_BENCH_ROUNDS`.
//! Other command-line arguments (cargo passes `--bench` or test filters) are ignored.

#[path = "rpc/ceiling.rs"]
mod ceiling;
#[path = "rpc/drive.rs"]
mod drive;
#[path = "rpc/local.rs"]
mod local;
#[path = "rpc/process.rs"]
mod process;
#[path = "rpc/raw_impl.rs"]
mod raw_impl;
#[path = "rpc/report.rs"]
mod report;
#[path = "rpc/service.rs"]
mod service;
#[path = "rpc/socket_ceiling.rs"]
mod socket_ceiling;
#[path = "rpc/stardust_impl.rs"]
mod stardust_impl;
#[path = "rpc/sys.rs"]
mod sys;
#[path = "rpc/tarpc_impl.rs"]
mod tarpc_impl;

use drive::{drive, drive_ceiling, drive_socket_ceiling};
use process::{ServerProcess, server_main};

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use report::{Row, Sample, ServerStats};

const ROLE_ENV: &str = "STARDUST_BENCH_ROLE";
const IMPL_ENV: &str = "STARDUST_BENCH_IMPL";
const CPU_ENV: &str = "STARDUST_BENCH_CPU";

/// The scenario whose ratio compares p50 latency instead of throughput.
const LATENCY_SCENARIO: &str = "seq-add";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Impl {
    Stardust,
    /// Stardust over TLS 1.3 (rustls, AES-GCM or ChaCha20 as negotiated).
    StardustTls,
    /// The `stardust` client through a local agent (`stardust::agent`) to the provider.
    StardustAgent,
    /// A `Stardust::client` proxy: the provider found through a registry, picked per call by
    /// the balancer (the path applications use).
    StardustBalanced,
    /// `stardust-balanced` with 10 traffic rules for the service (5 routes, 5 faults; the
    /// last route matches every call, the faults none): what evaluating rules costs a call.
    StardustRules,
    Tarpc,
    Raw,
    Ceiling,
    /// Blocking sockets and preallocated buffers, no framework (`rpc/socket_ceiling.rs`): the
    /// bound for large payloads. Runs only where the payload is at least 64 KiB.
    SocketCeiling,
}

const IMPLS: [Impl; 9] = [
    Impl::Stardust,
    Impl::StardustTls,
    Impl::StardustAgent,
    Impl::StardustBalanced,
    Impl::StardustRules,
    Impl::Tarpc,
    Impl::Raw,
    Impl::Ceiling,
    Impl::SocketCeiling,
];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Stardust => "stardust",
            Impl::StardustTls => "stardust-tls",
            Impl::StardustAgent => "stardust-agent",
            Impl::StardustBalanced => "stardust-balanced",
            Impl::StardustRules => "stardust-rules10",
            Impl::Tarpc => "tarpc",
            Impl::Raw => "raw",
            Impl::Ceiling => "ceiling",
            Impl::SocketCeiling => "socket-ceiling",
        }
    }

    fn from_name(name: &str) -> Option<Impl> {
        IMPLS.into_iter().find(|i| i.name() == name)
    }

    /// The server process it talks to: the ceiling is a client of the raw server.
    fn server(self) -> Impl {
        match self {
            Impl::Ceiling => Impl::Raw,
            other => other,
        }
    }
}

struct Scenario {
    name: &'static str,
    /// Connections (clients); outstanding calls are spread evenly over them.
    conns: usize,
    /// Calls in flight at once: that many caller tasks, or the ceiling's total window.
    outstanding: usize,
    calls: u64,
    warmup: u64,
    /// `None`: `add`; `Some(n)`: `echo` of n bytes.
    payload: Option<usize>,
    /// Client and server on different, fixed CPUs.
    pinned: bool,
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    // name, connections, outstanding, calls (full, quick), payload, pinned
    type Entry = (&'static str, usize, usize, u64, u64, Option<usize>, bool);
    let table: [Entry; 5] = [
        ("seq-add", 1, 1, 20_000, 2_000, None, true),
        ("pipe-add-c64", 1, 64, 200_000, 3_000, None, false),
        ("pipe-add-c256-4conn", 4, 256, 400_000, 4_000, None, false),
        ("echo-1k-c64", 1, 64, 200_000, 3_000, Some(1024), false),
        ("echo-64k-c8", 1, 8, 20_000, 500, Some(64 * 1024), false),
    ];
    table
        .into_iter()
        .map(|(name, conns, outstanding, full, small, payload, pinned)| {
            let calls = if quick { small } else { full };
            Scenario {
                name,
                conns,
                outstanding,
                calls,
                warmup: calls / 10,
                payload,
                pinned,
            }
        })
        .collect()
}

struct Config {
    quick: bool,
    rounds: usize,
    impls: Vec<Impl>,
    scenarios: Vec<Scenario>,
    /// Whether to run `local-add` (in-process calls; `rpc/local.rs`).
    local: bool,
    phase_timeout: Duration,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let quick = match var("STARDUST_BENCH_QUICK").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => return Err(format!("STARDUST_BENCH_QUICK={other}: use 1 or 0")),
            None => !std::env::args().any(|a| a == "--bench"),
        };
        let mut impls = IMPLS.to_vec();
        if let Some(only) = var("STARDUST_BENCH_ONLY") {
            let wanted = parse_list(&only, |n| Impl::from_name(n).is_some(), "implementation")?;
            impls.retain(|i| wanted.iter().any(|w| w == i.name()));
        }
        let mut scenarios = scenarios(quick);
        let mut local = true;
        if let Some(only) = var("STARDUST_BENCH_SCENARIOS") {
            let mut known: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
            known.push(local::SCENARIO);
            let wanted = parse_list(&only, |n| known.contains(&n), "scenario")?;
            scenarios.retain(|s| wanted.iter().any(|w| w == s.name));
            local = wanted.iter().any(|w| w == local::SCENARIO);
        }
        let rounds = match var("STARDUST_BENCH_ROUNDS") {
            Some(r) => r
                .parse()
                .ok()
                .filter(|&r: &usize| r > 0)
                .ok_or_else(|| format!("STARDUST_BENCH_ROUNDS={r}: use a positive number"))?,
            None if quick => 1,
            None => 3,
        };
        Ok(Config {
            quick,
            rounds,
            impls,
            scenarios,
            local,
            phase_timeout: Duration::from_secs(if quick { 120 } else { 300 }),
        })
    }
}

fn parse_list(list: &str, known: impl Fn(&str) -> bool, what: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
    match names.iter().find(|n| !known(n)) {
        Some(bad) => Err(format!("unknown {what} `{bad}`")),
        None => Ok(names),
    }
}

fn main() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("server") {
        server_main();
    }
    let config = Config::from_env().unwrap_or_else(|e| {
        eprintln!("rpc bench: {e}");
        std::process::exit(2);
    });
    std::process::exit(run_all(&config));
}

// ---------------------------------------------------------------------------------- consumer

fn run_all(cfg: &Config) -> i32 {
    let meta = report::Meta {
        date: sys::utc_date(),
        nproc: sys::cpu_count(),
        cpu_model: sys::cpu_model(),
        load: sys::load_average(),
        rounds: cfg.rounds,
        quick: cfg.quick,
    };
    eprintln!(
        "rpc bench: {} mode, {} round(s), {} × {} runs, {} CPUs ({})",
        if cfg.quick { "QUICK" } else { "full" },
        cfg.rounds,
        cfg.scenarios.len(),
        cfg.impls.len(),
        meta.nproc,
        meta.cpu_model
    );
    let started = Instant::now();
    let mut samples: HashMap<(&str, Impl), Vec<Sample>> = HashMap::new();
    let mut failures = Vec::new();
    for round in 0..cfg.rounds {
        for sc in &cfg.scenarios {
            for k in 0..cfg.impls.len() {
                let imp = cfg.impls[(k + round) % cfg.impls.len()];
                if !runs_in(imp, sc) {
                    continue;
                }
                let label = format!(
                    "[{}/{}] {:<20} {:<14}",
                    round + 1,
                    cfg.rounds,
                    sc.name,
                    imp.name()
                );
                match run_one(imp, sc, cfg) {
                    Ok(sample) => {
                        eprintln!("{label} {}", report::sample_line(&sample));
                        samples.entry((sc.name, imp)).or_default().push(sample);
                    }
                    Err(e) => {
                        eprintln!("{label} FAILED: {e}");
                        failures.push(format!("{} {}: {e}", sc.name, imp.name()));
                    }
                }
            }
        }
    }
    eprintln!(
        "rpc bench: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for sc in &cfg.scenarios {
        for imp in &cfg.impls {
            if let Some(s) = samples.get(&(sc.name, *imp)) {
                rows.push(Row::new(sc.name, imp.name(), s));
            }
        }
    }
    println!();
    report::print_lines(&rows);
    println!();
    report::print_ratios(&rows, LATENCY_SCENARIO);
    println!();
    report::print_versus_direct(&rows);
    println!();
    report::print_markdown(&rows, LATENCY_SCENARIO, &meta);
    if cfg.local {
        println!();
        local::run(cfg.rounds, cfg.quick)
            .map(|rows| local::print(&rows))
            .unwrap_or_else(|e| failures.push(format!("{}: {e}", local::SCENARIO)));
    }

    if failures.is_empty() {
        0
    } else {
        eprintln!("\nrpc bench: {} run(s) FAILED:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        1
    }
}

/// Whether `imp` runs in `sc` (the socket ceiling only with payloads of 64 KiB and more).
fn runs_in(imp: Impl, sc: &Scenario) -> bool {
    imp != Impl::SocketCeiling || sc.payload.is_some_and(|n| n >= 64 * 1024)
}

/// One (implementation, scenario, round): a fresh server process, a fresh client runtime.
/// The ceilings always run pinned (client on CPU 0, server on CPU 1): a bound should not
/// depend on where the scheduler happens to put two threads.
fn run_one(imp: Impl, sc: &Scenario, cfg: &Config) -> Result<Sample, String> {
    let ceiling = matches!(imp, Impl::Ceiling | Impl::SocketCeiling);
    let pin = (sc.pinned || ceiling) && sys::cpu_count() >= 2;
    let mut server = ServerProcess::start(imp.server(), pin.then_some(1))?;
    if pin {
        // Before the runtime exists, so its workers inherit CPU 0.
        sys::pin_to_cpu(0).map_err(|e| format!("cannot pin the client: {e}"))?;
    }
    let result = measure(imp, sc, cfg, &mut server);
    if pin {
        let _ = sys::unpin();
    }
    result
}

fn measure(
    imp: Impl,
    sc: &Scenario,
    cfg: &Config,
    server: &mut ServerProcess,
) -> Result<Sample, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the client runtime: {e}"))?;
    // Everything below, drops included, happens inside the runtime's context.
    let _context = rt.enter();
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let limit = cfg.phase_timeout;
    let mut clients = rt.block_on(bounded(limit, Clients::connect(imp, addr, sc.conns)))?;
    rt.block_on(bounded(limit, clients.phase(sc, sc.warmup, 0)))?;

    let before = server.stats()?;
    let writes_before = sys::socket_writes();
    let cpu_before = sys::usage().cpu_us;
    let (latencies, elapsed) =
        rt.block_on(bounded(limit, clients.phase(sc, sc.calls, sc.warmup)))?;
    let client_cpu_us = sys::usage().cpu_us - cpu_before;
    let client_writes = sys::socket_writes() - writes_before;
    let after = server.stats()?;
    drop(clients);
    let hist = report::histogram_of(&latencies);

    Ok(Sample {
        calls: sc.calls,
        secs: elapsed.as_secs_f64(),
        hist,
        payload: sc.payload,
        server_cpu_us: after.cpu_us - before.cpu_us,
        client_cpu_us,
        server_rss_kib: after.maxrss_kib,
        client_writes,
        server_writes: after.writes - before.writes,
    })
}

/// Latencies of one task, in nanoseconds. Tasks append to a plain vector (a few bytes per call,
/// written sequentially) and the histogram is built once the clocks (wall and CPU) have stopped:
/// an hdrhistogram per task is ~200 KiB of counters, and 256 of them cost page faults and cache
/// misses that showed up as 10% of a profile.
pub(crate) type Latencies = Vec<u64>;

/// What a phase measured: every task's latencies, and the wall time of the whole phase.
pub(crate) type Phase = (Vec<Latencies>, Duration);

async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("timed out after {} s", limit.as_secs()))?
}

/// The connections of one run, per implementation.
enum Clients {
    Stardust(Vec<stardust_impl::Caller>),
    Tarpc(Vec<tarpc_impl::Caller>),
    Raw(Vec<raw_impl::Caller>),
    Ceiling(Vec<TcpStream>),
    SocketCeiling(Vec<std::net::TcpStream>),
}

impl Clients {
    async fn connect(imp: Impl, addr: SocketAddr, n: usize) -> Result<Clients, String> {
        async fn many<C, F: Future<Output = Result<C, String>>>(
            n: usize,
            connect: impl Fn() -> F,
        ) -> Result<Vec<C>, String> {
            let mut all = Vec::with_capacity(n);
            for _ in 0..n {
                all.push(connect().await?);
            }
            Ok(all)
        }
        Ok(match imp {
            Impl::Stardust => {
                Clients::Stardust(many(n, || stardust_impl::connect(addr, false)).await?)
            }
            Impl::StardustTls => {
                Clients::Stardust(many(n, || stardust_impl::connect(addr, true)).await?)
            }
            // A plain client pointed at the agent: what `via_agent` proxies use.
            Impl::StardustAgent => {
                Clients::Stardust(many(n, || stardust_impl::connect(addr, false)).await?)
            }
            // `addr` is the registry's: each client logs in and finds the provider there.
            Impl::StardustBalanced | Impl::StardustRules => {
                Clients::Stardust(many(n, || stardust_impl::connect_balanced(addr)).await?)
            }
            Impl::Tarpc => Clients::Tarpc(many(n, || tarpc_impl::connect(addr)).await?),
            Impl::Raw => Clients::Raw(many(n, || raw_impl::connect(addr)).await?),
            Impl::Ceiling => Clients::Ceiling(many(n, || ceiling::connect(addr)).await?),
            Impl::SocketCeiling => {
                Clients::SocketCeiling(many(n, || async { socket_ceiling::connect(addr) }).await?)
            }
        })
    }

    /// Makes `calls` calls numbered from `seq_base`; returns their latencies and the wall time.
    async fn phase(&mut self, sc: &Scenario, calls: u64, seq_base: u64) -> Result<Phase, String> {
        match self {
            Clients::Stardust(c) => drive(c, sc, calls, seq_base).await,
            Clients::Tarpc(c) => drive(c, sc, calls, seq_base).await,
            Clients::Raw(c) => drive(c, sc, calls, seq_base).await,
            Clients::Ceiling(streams) => drive_ceiling(streams, sc, calls, seq_base).await,
            Clients::SocketCeiling(streams) => {
                drive_socket_ceiling(streams, sc, calls, seq_base).await
            }
        }
    }
}
