//! `stall-1-of-3`: what callers see while one of three providers hangs.
//!
//! An embedded registry, three providers of an idempotent method and 32 callers with a 1 s
//! deadline, all in this process (so they share its cores); mid-run one provider stalls (its handlers wait, its process
//! and connections stay up, as in a long pause or a deadlock) for 10 s, then recovers. Reported
//! per second: calls completed and failed; per phase (before, during, after the stall): calls/s,
//! failures and latency percentiles. Calls count in the second and phase in which they end. Three consumer settings, each on a fresh cluster:
//!
//! - `blind`: stall detection and hedging off (the balancer sees only load and latency);
//! - `detect`: hung-provider detection on, hedging off;
//! - `default`: the defaults (detection and adaptive hedging).
//!
//! `cargo bench --bench stall` (`STARDUST_STALL_SETTINGS=default,blind` picks settings and their
//! order); `STARDUST_STALL_QUICK=1 cargo test --bench stall` runs a short
//! version (a 2 s stall) as a smoke test. Nothing is asserted about speed; the quick run fails
//! only if the default setting lets a call fail.

#[path = "common/machine.rs"]
mod machine;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use stardust::balance::{Hedging, StallDetection};
use stardust::{Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};
use tokio::sync::watch;

/// The benchmark's service.
#[stardust::service(name = "bench.Stall", version = "1.0.0")]
pub trait Adder {
    /// Adds two numbers (idempotent: safe to hedge and retry).
    #[stardust(idempotent)]
    async fn add(&self, a: u64, b: u64) -> u64;
}

#[derive(Clone)]
struct AdderImpl {
    /// `true` while the provider stalls.
    stalled: watch::Receiver<bool>,
}

impl Adder for AdderImpl {
    async fn add(&self, a: u64, b: u64) -> u64 {
        if *self.stalled.borrow() {
            let mut rx = self.stalled.clone();
            let _ = rx.wait_for(|s| !*s).await;
        }
        a.wrapping_add(b)
    }
}

const CALLERS: usize = 32;
const DEADLINE: Duration = Duration::from_secs(1);
const PROVIDER: (&str, &str) = ("stall-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("stall-consumer", "consumer-secret");

/// Phase lengths: warm-up (not reported), before, during and after the stall.
struct Plan {
    warm: Duration,
    before: Duration,
    stall: Duration,
    after: Duration,
}

impl Plan {
    fn from_env() -> (Plan, bool) {
        let quick = std::env::var("STARDUST_STALL_QUICK").is_ok_and(|v| v == "1");
        let s = Duration::from_secs;
        let plan = if quick {
            Plan {
                warm: Duration::from_millis(500),
                before: s(1),
                stall: s(2),
                after: s(1),
            }
        } else {
            Plan {
                warm: s(2),
                before: s(5),
                stall: s(10),
                after: s(10),
            }
        };
        (plan, quick)
    }

    fn total(&self) -> Duration {
        self.before + self.stall + self.after
    }

    /// The phase a call that ended at `t` (since the end of the warm-up) belongs to.
    fn phase(&self, t: Duration) -> usize {
        if t < self.before {
            0
        } else if t < self.before + self.stall {
            1
        } else {
            2
        }
    }
}

const PHASES: [&str; 3] = ["before", "during", "after"];

/// A consumer setting under test.
#[derive(Clone, Copy)]
enum Setting {
    Blind,
    Detect,
    Default,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::Blind => "blind",
            Setting::Detect => "detect",
            Setting::Default => "default",
        }
    }

    fn tune(self, b: stardust::StardustBuilder) -> stardust::StardustBuilder {
        match self {
            Setting::Blind => b
                .stall_detection(StallDetection::off())
                .hedging(Hedging::off()),
            Setting::Detect => b.hedging(Hedging::off()),
            Setting::Default => b,
        }
    }
}

/// What one run saw.
struct Outcome {
    setting: Setting,
    /// Per second since the end of the warm-up: (completed, failed).
    per_second: Vec<(u64, u64)>,
    /// Per phase: latencies of completed calls (µs), failures.
    phases: Vec<(Histogram<u64>, u64)>,
    /// A few failure messages, to say what failed.
    samples: Vec<String>,
}

fn config() -> Config {
    let dir = std::env::temp_dir().join(format!("stardust-stall-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1)
                .expect("secret")
                .provide(["*"]),
        )
        .with_app(
            CONSUMER.0,
            AppConfig::with_secret(CONSUMER.1).expect("secret"),
        )
        .with_lease_ttl(Duration::from_secs(60))
        .with_key_file(dir.join("keys.toml"))
}

async fn login(node: &RegistryNode, app: (&str, &str), setting: Setting) -> Stardust {
    setting
        .tune(Stardust::builder())
        .registry(node.local_addr().to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(500))
        .timeout(DEADLINE)
        .connect()
        .await
        .expect("login")
}

async fn run(setting: Setting, plan: &Plan) -> Outcome {
    let node = RegistryNode::builder()
        .config(config())
        .bind("127.0.0.1:0")
        .await
        .expect("registry");
    let (stall_tx, stall_rx) = watch::channel(false);
    let mut providers = Vec::new();
    for i in 0..3 {
        let star = login(&node, PROVIDER, Setting::Default).await;
        // Only the third provider ever stalls.
        let stalled = if i == 2 {
            stall_rx.clone()
        } else {
            watch::channel(false).1
        };
        let provider = star
            .serve(
                Server::builder().serve(AdderServer::new(AdderImpl { stalled })),
                "127.0.0.1:0",
            )
            .await
            .expect("serve");
        providers.push((star, provider));
    }
    let consumer = login(&node, CONSUMER, setting).await;
    let client = consumer.client::<AdderClient>();
    // Every provider listed before the clock starts.
    while client.add(1, 2).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let seconds = plan.total().as_secs() as usize + 1;
    let per_second: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..seconds)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now() + plan.warm;
    let total = plan.total();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, stop, per_second, samples) = (
                client.clone(),
                stop.clone(),
                per_second.clone(),
                samples.clone(),
            );
            let phase_of = (plan.before, plan.stall);
            tokio::spawn(async move {
                let plan = Plan {
                    warm: Duration::ZERO,
                    before: phase_of.0,
                    stall: phase_of.1,
                    after: Duration::ZERO,
                };
                let mut phases: Vec<(Histogram<u64>, u64)> = (0..3)
                    .map(|_| (Histogram::new(3).expect("histogram"), 0))
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let result = client.add(1, 2).await;
                    // Counted when it ends: a call stuck until its deadline shows when it failed.
                    let Some(since) = Instant::now().checked_duration_since(started) else {
                        continue; // warming up
                    };
                    if since >= total {
                        continue;
                    }
                    let (phase, second) = (plan.phase(since), since.as_secs() as usize);
                    match result {
                        Ok(_) => {
                            let us = t0.elapsed().as_micros() as u64;
                            phases[phase].0.record(us.max(1)).expect("in range");
                            per_second[second].0.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            phases[phase].1 += 1;
                            per_second[second].1.fetch_add(1, Ordering::Relaxed);
                            let mut s = samples.lock();
                            if s.len() < 5 {
                                s.push(e.to_string());
                            }
                        }
                    }
                }
                phases
            })
        })
        .collect();

    tokio::time::sleep_until((started + plan.before).into()).await;
    stall_tx.send_replace(true);
    tokio::time::sleep_until((started + plan.before + plan.stall).into()).await;
    stall_tx.send_replace(false);
    tokio::time::sleep_until((started + total).into()).await;
    stop.store(true, Ordering::Relaxed);

    let mut phases: Vec<(Histogram<u64>, u64)> = (0..3)
        .map(|_| (Histogram::new(3).expect("histogram"), 0))
        .collect();
    for c in callers {
        for (i, (h, failed)) in c.await.expect("caller").into_iter().enumerate() {
            phases[i].0.add(h).expect("same bounds");
            phases[i].1 += failed;
        }
    }
    for (star, provider) in providers {
        provider.shutdown().await;
        drop(star);
    }
    let per_second = per_second
        .iter()
        .take(total.as_secs() as usize)
        .map(|(d, f)| (d.load(Ordering::Relaxed), f.load(Ordering::Relaxed)))
        .collect();
    let samples = samples.lock().clone();
    Outcome {
        setting,
        per_second,
        phases,
        samples,
    }
}

fn us(us: u64) -> String {
    us.to_string()
}

fn report(plan: &Plan, outcomes: &[Outcome]) {
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "\n## stall-1-of-3: 3 providers, {CALLERS} callers of an idempotent method, {} s deadline; \
         one provider stalls from {} s to {} s",
        DEADLINE.as_secs(),
        plan.before.as_secs(),
        (plan.before + plan.stall).as_secs()
    );
    println!(
        "{} cores, {}, load average {} (1 min), {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine::cpu_model(),
        machine::load_average(),
        machine::utc_date()
    );
    println!(
        "| setting | phase | calls/s | failed | p50 µs | p99 µs | p99.9 µs | max µs | p99 / before |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for o in outcomes {
        let base = o.phases[0].0.value_at_quantile(0.99).max(1);
        for (i, (h, failed)) in o.phases.iter().enumerate() {
            let length = [plan.before, plan.stall, plan.after][i];
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.1}x |",
                o.setting.name(),
                PHASES[i],
                h.len() as f64 / secs(length),
                failed,
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max()),
                h.value_at_quantile(0.99) as f64 / base as f64
            );
        }
    }
    println!("\nCalls completed (failed) per second:\n");
    let names: Vec<&str> = outcomes.iter().map(|o| o.setting.name()).collect();
    println!("| s | {} |", names.join(" | "));
    println!("|--:|{}", "--:|".repeat(names.len()));
    for s in 0..plan.total().as_secs() as usize {
        let stalled = s >= plan.before.as_secs() as usize
            && s < (plan.before + plan.stall).as_secs() as usize;
        let cells: Vec<String> = outcomes
            .iter()
            .map(|o| match o.per_second.get(s) {
                Some((done, 0)) => done.to_string(),
                Some((done, failed)) => format!("{done} ({failed})"),
                None => "-".to_owned(),
            })
            .collect();
        println!(
            "| {}{} | {} |",
            s + 1,
            if stalled { " *" } else { "" },
            cells.join(" | ")
        );
    }
    println!("\n(* the provider is stalled during that second)");
    for o in outcomes {
        if !o.samples.is_empty() {
            println!(
                "\n{} failures, e.g.: {}",
                o.setting.name(),
                o.samples.join("; ")
            );
        }
    }
}

fn main() {
    // `cargo test --bench stall` passes libtest flags; they mean nothing here.
    let (plan, quick) = Plan::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `STARDUST_STALL_SETTINGS=default,blind` runs only those, in that order.
    let settings: Vec<Setting> = match std::env::var("STARDUST_STALL_SETTINGS") {
        Ok(list) => list
            .split(',')
            .map(|s| match s.trim() {
                "blind" => Setting::Blind,
                "detect" => Setting::Detect,
                "default" => Setting::Default,
                other => panic!("unknown setting {other:?} (blind, detect, default)"),
            })
            .collect(),
        Err(_) => vec![Setting::Blind, Setting::Detect, Setting::Default],
    };
    let mut outcomes = Vec::new();
    for setting in settings {
        eprintln!("stall bench: {} ...", setting.name());
        outcomes.push(rt.block_on(run(setting, &plan)));
    }
    report(&plan, &outcomes);
    if quick {
        for o in outcomes
            .iter()
            .filter(|o| matches!(o.setting, Setting::Default))
        {
            let failed: u64 = o.phases.iter().map(|p| p.1).sum();
            assert_eq!(
                failed, 0,
                "calls failed with the default setting: {:?}",
                o.samples
            );
        }
    }
}
