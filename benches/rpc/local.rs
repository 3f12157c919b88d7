//! `local-add`: in-process calls (`stardust::local`), `add` from many tasks at once in this
//! process, on a runtime like the other scenarios' (multi-threaded, 2 workers):
//!
//! - `direct-call`: the implementation's `add` awaited directly, no framework at all (the
//!   ceiling of any in-process call);
//! - `stardust-local-lean`: a generated client in `LocalMode::Lean` (the implementation's boxed
//!   future awaited under a panic guard);
//! - `stardust-local-full`: a client from `Server::local_services` in `LocalMode::Full`, with
//!   everything a hosted call gets (deadline, context, trace, interceptors, the server's
//!   figures).
//!
//! Every reply is checked like the TCP scenarios' (`service::check_add`).

use std::time::Instant;

use stardust::ServiceClient;
use stardust::local::LocalMode;

use crate::service;
use crate::stardust_impl::{Bench, BenchClient, BenchServer};

pub const SCENARIO: &str = "local-add";
/// Tasks calling at once.
const TASKS: u64 = 64;

struct Adder;

impl Bench for Adder {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(&self, data: bytes::Bytes) -> bytes::Bytes {
        data
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Way {
    Direct,
    Lean,
    Full,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct-call",
            Way::Lean => "stardust-local-lean",
            Way::Full => "stardust-local-full",
        }
    }
}

/// Runs the scenario `rounds` times per way (interleaved); prints each run and returns the
/// median calls/s per way.
pub fn run(rounds: usize, quick: bool) -> Result<Vec<(&'static str, f64)>, String> {
    let calls: u64 = if quick { 200_000 } else { 10_000_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ways = [Way::Direct, Way::Lean, Way::Full];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for round in 0..rounds {
        for k in 0..ways.len() {
            let i = (k + round) % ways.len();
            let rate = runtime.block_on(run_one(ways[i], calls))?;
            eprintln!(
                "[{}/{}] {:<20} {:<20} {:>10.0} calls/s",
                round + 1,
                rounds,
                SCENARIO,
                ways[i].name(),
                rate
            );
            samples[i].push(rate);
        }
    }
    Ok(ways
        .iter()
        .zip(samples)
        .map(|(w, mut s)| {
            s.sort_by(f64::total_cmp);
            (w.name(), s[s.len() / 2])
        })
        .collect())
}

async fn run_one(way: Way, calls: u64) -> Result<f64, String> {
    // Kept for the run: the full way's figures live in the server.
    let mut _server = None;
    let client = match way {
        Way::Direct => None,
        Way::Lean => {
            let imp = stardust::Service::local(&BenchServer::new(Adder))
                .ok_or("no in-process implementation")?;
            let local = stardust::local::LocalService::from(imp).with_mode(LocalMode::Lean);
            Some(BenchClient::with_local(
                stardust::Client::builder().in_process(),
                &local,
            ))
        }
        Way::Full => {
            let server = stardust::Server::builder()
                .allow_anonymous()
                .serve(BenchServer::new(Adder))
                .bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            let local = server
                .local_services()
                .pop()
                .ok_or("the server lists no in-process service")?;
            _server = Some(server);
            Some(BenchClient::with_local(
                stardust::Client::builder().in_process(),
                &local,
            ))
        }
    };
    // Warm-up, then the measured phase.
    drive(&client, calls / 10, 0).await?;
    let started = Instant::now();
    drive(&client, calls, calls / 10).await?;
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

/// `calls` calls split over [`TASKS`] tasks, numbered from `base`.
async fn drive(client: &Option<BenchClient>, calls: u64, base: u64) -> Result<(), String> {
    let per_task = calls / TASKS;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let first = base + t * per_task;
                for seq in first..first + per_task {
                    let (a, b) = service::add_args(seq);
                    let got = match &client {
                        None => Adder.add(a, b).await,
                        Some(c) => c.add(a, b).await.map_err(|e| e.to_string())?,
                    };
                    service::check_add(seq, got)?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// The scenario's table: calls/s per way, and what each gets of the ceiling.
pub fn print(rows: &[(&'static str, f64)]) {
    let direct = rows.iter().find(|r| r.0 == "direct-call").map(|r| r.1);
    println!("In-process calls ({SCENARIO}: {TASKS} tasks calling `add` at once in one process).");
    println!("| scenario | impl | calls/s | of direct-call |");
    println!("|---|---|--:|--:|");
    for (name, rate) in rows {
        let share = direct.map_or("-".to_owned(), |d| format!("{:.2}", rate / d));
        println!("| {SCENARIO} | {name} | {rate:.0} | {share} |");
    }
}
