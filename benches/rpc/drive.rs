//! How a phase is driven: the framework way (caller tasks looping `call().await`) and the two
//! ceilings' windowed loops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::service::{self, Caller, Payload};
use crate::{Latencies, Phase, Scenario, ceiling, socket_ceiling};

/// The framework way: `outstanding` caller tasks, spread over the clients, each looping
/// `call().await` and taking the next call number from a shared counter.
pub async fn drive<C: Caller>(
    clients: &[C],
    sc: &Scenario,
    calls: u64,
    seq_base: u64,
) -> Result<Phase, String> {
    let next = Arc::new(AtomicU64::new(0));
    let payload = sc.payload.map(|n| Arc::new(Payload::new(n)));
    let per_client = sc.outstanding / clients.len();
    // Room for a fair share and then some, so vectors rarely grow while timed.
    let expected = (calls as usize / sc.outstanding) * 2 + 1024;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in clients {
        for _ in 0..per_client {
            let task = caller_loop(
                client.clone(),
                next.clone(),
                calls,
                seq_base,
                payload.clone(),
                expected,
            );
            tasks.spawn(task);
        }
    }
    collect(tasks, start).await
}

async fn caller_loop<C: Caller>(
    client: C,
    next: Arc<AtomicU64>,
    calls: u64,
    seq_base: u64,
    payload: Option<Arc<Payload>>,
    expected: usize,
) -> Result<Latencies, String> {
    let mut latencies = Latencies::with_capacity(expected);
    let mut scratch = C::Scratch::default();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= calls {
            return Ok(latencies);
        }
        let seq = seq_base + i;
        // Building the payload is outside the timed span; checking the reply too.
        let outcome = match &payload {
            None => {
                let (a, b) = service::add_args(seq);
                let t = Instant::now();
                let sum = client.add(a, b).await;
                latencies.push(t.elapsed().as_nanos() as u64);
                sum.and_then(|sum| service::check_add(seq, sum))
            }
            Some(p) => {
                let data = C::data(p, seq, &mut scratch);
                let t = Instant::now();
                let echoed = client.echo(data).await;
                latencies.push(t.elapsed().as_nanos() as u64);
                echoed.and_then(|echoed| p.check(seq, echoed.as_ref()))
            }
        };
        if let Err(e) = outcome {
            // Stop the other callers: the run has failed.
            next.store(calls, Ordering::Relaxed);
            return Err(format!("call {seq}: {e}"));
        }
    }
}

/// The ceiling: one windowed loop per connection, calls split evenly.
pub async fn drive_ceiling(
    streams: &mut Vec<TcpStream>,
    sc: &Scenario,
    calls: u64,
    seq_base: u64,
) -> Result<Phase, String> {
    let payload = sc.payload.map(|n| Arc::new(Payload::new(n)));
    let n = streams.len() as u64;
    let window = sc.outstanding / streams.len();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (stream, seqs) in streams.drain(..).zip(shares(calls, seq_base, n)) {
        let payload = payload.clone();
        tasks.spawn(async move {
            let (stream, latencies) = ceiling::run_conn(stream, window, seqs, payload).await?;
            Ok((latencies, stream))
        });
    }
    let (latencies, elapsed, returned) = collect_with(tasks, start).await?;
    streams.extend(returned);
    Ok((latencies, elapsed))
}

async fn collect(
    mut tasks: JoinSet<Result<Latencies, String>>,
    start: Instant,
) -> Result<Phase, String> {
    let mut all = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(latencies)) => all.push(latencies),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("caller task died: {e}"))),
        }
    }
    let elapsed = start.elapsed();
    failure.map_or(Ok((all, elapsed)), Err)
}

type CeilingTask = Result<(Latencies, TcpStream), String>;

async fn collect_with(
    mut tasks: JoinSet<CeilingTask>,
    start: Instant,
) -> Result<(Vec<Latencies>, Duration, Vec<TcpStream>), String> {
    let mut joined = Vec::new();
    while let Some(j) = tasks.join_next().await {
        joined.push(j.map(|r| r.map(|(latencies, stream)| (stream, latencies))));
    }
    let elapsed = start.elapsed();
    let (all, returned) = gather(joined, "ceiling task")?;
    Ok((all, elapsed, returned))
}

/// How a ceiling's connection task ended: the connection and its latencies, or why not.
type Joined<S> = Result<Result<(S, Latencies), String>, tokio::task::JoinError>;

/// Each connection's latencies and the connection back, or the first failure (`what` names
/// the task kind when one died).
fn gather<S>(joined: Vec<Joined<S>>, what: &str) -> Result<(Vec<Latencies>, Vec<S>), String> {
    let mut all = Vec::new();
    let mut returned = Vec::new();
    let mut failure = None;
    for j in joined {
        match j {
            Ok(Ok((stream, latencies))) => {
                all.push(latencies);
                returned.push(stream);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(format!("{what} died: {e}"))),
        }
    }
    failure.map_or(Ok((all, returned)), Err)
}

/// The socket ceiling: one windowed pair of blocking threads per connection (see
/// `socket_ceiling.rs`), calls split evenly.
pub async fn drive_socket_ceiling(
    streams: &mut Vec<std::net::TcpStream>,
    sc: &Scenario,
    calls: u64,
    seq_base: u64,
) -> Result<Phase, String> {
    let payload = Arc::new(Payload::new(
        sc.payload.ok_or("the socket ceiling echoes payloads")?,
    ));
    let n = streams.len() as u64;
    let window = sc.outstanding / streams.len();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (stream, seqs) in streams.drain(..).zip(shares(calls, seq_base, n)) {
        let payload = payload.clone();
        tasks.push(tokio::task::spawn_blocking(move || {
            socket_ceiling::run_conn(stream, window, seqs, payload)
        }));
    }
    let mut joined = Vec::new();
    for task in tasks {
        joined.push(task.await);
    }
    let elapsed = start.elapsed();
    let (all, returned) = gather(joined, "socket ceiling thread")?;
    streams.extend(returned);
    Ok((all, elapsed))
}

/// The call numbers from `seq_base` split evenly over `n` connections (the first ones take one
/// more when `calls` does not divide).
fn shares(calls: u64, seq_base: u64, n: u64) -> impl Iterator<Item = std::ops::Range<u64>> {
    let mut first = seq_base;
    (0..n).map(move |i| {
        let share = calls / n + u64::from(i < calls % n);
        let seqs = first..first + share;
        first += share;
        seqs
    })
}
