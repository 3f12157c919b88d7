//! One server stream: Stardust against gRPC (tonic server streaming over HTTP/2) and a naive
//! hand-written baseline ("raw": length-prefixed items on a plain TCP connection), on the same
//! two-method service (see `stream/service.rs`). tarpc, the unary benchmark's competitor,
//! cannot stream.
//!
//! Scenarios:
//! - `stream-add-items`: one stream of 1,000,000 `u64` items; items/s from opening the stream
//!   to its end;
//! - `stream-64k`: one stream of 16,384 items of 64 KiB (1 GiB); MB/s of payload (10^6 B);
//! - `slow-reader`: an endless stream of 64 KiB items whose consumer takes one item every 2 ms
//!   for 5 s; the producer's resident set is sampled every 50 ms, and the row reports its
//!   largest rise over the level before the stream opened, and how many items the producer
//!   made against how many the consumer read. Flow control should hold both to a few windows.
//!
//! ```text
//! cargo bench --bench stream                               # full run: 3 rounds, medians
//! STARDUST_STREAM_QUICK=1 cargo test --bench stream        # CI smoke run, debug build
//! STARDUST_STREAM_ONLY=stardust,raw STARDUST_STREAM_SCENARIOS=stream-64k cargo bench --bench stream
//! ```
//!
//! How a measurement is taken (as in `benches/rpc.rs`):
//! - Provider and consumer are separate processes: for every (implementation, scenario, round)
//!   this binary re-executes itself as a server (`STARDUST_STREAM_ROLE=server`,
//!   `STARDUST_STREAM_IMPL=...`), reads the port it prints, and asks it for "stats" on stdin
//!   (CPU time, resident set, chunks produced, socket write syscalls) around the measured phase.
//! - Both processes run a multi-threaded tokio runtime with 2 workers, on 127.0.0.1 only, over
//!   one connection; the consumer is a task on its runtime. Unpinned, like the unary
//!   benchmark's throughput scenarios.
//! - The throughput scenarios first read a warm-up stream (10% of the items) on the same
//!   connection, then the measured one.
//! - Implementations run interleaved (the order rotates each round) and every number reported
//!   is a median over rounds.
//! - A failed stream, a wrong or missing item, or a timeout makes the process exit non-zero
//!   (after the report); nothing about speed is asserted. Quick mode (few items, 1 s of slow
//!   reading) is the CI smoke test: every implementation streams end to end with exact counts.
//!
//! Environment: `STARDUST_STREAM_QUICK=1|0` (default: full under `cargo bench`, which passes
//! `--bench`, quick otherwise), `STARDUST_STREAM_ONLY`, `STARDUST_STREAM_SCENARIOS` (comma
//! lists), `STARDUST_BENCH_ROUNDS`.

#[path = "stream/process.rs"]
mod process;
#[path = "stream/raw_impl.rs"]
mod raw_impl;
#[path = "stream/report.rs"]
mod report;
#[path = "stream/service.rs"]
mod service;
#[path = "stream/stardust_impl.rs"]
mod stardust_impl;
// The unary benchmark's OS helpers: resource usage, the socket write counter, machine facts.
// Its CPU pinning is not used here.
#[allow(dead_code)]
#[path = "rpc/sys.rs"]
mod sys;
#[path = "stream/tonic_impl.rs"]
mod tonic_impl;

use std::collections::HashMap;
use std::future::Future;
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use process::ServerProcess;
use report::{Row, Sample, ServerStats, Slow};
use service::{Chunk, Client, Source};

const ROLE_ENV: &str = "STARDUST_STREAM_ROLE";
const IMPL_ENV: &str = "STARDUST_STREAM_IMPL";

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Impl {
    Stardust,
    Tonic,
    Raw,
}

const IMPLS: [Impl; 3] = [Impl::Stardust, Impl::Tonic, Impl::Raw];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Stardust => "stardust",
            Impl::Tonic => "tonic",
            Impl::Raw => "raw",
        }
    }

    fn from_name(name: &str) -> Option<Impl> {
        IMPLS.into_iter().find(|i| i.name() == name)
    }
}

#[derive(Clone, Copy)]
enum Shape {
    /// `n` small items, after a warm-up stream of `warmup`.
    Items { n: u64, warmup: u64 },
    /// `n` chunks of `size` bytes, after a warm-up stream of `warmup`.
    Chunks { n: u64, size: u32, warmup: u64 },
    /// An endless stream of `size`-byte chunks, one read every `every`, for `read_for`.
    SlowReader {
        size: u32,
        every: Duration,
        read_for: Duration,
    },
}

struct Scenario {
    name: &'static str,
    shape: Shape,
}

const KIB64: u32 = 64 * 1024;

fn scenarios(quick: bool) -> Vec<Scenario> {
    let pick = |full: u64, small: u64| if quick { small } else { full };
    vec![
        Scenario {
            name: "stream-add-items",
            shape: Shape::Items {
                n: pick(1_000_000, 20_000),
                warmup: pick(100_000, 2_000),
            },
        },
        Scenario {
            name: "stream-64k",
            shape: Shape::Chunks {
                n: pick(16_384, 160),
                size: KIB64,
                warmup: pick(1_638, 16),
            },
        },
        Scenario {
            name: "slow-reader",
            shape: Shape::SlowReader {
                size: KIB64,
                every: Duration::from_millis(2),
                read_for: Duration::from_secs(pick(5, 1)),
            },
        },
    ]
}

struct Config {
    quick: bool,
    rounds: usize,
    impls: Vec<Impl>,
    scenarios: Vec<Scenario>,
    phase_timeout: Duration,
    /// The whole run's bound: a hung run fails instead of holding CI.
    run_timeout: Duration,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let quick = match var("STARDUST_STREAM_QUICK").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") => false,
            Some(other) => return Err(format!("STARDUST_STREAM_QUICK={other}: use 1 or 0")),
            None => !std::env::args().any(|a| a == "--bench"),
        };
        let mut impls = IMPLS.to_vec();
        if let Some(only) = var("STARDUST_STREAM_ONLY") {
            let wanted = parse_list(&only, |n| Impl::from_name(n).is_some(), "implementation")?;
            impls.retain(|i| wanted.iter().any(|w| w == i.name()));
        }
        let mut scenarios = scenarios(quick);
        if let Some(only) = var("STARDUST_STREAM_SCENARIOS") {
            let known: Vec<&str> = scenarios.iter().map(|s| s.name).collect();
            let wanted = parse_list(&only, |n| known.contains(&n), "scenario")?;
            scenarios.retain(|s| wanted.iter().any(|w| w == s.name));
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
            phase_timeout: Duration::from_secs(if quick { 30 } else { 300 }),
            run_timeout: Duration::from_secs(if quick { 90 } else { 3600 }),
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
        eprintln!("stream bench: {e}");
        std::process::exit(2);
    });
    let limit = config.run_timeout;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        // Server processes exit when their stdin closes, i.e. with this process.
        eprintln!(
            "stream bench: the run took over {} s; giving up",
            limit.as_secs()
        );
        std::process::exit(1);
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
        "stream bench: {} mode, {} round(s), {} × {} runs, {} CPUs ({})",
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
                let label = format!(
                    "[{}/{}] {:<17} {:<9}",
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
        "stream bench: done in {:.1} s",
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
    report::print_targets(&rows);
    println!();
    report::print_markdown(&rows, &meta);

    if failures.is_empty() {
        0
    } else {
        eprintln!("\nstream bench: {} run(s) FAILED:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        1
    }
}

/// One (implementation, scenario, round): a fresh server process, a fresh client runtime, one
/// connection.
fn run_one(imp: Impl, sc: &Scenario, cfg: &Config) -> Result<Sample, String> {
    let mut server = ServerProcess::start(imp)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the client runtime: {e}"))?;
    // Everything below, drops included, happens inside the runtime's context.
    let _context = rt.enter();
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let limit = cfg.phase_timeout;
    match imp {
        Impl::Stardust => {
            let client = rt.block_on(bounded(limit, stardust_impl::connect(addr, limit)))?;
            measure(&rt, client, sc, limit, &mut server)
        }
        Impl::Tonic => {
            let client = rt.block_on(bounded(limit, tonic_impl::connect(addr)))?;
            measure(&rt, client, sc, limit, &mut server)
        }
        Impl::Raw => {
            let client = rt.block_on(bounded(limit, raw_impl::connect(addr)))?;
            measure(&rt, client, sc, limit, &mut server)
        }
    }
}

/// Runs `phase` as a task of the runtime (the consumer is a task, as in an application) and
/// waits for it from this thread, asking the server for its stats every 50 ms meanwhile when
/// `watch` is set. Returns the client, the phase's outcome and the stats taken.
fn run_phase<C, T, F>(
    rt: &tokio::runtime::Runtime,
    mut client: C,
    limit: Duration,
    server: Option<&mut ServerProcess>,
    phase: F,
) -> Result<(C, T, Vec<ServerStats>), String>
where
    C: Client,
    T: Send + 'static,
    F: for<'a> FnOnce(
            &'a mut C,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>
        + Send
        + 'static,
{
    let task = rt.spawn(async move {
        let outcome = bounded(limit, phase(&mut client)).await;
        (client, outcome)
    });
    let mut watched = Vec::new();
    if let Some(server) = server {
        while !task.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            watched.push(server.stats()?);
        }
    }
    let (client, outcome) = rt
        .block_on(task)
        .map_err(|e| format!("consumer task died: {e}"))?;
    Ok((client, outcome?, watched))
}

fn measure<C: Client>(
    rt: &tokio::runtime::Runtime,
    client: C,
    sc: &Scenario,
    limit: Duration,
    server: &mut ServerProcess,
) -> Result<Sample, String> {
    let (warmup, item_bytes) = match sc.shape {
        Shape::Items { warmup, .. } => (warmup, None),
        Shape::Chunks { warmup, size, .. } => (warmup, Some(size)),
        Shape::SlowReader { .. } => (0, None),
    };
    let client = if warmup > 0 {
        let (client, _, _) = run_phase(rt, client, limit, None, move |c| {
            Box::pin(stream_phase(c, warmup, item_bytes))
        })?;
        client
    } else {
        client
    };

    let before = server.stats()?;
    let cpu_before = sys::usage().cpu_us;
    let (client, (items, secs, slow), after) = match sc.shape {
        Shape::Items { n, .. } | Shape::Chunks { n, .. } => {
            let (client, (items, secs), _) = run_phase(rt, client, limit, None, move |c| {
                Box::pin(stream_phase(c, n, item_bytes))
            })?;
            (client, (items, secs, None), server.stats()?)
        }
        Shape::SlowReader {
            size,
            every,
            read_for,
        } => {
            let (client, (items, secs), watched) =
                run_phase(rt, client, limit, Some(&mut *server), move |c| {
                    Box::pin(slow_phase(c, size, every, read_for))
                })?;
            let after = *watched.last().ok_or("the slow reader ended at once")?;
            let peak = watched.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            let slow = Slow {
                rss_growth_kib: peak.saturating_sub(before.rss_kib),
                produced: after.produced - before.produced,
            };
            (client, (items, secs, Some(slow)), after)
        }
    };
    let client_cpu_us = sys::usage().cpu_us - cpu_before;
    drop(client);
    Ok(Sample {
        items,
        secs,
        item_bytes: item_bytes.map(u64::from),
        server_cpu_us: after.cpu_us - before.cpu_us,
        client_cpu_us,
        server_writes: after.writes - before.writes,
        slow,
    })
}

/// Reads one stream of `n` items (of `size` bytes, or small items), checking each; returns the
/// count and the seconds from opening the stream to its end.
async fn stream_phase<C: Client>(
    client: &mut C,
    n: u64,
    size: Option<u32>,
) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let mut seq = 0;
    match size {
        None => {
            let mut items = client.items(n).await?;
            while let Some(item) = items.next_item().await {
                service::check_item(seq, item.map_err(|e| format!("item {seq}: {e}"))?)?;
                seq += 1;
            }
        }
        Some(size) => {
            let chunk = Chunk::new(size as usize);
            let mut chunks = client.chunks(n, size).await?;
            while let Some(item) = chunks.next_item().await {
                chunk.check(seq, &item.map_err(|e| format!("chunk {seq}: {e}"))?)?;
                seq += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if seq != n {
        return Err(format!("the stream ended after {seq} items of {n}"));
    }
    Ok((seq, secs))
}

/// Opens an endless stream of chunks and reads one every `every` for `read_for`, then drops it.
async fn slow_phase<C: Client>(
    client: &mut C,
    size: u32,
    every: Duration,
    read_for: Duration,
) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let chunk = Chunk::new(size as usize);
    let mut chunks = client.chunks(u64::MAX, size).await?;
    let mut seq = 0;
    while start.elapsed() < read_for {
        match chunks.next_item().await {
            Some(item) => chunk.check(seq, &item.map_err(|e| format!("chunk {seq}: {e}"))?)?,
            None => return Err(format!("the endless stream ended after {seq} chunks")),
        }
        seq += 1;
        tokio::time::sleep(every).await;
    }
    Ok((seq, start.elapsed().as_secs_f64()))
}

async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("timed out after {} s", limit.as_secs()))?
}

// ---------------------------------------------------------------------------------- provider

/// The resident set of this process now (`VmRSS`), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The server role: start the implementation, print the port, answer "stats" until stdin closes.
fn server_main() -> ! {
    let die = |msg: String| -> ! {
        eprintln!("stream bench server: {msg}");
        std::process::exit(1);
    };
    let imp = std::env::var(IMPL_ENV)
        .ok()
        .and_then(|n| Impl::from_name(&n))
        .unwrap_or_else(|| die(format!("{IMPL_ENV} must name an implementation")));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("cannot build the runtime: {e}")));
    let started = rt.block_on(async {
        match imp {
            Impl::Stardust => stardust_impl::serve().await,
            Impl::Tonic => tonic_impl::serve().await,
            Impl::Raw => raw_impl::serve().await,
        }
    });
    let (port, _keep_serving) = started.unwrap_or_else(|e| die(format!("cannot serve: {e}")));
    println!("{port}");
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "stats" => {
                let stats = ServerStats {
                    cpu_us: sys::usage().cpu_us,
                    rss_kib: rss_kib(),
                    produced: service::produced(),
                    writes: sys::socket_writes(),
                };
                println!("{}", stats.to_line());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The client hung up: exit without a graceful shutdown.
    std::process::exit(0);
}
