//! Revisioned discovery on the wire: features in the handshake, `watch` snapshots and deltas,
//! clients of the first protocol revision, and subscribers that stop reading.

mod common;

use std::collections::BTreeMap;

use common::raw::RawClient;
use common::*;
use stardust::Client;
use stardust::discovery::api::{
    DELTA_TOPIC, DISCOVERY_TOPIC, DiscoveryEvent, DiscoveryPush, FEATURE_DELTA, FEATURE_RESUME,
    Instance, LoginReply, Registration, RegistryClient, RegistryError, Revision, WatchReply,
};
use stardust_registry::{Config, Limits, RegistryNode};

const CALC: &str = "calc.Calculator";

/// A registry client that announces (and so may use) revisioned discovery.
async fn delta_client(node: &RegistryNode, app: &str) -> RegistryClient {
    let client = within(
        "connect",
        Client::builder()
            .features([FEATURE_DELTA])
            .connect(node.local_addr()),
    )
    .await
    .unwrap();
    let client = RegistryClient::new(client);
    let reply = client
        .login(app.into(), "pw".into())
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply.features.iter().any(|f| f == FEATURE_DELTA),
        "{reply:?}"
    );
    client
}

/// Waits for the next push on `DELTA_TOPIC`.
async fn next_push(notes: &mut stardust::Notifications) -> DiscoveryPush {
    within("a delta push", async {
        loop {
            let n = notes.recv().await.expect("connected");
            if n.topic() == DELTA_TOPIC {
                return n.decode::<DiscoveryPush>().unwrap();
            }
        }
    })
    .await
}

fn delta(push: DiscoveryPush) -> stardust::discovery::api::DiscoveryDelta {
    match push {
        DiscoveryPush::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_starts_from_a_snapshot_and_then_gets_only_changes() {
    let node = start(Config::dev()).await;
    let provider = delta_client(&node, "calc").await;
    assert!(provider.client().peer_features().has(FEATURE_DELTA));
    assert!(provider.client().peer_features().has(FEATURE_RESUME));
    for port in [9001, 9002] {
        provider
            .register(registration(CALC, "1.0.0", &format!("127.0.0.1:{port}")))
            .await
            .unwrap()
            .unwrap();
    }
    let consumer = delta_client(&node, "web").await;
    let mut notes = consumer.client().notifications();
    let reply = consumer
        .watch(CALC.into(), "^1".into(), None)
        .await
        .unwrap()
        .unwrap();
    let WatchReply::Snapshot { at, instances } = reply else {
        panic!("a first watch gets a snapshot: {reply:?}");
    };
    assert_eq!(
        endpoints(&instances.decode().unwrap()),
        ["127.0.0.1:9001", "127.0.0.1:9002"]
    );

    // A join: one instance, continuing from the snapshot's revision.
    provider
        .register(registration(CALC, "1.1.0", "127.0.0.1:9003"))
        .await
        .unwrap()
        .unwrap();
    let d = delta(next_push(&mut notes).await);
    assert_eq!((d.epoch, d.from), (at.epoch, at.rev));
    assert_eq!(endpoints(&d.upserted), ["127.0.0.1:9003"]);
    assert!(d.removed.is_empty());
    let mut rev = d.to;

    // A change of weight is an upsert of that instance alone.
    let mut heavier = registration(CALC, "1.0.0", "127.0.0.1:9001");
    heavier.weight = 7;
    provider.register(heavier).await.unwrap().unwrap();
    let d = delta(next_push(&mut notes).await);
    assert_eq!(d.from, rev);
    assert_eq!(
        (endpoints(&d.upserted), d.upserted[0].weight),
        (vec!["127.0.0.1:9001"], 7)
    );
    rev = d.to;

    // A version outside the requirement: nothing pushed to this group. Then a leave.
    provider
        .register(registration(CALC, "2.0.0", "127.0.0.1:9009"))
        .await
        .unwrap()
        .unwrap();
    provider
        .deregister(CALC.into(), "127.0.0.1:9002".into())
        .await
        .unwrap()
        .unwrap();
    let d = delta(next_push(&mut notes).await);
    assert_eq!(
        d.from, rev,
        "the 2.0.0 registration was not this group's business"
    );
    assert!(d.upserted.is_empty());
    assert_eq!(d.removed, ["127.0.0.1:9002"]);
    let now = Revision {
        epoch: at.epoch,
        rev: d.to,
    };

    // The periodic check: unchanged costs nothing; an old revision gets what it missed.
    let reply = consumer
        .watch(CALC.into(), "^1".into(), Some(now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, WatchReply::Unchanged { at: now });
    let reply = consumer
        .watch(CALC.into(), "^1".into(), Some(at))
        .await
        .unwrap()
        .unwrap();
    let WatchReply::Delta(d) = reply else {
        panic!("a revision still in the log gets a delta: {reply:?}");
    };
    assert_eq!((d.from, d.to), (at.rev, now.rev));
    assert_eq!(endpoints(&d.upserted), ["127.0.0.1:9001", "127.0.0.1:9003"]);
    assert_eq!(d.removed, ["127.0.0.1:9002"]);
    // Another epoch (another node, or this one before a restart): a snapshot.
    let other = Revision {
        epoch: at.epoch.wrapping_add(1),
        rev: now.rev,
    };
    let reply = consumer
        .watch(CALC.into(), "^1".into(), Some(other))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(reply, WatchReply::Snapshot { at, .. } if at == now),
        "{reply:?}"
    );

    // A crash (the provider's connection closes) removes its instances in one delta.
    drop(provider);
    let d = delta(next_push(&mut notes).await);
    assert_eq!(d.from, now.rev);
    let mut removed = d.removed.clone();
    removed.sort();
    assert_eq!(removed, ["127.0.0.1:9001", "127.0.0.1:9003"]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_first_protocol_revision_keeps_getting_whole_lists() {
    let node = start(Config::dev()).await;
    // Exactly the first revision's Hello: no `features` key.
    let mut old = RawClient::connect(node.local_addr(), None, None).await;
    assert!(
        old.ack.features.iter().any(|f| f == FEATURE_DELTA),
        "the registry announces what it has; an old client ignores the key"
    );
    let login: Result<LoginReply, RegistryError> = old.call("login", &("web", "pw")).await;
    login.unwrap();
    let list: Result<Vec<Instance>, RegistryError> = old.call("subscribe", &(CALC, "*")).await;
    assert!(list.unwrap().is_empty());

    let (provider, _) = common::login(node.local_addr(), "calc", "pw").await;
    for port in [9001, 9002] {
        provider
            .register(registration(CALC, "1.0.0", &format!("127.0.0.1:{port}")))
            .await
            .unwrap()
            .unwrap();
    }
    // Whole lists on the first revision's topic, never a delta; the last one has both.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let push = old.next_push().await;
        assert_eq!(
            push.topic, DISCOVERY_TOPIC,
            "no deltas for a client that did not ask"
        );
        let event: DiscoveryEvent = push.decode();
        assert_eq!(
            (event.service.as_str(), event.version_req.as_str()),
            (CALC, "*")
        );
        seen = event.instances.iter().map(|i| i.endpoint.clone()).collect();
    }
    assert_eq!(seen, ["127.0.0.1:9001", "127.0.0.1:9002"]);
    provider
        .deregister(CALC.into(), "127.0.0.1:9001".into())
        .await
        .unwrap()
        .unwrap();
    let event: DiscoveryEvent = old.next_push().await.decode();
    assert_eq!(endpoints(&event.instances), ["127.0.0.1:9002"]);
    node.shutdown().await;
}

/// Fat registrations (many long tags) so that a few hundred pushes are megabytes.
fn fat(port: u16) -> Registration {
    let mut r = registration(CALC, "1.0.0", &format!("127.0.0.1:{port}"));
    r.tags = (0..32)
        .map(|i| (format!("tag-{i:02}"), "x".repeat(250)))
        .collect::<BTreeMap<_, _>>();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_bounded_then_told_to_resync() {
    const BOUND: usize = 64 * 1024;
    let limits = Limits::default()
        .with_subscriber_queue_bytes(BOUND)
        .with_max_registrations(10_000);
    let node = RegistryNode::builder()
        .config(Config::dev().with_limits(limits))
        .http_listen("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    // The slow subscriber: a small receive buffer, and it reads nothing after subscribing.
    let mut slow = RawClient::connect(node.local_addr(), Some(&[FEATURE_DELTA]), Some(4096)).await;
    let login: Result<LoginReply, RegistryError> = slow.call("login", &("web", "pw")).await;
    login.unwrap();
    let reply: Result<WatchReply, RegistryError> =
        slow.call("watch", &(CALC, "*", None::<Revision>)).await;
    let WatchReply::Snapshot { at, .. } = reply.unwrap() else {
        panic!("a first watch gets a snapshot");
    };

    // About 16 MB of changes, far more than the socket buffers and the bound hold.
    let (provider, _) = common::login(node.local_addr(), "calc", "pw").await;
    let http = node.http_addr().unwrap();
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    let mut port = 10_000u16;
    loop {
        for _ in 0..100 {
            provider.register(fat(port)).await.unwrap().unwrap();
            port += 1;
        }
        let text = http_request(http, "GET", "/metrics", None).await.body;
        let dropped = metric(
            &text,
            "stardust_registry_discovery_pushes_total{outcome=\"dropped\"}",
        );
        if dropped > 0 {
            break;
        }
        assert!(
            port < 12_000,
            "2,000 fat registrations and no push was held back"
        );
    }
    // What waited for it never went past the bound, except by one push made to an empty queue
    // (a round's delta: a few fat instances); nowhere near the ~16 MB produced.
    let text = http_request(http, "GET", "/metrics", None).await.body;
    let peak = metric(&text, "stardust_registry_subscriber_queue_peak_bytes");
    assert!(peak <= (BOUND + 1024 * 1024) as u64, "peak {peak}");

    // It reads again: what was queued, then a resync demand; the resync brings it up to date.
    let mut view: BTreeMap<String, Instance> = BTreeMap::new();
    let mut rev = at.rev;
    loop {
        let push = slow.next_push().await;
        assert_eq!(push.topic, DELTA_TOPIC);
        match push.decode::<DiscoveryPush>() {
            DiscoveryPush::Delta(d) => {
                assert_eq!(d.from, rev, "deltas before the pause continue each other");
                rev = d.to;
                for i in d.upserted {
                    view.insert(i.endpoint.clone(), i);
                }
            }
            DiscoveryPush::Resync {
                service,
                version_req,
            } => {
                assert_eq!((service.as_str(), version_req.as_str()), (CALC, "*"));
                break;
            }
        }
    }
    let known = Revision {
        epoch: at.epoch,
        rev,
    };
    let reply: Result<WatchReply, RegistryError> =
        slow.call("watch", &(CALC, "*", Some(known))).await;
    match reply.unwrap() {
        WatchReply::Delta(d) => {
            assert_eq!(d.from, rev);
            for i in d.upserted {
                view.insert(i.endpoint.clone(), i);
            }
        }
        WatchReply::Snapshot { instances, .. } => {
            view = instances
                .decode()
                .unwrap()
                .into_iter()
                .map(|i| (i.endpoint.clone(), i))
                .collect();
        }
        WatchReply::Unchanged { .. } => panic!("it missed changes"),
    }
    let now = provider
        .discover(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.into_values().collect::<Vec<_>>(), now);
    let text = http_request(http, "GET", "/metrics", None).await.body;
    assert!(
        metric(
            &text,
            "stardust_registry_discovery_pushes_total{outcome=\"resync\"}"
        ) >= 1
    );
    node.shutdown().await;
}
