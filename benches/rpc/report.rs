//! Turning measurements into numbers: one sample per (implementation, scenario, round), medians
//! over rounds, and the three printed forms (plain lines, ratio table, markdown for RESULTS.md).

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds, 1 ns .. 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// One histogram of every latency (ns) recorded by the tasks of a phase.
pub fn histogram_of(latencies: &[Vec<u64>]) -> Histogram<u64> {
    let mut hist = histogram();
    for &ns in latencies.iter().flatten() {
        hist.saturating_record(ns);
    }
    hist
}

/// What the server process reports when asked "stats": its resource usage so far.
#[derive(Debug, Clone, Copy)]
pub struct ServerStats {
    pub cpu_us: u64,
    pub maxrss_kib: u64,
    pub writes: u64,
}

impl ServerStats {
    pub fn to_line(self) -> String {
        format!(
            "cpu_us={} maxrss_kib={} writes={}",
            self.cpu_us, self.maxrss_kib, self.writes
        )
    }

    pub fn parse(line: &str) -> Result<ServerStats, String> {
        let field = |key: &str| -> Result<u64, String> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("server stats line {line:?} lacks {key}"))
        };
        Ok(ServerStats {
            cpu_us: field("cpu_us")?,
            maxrss_kib: field("maxrss_kib")?,
            writes: field("writes")?,
        })
    }
}

/// One measured phase of one implementation in one scenario.
pub struct Sample {
    pub calls: u64,
    pub secs: f64,
    pub hist: Histogram<u64>,
    pub payload: Option<usize>,
    /// Server CPU time spent during the phase.
    pub server_cpu_us: u64,
    /// Client CPU time spent during the phase (all of the bench process, which does nothing
    /// else meanwhile).
    pub client_cpu_us: u64,
    /// Server peak RSS over its whole life (it served only this scenario).
    pub server_rss_kib: u64,
    pub client_writes: u64,
    pub server_writes: u64,
}

/// Medians over rounds, each metric on its own.
pub struct Row {
    pub scenario: &'static str,
    pub imp: &'static str,
    pub calls_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mb_per_sec: Option<f64>,
    pub server_cpu_us_per_call: f64,
    pub client_cpu_us_per_call: f64,
    pub server_rss_mib: f64,
    pub client_frames_per_write: Option<f64>,
    pub server_frames_per_write: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = samples.iter().filter_map(f).collect();
    (!values.is_empty()).then(|| median(values))
}

/// Frames per write syscall; `None` when the counter saw no write (it would be a bug).
fn per_write(calls: u64, writes: u64) -> Option<f64> {
    (writes > 0).then(|| calls as f64 / writes as f64)
}

impl Row {
    pub fn new(scenario: &'static str, imp: &'static str, samples: &[Sample]) -> Row {
        let q = |q: f64| move |s: &Sample| Some(s.hist.value_at_quantile(q) as f64 / 1e3);
        Row {
            scenario,
            imp,
            calls_per_sec: median_of(samples, |s| Some(s.calls as f64 / s.secs)).unwrap_or(0.0),
            p50_us: median_of(samples, q(0.5)).unwrap_or(0.0),
            p99_us: median_of(samples, q(0.99)).unwrap_or(0.0),
            p999_us: median_of(samples, q(0.999)).unwrap_or(0.0),
            mb_per_sec: median_of(samples, |s| {
                s.payload
                    .map(|bytes| (bytes as u64 * s.calls) as f64 / s.secs / 1e6)
            }),
            server_cpu_us_per_call: median_of(samples, |s| {
                Some(s.server_cpu_us as f64 / s.calls as f64)
            })
            .unwrap_or(0.0),
            client_cpu_us_per_call: median_of(samples, |s| {
                Some(s.client_cpu_us as f64 / s.calls as f64)
            })
            .unwrap_or(0.0),
            server_rss_mib: median_of(samples, |s| Some(s.server_rss_kib as f64 / 1024.0))
                .unwrap_or(0.0),
            client_frames_per_write: median_of(samples, |s| per_write(s.calls, s.client_writes)),
            server_frames_per_write: median_of(samples, |s| per_write(s.calls, s.server_writes)),
        }
    }

    /// The number the ratio table compares: throughput, or p50 latency for the one-at-a-time
    /// scenario (where throughput is just its inverse, but latency is what one cares about).
    fn key(&self, latency_scenario: bool) -> f64 {
        if latency_scenario {
            self.p50_us
        } else {
            self.calls_per_sec
        }
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
}

/// A one-line summary of a single sample (progress output).
pub fn sample_line(s: &Sample) -> String {
    format!(
        "{:>9.0} calls/s  p50 {:.1} µs  p99 {:.1} µs",
        s.calls as f64 / s.secs,
        s.hist.value_at_quantile(0.5) as f64 / 1e3,
        s.hist.value_at_quantile(0.99) as f64 / 1e3
    )
}

/// One plain line per implementation and scenario.
pub fn print_lines(rows: &[Row]) {
    println!(
        "{:<20} {:<14} {:>10} {:>8} {:>8} {:>9} {:>7} {:>12} {:>12} {:>8} {:>14}",
        "scenario",
        "impl",
        "calls/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "MB/s",
        "srv µs/call",
        "cli µs/call",
        "srv MiB",
        "frames/write c/s"
    );
    for r in rows {
        println!(
            "{:<20} {:<14} {:>10.0} {:>8.1} {:>8.1} {:>9.1} {:>7} {:>12.2} {:>12.2} {:>8.1} {:>7}/{}",
            r.scenario,
            r.imp,
            r.calls_per_sec,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            opt(r.mb_per_sec, 0),
            r.server_cpu_us_per_call,
            r.client_cpu_us_per_call,
            r.server_rss_mib,
            opt(r.client_frames_per_write, 2),
            opt(r.server_frames_per_write, 2),
        );
    }
}

/// Stardust's ratio to each other implementation, per scenario: `(scenario, [tarpc, raw,
/// ceiling])`. `None` where either side was not run.
fn ratios(rows: &[Row], latency_scenario: &str) -> Vec<(&'static str, [Option<f64>; 4])> {
    let mut out = Vec::new();
    for sd in rows.iter().filter(|r| r.imp == "stardust") {
        let lat = sd.scenario == latency_scenario;
        let vs = ["tarpc", "raw", "ceiling", "socket-ceiling"].map(|other| {
            rows.iter()
                .find(|r| r.scenario == sd.scenario && r.imp == other)
                .map(|o| sd.key(lat) / o.key(lat))
        });
        out.push((sd.scenario, vs));
    }
    out
}

const RATIO_LEGEND: &str = "Throughput scenarios: Stardust calls/s ÷ theirs (above 1 = Stardust faster). \
     seq-add: Stardust p50 ÷ theirs (below 1 = Stardust faster).";

pub fn print_ratios(rows: &[Row], latency_scenario: &str) {
    println!("Stardust vs the others. {RATIO_LEGEND}");
    println!(
        "{:<20} {:>9} {:>9} {:>10} {:>17}",
        "scenario", "vs tarpc", "vs raw", "vs ceiling", "vs socket-ceiling"
    );
    for (scenario, vs) in ratios(rows, latency_scenario) {
        let [t, r, c, s] = vs.map(|v| opt(v, 2));
        println!("{scenario:<20} {t:>9} {r:>9} {c:>10} {s:>17}");
    }
}

/// What another way of calling the same provider adds over the `stardust` row (a direct
/// client), per scenario where both ran: `(scenario, p50 added µs, p99 added µs, throughput
/// other ÷ direct)`.
fn versus_direct(rows: &[Row], other: &str) -> Vec<(&'static str, f64, f64, f64)> {
    rows.iter()
        .filter(|r| r.imp == "stardust")
        .filter_map(|direct| {
            let o = rows
                .iter()
                .find(|r| r.scenario == direct.scenario && r.imp == other)?;
            Some((
                direct.scenario,
                o.p50_us - direct.p50_us,
                o.p99_us - direct.p99_us,
                o.calls_per_sec / direct.calls_per_sec,
            ))
        })
        .collect()
}

/// The rows compared with the direct `stardust` row: (row, legend, ratio column).
const VERSUS_DIRECT: [(&str, &str, &str); 2] = [
    (
        "stardust-balanced",
        "The balanced path: stardust-balanced (a `Stardust::client` proxy: provider found through \
         the registry, picked per call by the balancer, retry budget and outlier ejection on) \
         against stardust (a `Client` on a fixed address). Latency added in µs; throughput \
         balanced ÷ direct.",
        "balanced ÷ direct",
    ),
    (
        "stardust-agent",
        "The agent hop: stardust-agent (consumer → local agent → provider) against stardust \
         (consumer → provider), same client. Latency added in µs; throughput agent ÷ direct.",
        "agent ÷ direct",
    ),
];

/// What the balanced path and the agent hop cost, for the rows that ran.
pub fn print_versus_direct(rows: &[Row]) {
    for (other, legend, _) in VERSUS_DIRECT {
        let hop = versus_direct(rows, other);
        if hop.is_empty() {
            continue;
        }
        println!("{legend}");
        println!(
            "{:<20} {:>12} {:>12} {:>12}",
            "scenario", "p50 added", "p99 added", "throughput"
        );
        for (scenario, p50, p99, ratio) in hop {
            println!("{scenario:<20} {p50:>+12.1} {p99:>+12.1} {ratio:>12.2}");
        }
    }
}

/// Facts printed above the markdown tables.
pub struct Meta {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    /// 1-minute load average when the run started.
    pub load: String,
    pub rounds: usize,
    pub quick: bool,
}

pub fn print_markdown(rows: &[Row], latency_scenario: &str, meta: &Meta) {
    println!(
        "### {} — {} CPUs, {}, load {} at start{}",
        meta.date,
        meta.nproc,
        meta.cpu_model,
        meta.load,
        if meta.quick {
            " — QUICK MODE, not comparable"
        } else {
            ""
        }
    );
    println!();
    println!(
        "Medians of {} round(s). Latency in µs; MB/s is payload bytes each way (10^6 B); \
         CPU is user+sys µs per call of the server / client process; RSS is the server's peak; \
         frames/write is calls per socket write syscall on the client / server side.",
        meta.rounds
    );
    println!();
    println!(
        "| scenario | impl | calls/s | p50 | p99 | p99.9 | MB/s | server CPU | client CPU | server RSS MiB | frames/write client | frames/write server |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {:.1} | {} | {} |",
            r.scenario,
            r.imp,
            r.calls_per_sec,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            opt(r.mb_per_sec, 0),
            r.server_cpu_us_per_call,
            r.client_cpu_us_per_call,
            r.server_rss_mib,
            opt(r.client_frames_per_write, 2),
            opt(r.server_frames_per_write, 2),
        );
    }
    println!();
    println!("{RATIO_LEGEND}");
    println!();
    println!("| scenario | Stardust vs tarpc | vs raw | vs ceiling | vs socket-ceiling |");
    println!("|---|--:|--:|--:|--:|");
    for (scenario, vs) in ratios(rows, latency_scenario) {
        let [t, r, c, s] = vs.map(|v| opt(v, 2));
        println!("| {scenario} | {t} | {r} | {c} | {s} |");
    }
    for (other, legend, column) in VERSUS_DIRECT {
        let hop = versus_direct(rows, other);
        if hop.is_empty() {
            continue;
        }
        println!();
        println!("{legend}");
        println!();
        println!("| scenario | p50 added µs | p99 added µs | throughput {column} |");
        println!("|---|--:|--:|--:|");
        for (scenario, p50, p99, ratio) in hop {
            println!("| {scenario} | {p50:+.1} | {p99:+.1} | {ratio:.2} |");
        }
    }
}
