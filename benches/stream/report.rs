//! What one run measured, the medians over rounds, and the tables and target checks printed at
//! the end.

/// The server's counters, as its "stats" line carries them.
#[derive(Clone, Copy, Debug)]
pub struct ServerStats {
    /// User + system CPU time of the whole process.
    pub cpu_us: u64,
    /// Resident set now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Chunks produced so far.
    pub produced: u64,
    /// Socket write syscalls so far.
    pub writes: u64,
}

impl ServerStats {
    pub fn to_line(self) -> String {
        format!(
            "{} {} {} {}",
            self.cpu_us, self.rss_kib, self.produced, self.writes
        )
    }

    pub fn parse(line: &str) -> Result<ServerStats, String> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad stats line {line:?}"))?;
        match v[..] {
            [cpu_us, rss_kib, produced, writes] => Ok(ServerStats {
                cpu_us,
                rss_kib,
                produced,
                writes,
            }),
            _ => Err(format!("bad stats line {line:?}")),
        }
    }
}

/// One (implementation, scenario, round).
pub struct Sample {
    /// Items the consumer received in the measured phase.
    pub items: u64,
    pub secs: f64,
    /// Bytes of payload per item (chunks), or `None` (small items).
    pub item_bytes: Option<u64>,
    pub server_cpu_us: u64,
    pub client_cpu_us: u64,
    pub server_writes: u64,
    /// The slow reader's figures.
    pub slow: Option<Slow>,
}

#[derive(Clone, Copy)]
pub struct Slow {
    /// Largest rise of the producer's resident set over its level before the stream opened.
    pub rss_growth_kib: u64,
    /// Chunks the producer made while the consumer read `Sample::items` of them.
    pub produced: u64,
}

pub fn sample_line(s: &Sample) -> String {
    match s.slow {
        Some(slow) => format!(
            "producer RSS +{:.1} MiB, {} chunks produced, {} consumed",
            slow.rss_growth_kib as f64 / 1024.0,
            slow.produced,
            s.items
        ),
        None => {
            let per_sec = s.items as f64 / s.secs;
            match s.item_bytes {
                Some(b) => format!(
                    "{:>9.0} MB/s  {per_sec:>9.0} items/s",
                    per_sec * b as f64 / 1e6
                ),
                None => format!("{per_sec:>9.0} items/s"),
            }
        }
    }
}

/// The medians of one implementation in one scenario.
pub struct Row {
    pub scenario: &'static str,
    pub imp: &'static str,
    pub items_per_sec: Option<f64>,
    pub mb_per_sec: Option<f64>,
    pub server_cpu_us_per_item: f64,
    pub client_cpu_us_per_item: f64,
    pub items_per_write: Option<f64>,
    pub rss_growth_mib: Option<f64>,
    pub produced: Option<f64>,
    pub consumed: Option<f64>,
}

fn median_of(samples: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().filter_map(f).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

impl Row {
    pub fn new(scenario: &'static str, imp: &'static str, samples: &[Sample]) -> Row {
        let per_item = |us: fn(&Sample) -> u64| {
            median_of(samples, |s| Some(us(s) as f64 / s.items.max(1) as f64)).unwrap_or(0.0)
        };
        let throughput = |s: &Sample| s.slow.is_none().then(|| s.items as f64 / s.secs);
        Row {
            scenario,
            imp,
            items_per_sec: median_of(samples, throughput),
            mb_per_sec: median_of(samples, |s| {
                Some(throughput(s)? * s.item_bytes? as f64 / 1e6)
            }),
            server_cpu_us_per_item: per_item(|s| s.server_cpu_us),
            client_cpu_us_per_item: per_item(|s| s.client_cpu_us),
            items_per_write: median_of(samples, |s| {
                (s.server_writes > 0).then(|| s.items as f64 / s.server_writes as f64)
            }),
            rss_growth_mib: median_of(samples, |s| Some(s.slow?.rss_growth_kib as f64 / 1024.0)),
            produced: median_of(samples, |s| Some(s.slow?.produced as f64)),
            consumed: median_of(samples, |s| s.slow.map(|_| s.items as f64)),
        }
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"))
}

/// One plain line per scenario and implementation.
pub fn print_lines(rows: &[Row]) {
    println!(
        "{:<17} {:<9} {:>11} {:>7} {:>12} {:>12} {:>11} {:>12} {:>9} {:>9}",
        "scenario",
        "impl",
        "items/s",
        "MB/s",
        "srv µs/item",
        "cli µs/item",
        "items/write",
        "RSS grew MiB",
        "produced",
        "consumed"
    );
    for r in rows {
        println!(
            "{:<17} {:<9} {:>11} {:>7} {:>12.3} {:>12.3} {:>11} {:>12} {:>9} {:>9}",
            r.scenario,
            r.imp,
            opt(r.items_per_sec, 0),
            opt(r.mb_per_sec, 0),
            r.server_cpu_us_per_item,
            r.client_cpu_us_per_item,
            opt(r.items_per_write, 2),
            opt(r.rss_growth_mib, 1),
            opt(r.produced, 0),
            opt(r.consumed, 0),
        );
    }
}

/// A target of issue 19: Stardust's figure in `scenario` at least `factor` times `other`'s.
pub struct Target {
    pub scenario: &'static str,
    pub other: &'static str,
    pub factor: f64,
}

pub const TARGETS: [Target; 3] = [
    Target {
        scenario: "stream-add-items",
        other: "tonic",
        factor: 5.0,
    },
    Target {
        scenario: "stream-add-items",
        other: "raw",
        factor: 0.5,
    },
    Target {
        scenario: "stream-64k",
        other: "raw",
        factor: 0.9,
    },
];

/// `(target, stardust ÷ other, met)` for every target whose rows ran.
fn checks(rows: &[Row]) -> Vec<(&'static Target, f64, bool)> {
    let value = |scenario: &str, imp: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.imp == imp)
            .and_then(|r| r.items_per_sec)
    };
    TARGETS
        .iter()
        .filter_map(|t| {
            let ratio = value(t.scenario, "stardust")? / value(t.scenario, t.other)?;
            Some((t, ratio, ratio >= t.factor))
        })
        .collect()
}

pub fn print_targets(rows: &[Row]) {
    println!("Targets (issue 19): Stardust's throughput ÷ the other's, per scenario.");
    for (t, ratio, met) in checks(rows) {
        println!(
            "  {:<17} stardust ÷ {:<6} {ratio:>7.2}  (target ≥ {}) {}",
            t.scenario,
            t.other,
            t.factor,
            if met { "met" } else { "MISSED" }
        );
    }
}

/// Facts printed above the markdown table.
pub struct Meta {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub load: String,
    pub rounds: usize,
    pub quick: bool,
}

pub fn print_markdown(rows: &[Row], meta: &Meta) {
    println!(
        "#### {} — {} mode, {} round(s), {} CPUs ({}), load {} at start",
        meta.date,
        if meta.quick {
            "QUICK (not comparable)"
        } else {
            "full"
        },
        meta.rounds,
        meta.nproc,
        meta.cpu_model,
        meta.load
    );
    println!();
    println!(
        "| scenario | impl | items/s | MB/s | server CPU µs/item | client CPU µs/item | items per server write | producer RSS growth MiB | produced | consumed |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} |",
            r.scenario,
            r.imp,
            opt(r.items_per_sec, 0),
            opt(r.mb_per_sec, 0),
            r.server_cpu_us_per_item,
            r.client_cpu_us_per_item,
            opt(r.items_per_write, 2),
            opt(r.rss_growth_mib, 1),
            opt(r.produced, 0),
            opt(r.consumed, 0),
        );
    }
    println!();
    println!("| target | stardust ÷ other | met |");
    println!("|---|--:|---|");
    for (t, ratio, met) in checks(rows) {
        println!(
            "| {} ≥ {}× {} | {ratio:.2} | {} |",
            t.scenario,
            t.factor,
            t.other,
            if met { "yes" } else { "**no**" }
        );
    }
}
