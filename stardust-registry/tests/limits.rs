//! Per-connection caps (`[limits]`, issue 14 item 4): every argument a logged-in peer sends is
//! bounded, and so is what one connection makes the registry keep. A call over a cap is refused
//! with `Invalid` naming the cap and its value, changes nothing, and the connection stays usable.

mod common;

use std::collections::BTreeMap;

use common::*;
use stardust::ErrorKind;
use stardust::discovery::api::{
    CallFigures, ErrorCount, Latency, MethodFigures, Registration, RegistryClient, RegistryError,
    Status,
};
use stardust_registry::{Config, Limits};

const SVC: &str = "calc.Calculator";

/// `result` is the `Invalid` refusal of cap `limit` at `max`, as the Rust client's
/// `InvalidArguments`.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, RegistryError>, limit: &str, max: usize) {
    let err = result.expect_err("over the cap, the call is refused");
    let RegistryError::Invalid(message) = &err else {
        panic!("expected Invalid naming {limit}, got {err:?}");
    };
    assert!(
        message.contains(&format!("the limit is {max} (limits.{limit})")),
        "{message}"
    );
    assert_eq!(
        stardust::Error::from(err.clone()).kind(),
        ErrorKind::InvalidArguments
    );
}

/// A dev registry with `limits`, and a connection logged in to it.
async fn setup(limits: Limits) -> (stardust_registry::RegistryNode, RegistryClient) {
    let node = start(Config::dev().with_limits(limits)).await;
    let (client, _) = login(node.local_addr(), "limits", "limits-secret").await;
    (node, client)
}

/// The connection still works: a discovery call succeeds.
async fn usable(client: &RegistryClient) {
    within(
        "a discovery after a refusal",
        client.discover(SVC.into(), "*".into()),
    )
    .await
    .expect("the call")
    .expect("the connection is still usable");
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let (node, client) = setup(Limits::default().with_max_subscriptions(3)).await;
    for i in 0..3 {
        within("subscribe", client.subscribe(format!("svc{i}"), "*".into()))
            .await
            .unwrap()
            .unwrap();
    }
    refused(
        within("subscribe", client.subscribe("svc3".into(), "*".into()))
            .await
            .unwrap(),
        "max_subscriptions",
        3,
    );
    assert_eq!(node.subscriptions(), 3, "the refused one was not kept");
    usable(&client).await;

    // Subscribing again to one held replaces it; giving one up makes room.
    within("subscribe", client.subscribe("svc0".into(), "*".into()))
        .await
        .unwrap()
        .expect("a repeated subscription replaces the earlier one");
    assert_eq!(node.subscriptions(), 3);
    assert!(
        within("unsubscribe", client.unsubscribe("svc1".into(), "*".into()))
            .await
            .unwrap()
            .unwrap()
    );
    within("subscribe", client.subscribe("svc3".into(), "*".into()))
        .await
        .unwrap()
        .expect("room again after unsubscribing");
    assert_eq!(node.subscriptions(), 3);

    // The cap is per connection: another one has its own.
    let (other, _) = login(node.local_addr(), "limits", "limits-secret").await;
    within("subscribe", other.subscribe("svc9".into(), "*".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(node.subscriptions(), 4);
    node.shutdown().await;
}

#[tokio::test]
async fn registrations_per_connection_are_capped() {
    let (node, client) = setup(Limits::default().with_max_registrations(2)).await;
    let reg = |port: u16| registration(SVC, "1.0.0", &format!("127.0.0.1:{port}"));
    for port in [9001, 9002] {
        within("register", client.register(reg(port)))
            .await
            .unwrap()
            .unwrap();
    }
    refused(
        within("register", client.register(reg(9003)))
            .await
            .unwrap(),
        "max_registrations",
        2,
    );
    assert_eq!(
        node.registrations().len(),
        2,
        "the refused one was not kept"
    );
    usable(&client).await;

    // Refreshing a registration held takes no new place; deregistering one makes room.
    within("register", client.register(reg(9001)))
        .await
        .unwrap()
        .expect("a refresh is not a new registration");
    assert!(
        within(
            "deregister",
            client.deregister(SVC.into(), "127.0.0.1:9002".into())
        )
        .await
        .unwrap()
        .unwrap()
    );
    within("register", client.register(reg(9003)))
        .await
        .unwrap()
        .expect("room again after deregistering");
    assert_eq!(node.registrations().len(), 2);
    node.shutdown().await;
}

/// Eight registrations sent at once over one connection with a cap of two: exactly two pass.
async fn at_once_counted_exactly(node: stardust_registry::RegistryNode, client: RegistryClient) {
    let mut calls = tokio::task::JoinSet::new();
    for port in 9101..9109u16 {
        let client = client.clone();
        let reg = registration(SVC, "1.0.0", &format!("127.0.0.1:{port}"));
        calls.spawn(async move { within("register", client.register(reg)).await.unwrap() });
    }
    let mut accepted = 0;
    while let Some(outcome) = calls.join_next().await {
        match outcome.unwrap() {
            Ok(_) => accepted += 1,
            Err(e) => refused::<()>(Err(e), "max_registrations", 2),
        }
    }
    assert_eq!(accepted, 2);
    assert_eq!(node.registrations().len(), 2);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_sent_at_once_are_counted_exactly() {
    let (node, client) = setup(Limits::default().with_max_registrations(2)).await;
    at_once_counted_exactly(node, client).await;
}

/// With a shared store a registration reaches the table only once etcd's watch brings it back,
/// so the ones under way must count too.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_sent_at_once_are_counted_exactly_with_etcd() {
    const TEST: &str = "limits_registrations_at_once";
    let Some(etcd) = common::etcd::Etcd::start(TEST).await else {
        return;
    };
    let store = stardust_registry::StoreConfig::parse(&etcd.store_url(TEST)).unwrap();
    let config = Config::dev()
        .with_store(store)
        .with_limits(Limits::default().with_max_registrations(2));
    let node = start(config).await;
    let (client, _) = login(node.local_addr(), "limits", "limits-secret").await;
    at_once_counted_exactly(node, client).await;
}

#[tokio::test]
async fn names_versions_endpoints_and_tags_are_capped() {
    let limits = Limits::default()
        .with_max_name_len(16)
        .with_max_version_len(8)
        .with_max_tags(2)
        .with_max_tag_len(4);
    let (node, client) = setup(limits).await;
    let long_name = "a".repeat(17);
    let long_req = ">=1.0.0, <2.0.0".to_owned(); // 15 bytes
    let register = |r: Registration| {
        let client = client.clone();
        async move { within("register", client.register(r)).await.unwrap() }
    };
    let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let mut r = registration(&long_name, "1.0.0", "127.0.0.1:9001");
    refused(register(r.clone()).await, "max_name_len", 16);
    r.service = SVC.into();
    r.version = "1.0.0-alpha.1".into();
    refused(register(r.clone()).await, "max_version_len", 8);
    r.version = "1.0.0".into();
    r.tags = tags(&[("a", "1"), ("b", "2"), ("c", "3")]);
    refused(register(r.clone()).await, "max_tags", 2);
    r.tags = tags(&[("a", "12345")]);
    refused(register(r.clone()).await, "max_tag_len", 4);
    r.tags = tags(&[("zone1", "a")]);
    refused(register(r.clone()).await, "max_tag_len", 4);
    // An endpoint longer than any `host:port` is refused before it is parsed (or quoted).
    r.tags = tags(&[("zone", "eu")]);
    r.endpoint = format!("{}:80", "h".repeat(10_000));
    let err = register(r.clone()).await.unwrap_err();
    assert!(
        matches!(&err, RegistryError::Invalid(m) if m.contains("at most 259") && m.len() < 200),
        "{err:?}"
    );
    assert!(node.registrations().is_empty());

    // Within the caps, it registers.
    r.endpoint = "127.0.0.1:9001".into();
    register(r).await.expect("within every cap");

    // The other calls' arguments.
    let q = |service: &str, req: &str| (service.to_owned(), req.to_owned());
    for (service, req, limit, max) in [
        (long_name.as_str(), "*", "max_name_len", 16),
        (SVC, long_req.as_str(), "max_version_len", 8),
    ] {
        let (s, v) = q(service, req);
        refused(
            within("discover", client.discover(s.clone(), v.clone()))
                .await
                .unwrap(),
            limit,
            max,
        );
        refused(
            within("subscribe", client.subscribe(s.clone(), v.clone()))
                .await
                .unwrap(),
            limit,
            max,
        );
        refused(
            within("unsubscribe", client.unsubscribe(s, v))
                .await
                .unwrap(),
            limit,
            max,
        );
    }
    refused(
        within(
            "deregister",
            client.deregister(long_name.clone(), "127.0.0.1:9001".into()),
        )
        .await
        .unwrap(),
        "max_name_len",
        16,
    );
    assert_eq!(node.subscriptions(), 0);
    assert_eq!(node.registrations().len(), 1);
    usable(&client).await;
    node.shutdown().await;
}

/// A served entry for `method` of [`SVC`].
fn served(method: &str) -> MethodFigures {
    MethodFigures {
        service: SVC.into(),
        method: method.into(),
        calls: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn status_reports_are_capped() {
    let limits = Limits::default()
        .with_max_report_entries(4)
        .with_max_name_len(32);
    let (node, http) = start_monitored(Config::dev().with_limits(limits)).await;
    let (client, _) = login(node.local_addr(), "limits", "limits-secret").await;
    within(
        "register",
        client.register(registration(SVC, "1.0.0", "127.0.0.1:9001")),
    )
    .await
    .unwrap()
    .unwrap();
    let beat = |status: Status| {
        let client = client.clone();
        async move { within("heartbeat", client.heartbeat(status)).await.unwrap() }
    };

    // Five entries: three served, two called.
    let called = CallFigures {
        endpoint: "127.0.0.1:9001".into(),
        service: SVC.into(),
        calls: 1,
        ..Default::default()
    };
    let over = Status {
        served: vec![served("refused0"), served("refused1"), served("refused2")],
        called: vec![called.clone(), called],
        ..Default::default()
    };
    refused(beat(over).await, "max_report_entries", 4);
    let long_method = Status {
        served: vec![served(&"m".repeat(33))],
        ..Default::default()
    };
    refused(beat(long_method).await, "max_name_len", 32);
    let long_version = Status {
        version: "v".repeat(200),
        ..Default::default()
    };
    refused(beat(long_version).await, "max_version_len", 128);
    let mut errors = served("refused3");
    errors.errors = (0..65).map(|code| ErrorCount { code, count: 1 }).collect();
    let err = beat(Status {
        served: vec![errors],
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Invalid(m) if m.contains("error kinds")),
        "{err:?}"
    );
    let mut buckets = served("refused4");
    buckets.latency = Latency {
        buckets: vec![1; 1000],
        ..Default::default()
    };
    let err = beat(Status {
        served: vec![buckets],
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Invalid(m) if m.contains("latency buckets")),
        "{err:?}"
    );

    // Four entries pass; only what passed is in the figures.
    beat(Status {
        served: vec![
            served("accepted0"),
            served("accepted1"),
            served("accepted2"),
            served("accepted3"),
        ],
        ..Default::default()
    })
    .await
    .expect("within the caps");
    let body = http_get(http, &format!("/api/services/{SVC}")).await.body;
    assert!(body.contains("accepted3"), "{body}");
    assert!(!body.contains("refused"), "{body}");
    node.shutdown().await;
}
