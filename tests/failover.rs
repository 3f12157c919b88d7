//! Failover over loopback with an embedded registry: a provider's crash under load is hidden
//! from callers wherever that is safe, a deregistering provider finishes its calls in flight,
//! retries respect the retry budget, and a provider restarted at the same address is reached
//! again. Everything is counted, never timed; waits are bounded.
//!
//! These tests hold calls at providers' gates on purpose, so their consumers turn hedging and
//! hung-provider detection off ([`steady`]): what is tested here is what happens to calls a
//! provider holds when it dies or leaves (hangs are `gray_failures.rs`).

mod common;
#[path = "common/where_service.rs"]
mod where_service;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::within;
use stardust::ErrorKind;
use stardust::balance::{Hedging, StallDetection};
use tokio::sync::mpsc;
use where_service::*;

/// A consumer that neither hedges nor suspects providers holding calls.
fn steady(b: stardust::StardustBuilder) -> stardust::StardustBuilder {
    b.hedging(Hedging::off())
        .stall_detection(StallDetection::off())
}

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    idempotent_ok: u64,
    idempotent_failed: Vec<String>,
    once_ok: u64,
    once_unknown: u64,
    once_other: Vec<String>,
    by_provider: HashMap<u32, u64>,
}

/// Callers that alternate idempotent and non-idempotent calls until `stop`.
fn load(
    client: &WhereClient,
    callers: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..callers)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    match client.whoami().await {
                        Ok(id) => {
                            t.idempotent_ok += 1;
                            *t.by_provider.entry(id).or_default() += 1;
                        }
                        Err(e) => t.idempotent_failed.push(e.to_string()),
                    }
                    match client.bump().await {
                        Ok(id) => {
                            t.once_ok += 1;
                            *t.by_provider.entry(id).or_default() += 1;
                        }
                        Err(e)
                            if e.kind() == ErrorKind::ConnectionClosed
                                && e.message().starts_with("outcome unknown") =>
                        {
                            t.once_unknown += 1
                        }
                        Err(e) => t.once_other.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                t
            })
        })
        .collect()
}

async fn total(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for t in tasks {
        let t = within("a caller to stop", t).await.unwrap();
        all.idempotent_ok += t.idempotent_ok;
        all.idempotent_failed.extend(t.idempotent_failed);
        all.once_ok += t.once_ok;
        all.once_unknown += t.once_unknown;
        all.once_other.extend(t.once_other);
        for (k, v) in t.by_provider {
            *all.by_provider.entry(k).or_default() += v;
        }
    }
    all
}

/// Starts held calls one at a time until provider `victim` holds one of each kind; returns the
/// calls held there and the ones held elsewhere.
#[allow(clippy::type_complexity)]
async fn hold_on(
    client: &WhereClient,
    victim: u32,
    entered: &mut mpsc::UnboundedReceiver<(u32, &'static str)>,
) -> (
    Vec<(
        &'static str,
        tokio::task::JoinHandle<Result<u32, stardust::Error>>,
    )>,
    Vec<tokio::task::JoinHandle<Result<u32, stardust::Error>>>,
) {
    let mut on_victim = Vec::new();
    let mut elsewhere = Vec::new();
    // `hold_once_retry` is the non-idempotent method called through a handle whose policy
    // retries lost calls anyway.
    for kind in ["hold", "hold_once", "hold_once_retry"] {
        loop {
            let c = client.clone();
            let call = tokio::spawn(async move {
                match kind {
                    "hold" => c.hold().await,
                    "hold_once" => c.hold_once().await,
                    _ => {
                        WhereClient::new(c.client().retry_lost_calls())
                            .hold_once()
                            .await
                    }
                }
            });
            let (id, k) = within("a held call to start", entered.recv())
                .await
                .unwrap();
            assert_eq!(k, if kind == "hold" { "hold" } else { "hold_once" });
            if id == victim {
                on_victim.push((kind, call));
                break;
            }
            elsewhere.push(call);
        }
    }
    (on_victim, elsewhere)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_crash_under_load_is_hidden_where_safe() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star_with(&node, CONSUMER, steady).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;

    // Calls in flight on the victim when it dies: one idempotent, one not, and one not
    // idempotent but retried by the caller's policy.
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 16, &stop, &done);
    wait_until("load before the crash", || {
        done.load(Ordering::SeqCst) >= 300
    })
    .await;

    nodes[0].crash();
    let at_crash = done.load(Ordering::SeqCst);
    wait_until("load after the crash", || {
        done.load(Ordering::SeqCst) >= at_crash + 300
    })
    .await;

    // A fourth provider registering mid-load gets calls.
    nodes.push(Node::start(&node, 3, &tx).await);
    wait_until("the new provider to receive calls", || {
        nodes[3].calls() >= 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for n in &nodes[1..] {
        n.open_gate();
    }
    let tally = total(callers).await;
    assert!(
        tally.idempotent_failed.is_empty(),
        "idempotent calls failed: {:?}",
        tally.idempotent_failed
    );
    assert!(
        tally.once_other.is_empty(),
        "non-idempotent calls failed other than with outcome unknown: {:?}",
        tally.once_other
    );
    assert!(tally.idempotent_ok >= 600 && tally.once_ok > 0);
    assert!(tally.by_provider.get(&3).copied().unwrap_or(0) > 0);

    for (kind, call) in on_victim {
        let result = within("a held call on the victim", call).await.unwrap();
        match kind {
            // Retried on a survivor, which answered once its gate opened.
            "hold" | "hold_once_retry" => {
                assert!(matches!(result, Ok(1..=3)), "{kind}: {result:?}")
            }
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
                assert!(err.message().starts_with("outcome unknown"), "{err}");
                assert!(err.message().contains("hold_once"), "{err}");
            }
        }
    }
    for call in elsewhere {
        within("a held call on a survivor", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_provider_finishes_its_calls_in_flight() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star_with(&node, CONSUMER, steady).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 8, &stop, &done);
    wait_until("load before the deregistration", || {
        done.load(Ordering::SeqCst) >= 200
    })
    .await;

    // Deregisters, then drains: the held calls keep the server (and the consumer's connection
    // to it) open until they finish. The drain has begun once its listener is gone.
    let provider = nodes[0].provider.take().unwrap();
    let addr = provider.local_addr();
    let shutdown = tokio::spawn(provider.shutdown());
    within("the provider to stop accepting", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let at = done.load(Ordering::SeqCst);
    wait_until("load after the drain began", || {
        done.load(Ordering::SeqCst) >= at + 200
    })
    .await;
    let served = nodes[0].calls();
    wait_until("more load", || done.load(Ordering::SeqCst) >= at + 400).await;
    assert_eq!(
        nodes[0].calls(),
        served,
        "no new calls after the drain began"
    );
    assert!(!shutdown.is_finished(), "held calls keep the drain going");

    nodes[0].open_gate();
    for (_, call) in on_victim {
        assert_eq!(within("a held call", call).await.unwrap().unwrap(), 0);
    }
    within("the provider's shutdown", shutdown).await.unwrap();

    stop.store(true, Ordering::SeqCst);
    for n in &nodes[1..] {
        n.open_gate();
    }
    let tally = total(callers).await;
    assert!(
        tally.idempotent_failed.is_empty(),
        "{:?}",
        tally.idempotent_failed
    );
    assert!(tally.once_other.is_empty(), "{:?}", tally.once_other);
    assert_eq!(tally.once_unknown, 0, "a graceful drain loses no call");
    for call in elsewhere {
        within("a held call elsewhere", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_retry_budget_is_spent() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // No floor and no share: no call is ever retried.
    let consumer = star_with(&node, CONSUMER, |b| steady(b).retry_budget(0, 0.0)).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;
    nodes[0].crash();
    for (kind, call) in on_victim {
        let err = within("a held call on the victim", call)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
        if kind != "hold_once" {
            // Retryable (idempotent, or by the caller's policy), but the budget says no.
            assert!(err.message().contains("retry budget"), "{kind}: {err}");
        } else {
            assert!(err.message().starts_with("outcome unknown"), "{err}");
        }
    }
    for n in &nodes[1..] {
        n.open_gate();
    }
    for call in elsewhere {
        within("a held call elsewhere", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_restarted_at_the_same_address_is_reconnected() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut first = Node::start(&node, 0, &tx).await;
    let addr = first.provider.as_ref().unwrap().local_addr();
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0]).await;

    first.crash();
    let _second = Node::start_at(&node, 1, &tx, addr).await;
    // Calls reach the new process at the same address over a new connection. While the
    // registry's view catches up a call may find no provider (tolerated); nothing else fails.
    wait_for_providers(&client, &[1]).await;
    for _ in 0..10 {
        assert_eq!(client.whoami().await.unwrap(), 1);
    }
}
