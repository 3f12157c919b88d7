//! Load balancing over loopback with an embedded registry: calls are spread over every
//! provider by each strategy, and a failing provider is ejected then probed back in. Everything
//! is counted, never timed; waits are bounded. (Providers that die or leave under load:
//! `failover.rs`; providers that hang: `gray_failures.rs`.)

mod common;
#[path = "common/where_service.rs"]
mod where_service;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::within;
use stardust::ErrorKind;
use stardust::balance::{ConsistentHash, Hedging, RoundRobin};
use tokio::sync::mpsc;
use where_service::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_calls_exactly() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // Exact counts: no hedge may send a call slowed by a busy machine elsewhere.
    let consumer = star_with(&node, CONSUMER, |b| b.hedging(Hedging::off())).await;
    let client = consumer.client_with::<WhereClient>(RoundRobin::new());
    wait_for_providers(&client, &[0, 1, 2]).await;

    let before: Vec<u64> = nodes.iter().map(Node::calls).collect();
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..300 {
        *answers.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 100), (1, 100), (2, 100)]));
    for (n, b) in nodes.iter().zip(before) {
        assert_eq!(n.calls() - b, 100);
    }

    // Another proxy of the same handle takes the providers in turn too (its own rotation, the
    // handle's shared connections).
    let other = consumer.client_with::<WhereClient>(RoundRobin::new());
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..30 {
        *answers.entry(other.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_fails_at_once_naming_the_service() {
    let node = registry().await;
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    let err = within("a call with no provider", client.whoami())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.to_string().contains("test.Where"), "{err}");

    // Providers that all crash: the consumer is told there is none, not left waiting.
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut a = Node::start(&node, 0, &tx).await;
    wait_for_providers(&client, &[0]).await;
    a.crash();
    let err = within("a call after the only provider died", async {
        loop {
            match client.whoami().await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.to_string().contains("test.Where"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_moves_only_a_leavers() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..5 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // Exact counts: no hedge may send a call slowed by a busy machine elsewhere.
    let consumer = star_with(&node, CONSUMER, |b| b.hedging(Hedging::off())).await;
    let client = consumer.client_with::<WhereClient>(ConsistentHash::new());
    wait_for_providers(&client, &[0, 1, 2, 3, 4]).await;

    let keyed = |k: u32| WhereClient::new(client.client().with_hash_key(format!("user-{k}")));
    let mut owner = HashMap::new();
    for k in 0..100 {
        let c = keyed(k);
        let first = c.whoami().await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                c.whoami().await.unwrap(),
                first,
                "key {k} stays on one provider"
            );
        }
        owner.insert(k, first);
    }
    let used: std::collections::BTreeSet<u32> = owner.values().copied().collect();
    assert_eq!(used.len(), 5, "keys spread over every provider: {owner:?}");

    // Provider 2 leaves: only its keys move.
    nodes[2].provider.take().unwrap().shutdown().await;
    for k in 0..100 {
        let now = keyed(k).whoami().await.unwrap();
        if owner[&k] == 2 {
            assert_ne!(now, 2, "key {k} left the provider that left");
        } else {
            assert_eq!(now, owner[&k], "key {k} moved although its provider stayed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_ejected_then_probed_back_in() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // Hedging off: a call slowed down by a busy machine would be hedged, and its try at the
    // failing provider cancelled before it could fail, which this test counts.
    let consumer = star_with(&node, CONSUMER, |b| {
        b.outlier_ejection(3, Duration::from_secs(3))
            .hedging(Hedging::off())
    })
    .await;
    let client = consumer.client_with::<WhereClient>(RoundRobin::new());
    wait_for_providers(&client, &[0, 1, 2]).await;

    // Provider 0 fails every call: its callers see the failures until it is ejected.
    let before = nodes[0].calls();
    nodes[0].fail.store(true, Ordering::SeqCst);
    let mut failed = 0;
    within("provider 0 to be ejected", async {
        while nodes[0].calls() < before + 3 {
            if let Err(e) = client.whoami().await {
                assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
                failed += 1;
            }
        }
    })
    .await;
    assert_eq!(failed, 3);
    let ejected_at = nodes[0].calls();
    for _ in 0..30 {
        assert_ne!(client.whoami().await.unwrap(), 0);
    }
    assert_eq!(
        nodes[0].calls(),
        ejected_at,
        "an ejected provider gets no calls"
    );

    // It recovers; after the ejection a probe finds it healthy and it is back in the rotation.
    nodes[0].fail.store(false, Ordering::SeqCst);
    within("provider 0 to be probed back in", async {
        while nodes[0].calls() == ejected_at {
            client.whoami().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..30 {
        *answers.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));
}
