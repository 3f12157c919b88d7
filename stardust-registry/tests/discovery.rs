//! Registration, discovery, permissions, subscriptions and leases.

mod common;

use std::time::Duration;

use common::*;
use stardust::discovery::api::{RegistryError, Status};
use stardust_registry::{AppConfig, Config};

const CALC: &str = "calc.Calculator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_matches_semver_requirements() {
    let node = start(Config::dev()).await;
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    for (version, endpoint) in [
        ("1.1.9", "127.0.0.1:9001"),
        ("1.2.0", "127.0.0.1:9002"),
        ("1.7.3", "127.0.0.1:9003"),
        ("2.0.0", "127.0.0.1:9004"),
    ] {
        let instance = provider
            .register(registration(CALC, version, endpoint))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(instance.app, "calc");
        assert_eq!(instance.version, version);
    }
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    let find = |req: &str| {
        let consumer = consumer.clone();
        let req = req.to_owned();
        async move { consumer.discover(CALC.into(), req).await.unwrap().unwrap() }
    };
    assert_eq!(
        endpoints(&find("^1.2").await),
        ["127.0.0.1:9002", "127.0.0.1:9003"]
    );
    // A bare version means the same as a caret requirement.
    assert_eq!(
        endpoints(&find("1.2").await),
        ["127.0.0.1:9002", "127.0.0.1:9003"]
    );
    assert_eq!(find("*").await.len(), 4);
    assert_eq!(find("").await.len(), 4);
    assert_eq!(endpoints(&find("^2").await), ["127.0.0.1:9004"]);
    assert!(find("^3").await.is_empty());
    assert!(
        consumer
            .discover("other.Service".into(), "*".into())
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    let e = consumer
        .discover(CALC.into(), "not a version".into())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_validated() {
    let node = start(Config::dev()).await;
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    for (version, endpoint) in [
        ("1.2", "127.0.0.1:9000"),
        ("one", "127.0.0.1:9000"),
        ("1.0.0", "127.0.0.1"),
        ("1.0.0", "127.0.0.1:0"),
        ("1.0.0", "no spaces:80"),
    ] {
        let e = provider
            .register(registration(CALC, version, endpoint))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e, RegistryError::Invalid(_)),
            "{version} {endpoint}: {e:?}"
        );
    }
    let e = provider
        .register(registration("", "1.0.0", "localhost:9000"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");

    // Instances are unique per (service, endpoint): registering again refreshes, another app
    // cannot take the endpoint over.
    provider
        .register(registration(CALC, "1.0.0", "calc-1.internal:9000"))
        .await
        .unwrap()
        .unwrap();
    provider
        .register(registration(CALC, "1.0.1", "calc-1.internal:9000"))
        .await
        .unwrap()
        .unwrap();
    let (intruder, _) = login(node.local_addr(), "intruder", "pw").await;
    let e = intruder
        .register(registration(CALC, "9.0.0", "calc-1.internal:9000"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::PermissionDenied(_)), "{e:?}");
    assert!(
        !intruder
            .deregister(CALC.into(), "calc-1.internal:9000".into())
            .await
            .unwrap()
            .unwrap()
    );
    let found = intruder
        .discover(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].version, "1.0.1");
    assert_eq!(found[0].app, "calc");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provide_and_consume_lists_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::new()
        .with_key_file(dir.path().join("keys.toml"))
        .with_app(
            "calc",
            AppConfig::with_secret("calc-pw").unwrap().provide([CALC]),
        )
        .with_app(
            "web",
            AppConfig::with_secret("web-pw")
                .unwrap()
                .consume([CALC])
                .provide(Vec::<String>::new()),
        );
    let node = start(cfg).await;
    let (calc, _) = login(node.local_addr(), "calc", "calc-pw").await;
    let (web, _) = login(node.local_addr(), "web", "web-pw").await;

    calc.register(registration(CALC, "1.0.0", "127.0.0.1:9000"))
        .await
        .unwrap()
        .unwrap();
    let e = calc
        .register(registration("billing.Invoices", "1.0.0", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::PermissionDenied(_)), "{e:?}");
    // An empty provide list: nothing may be provided.
    let e = web
        .register(registration(CALC, "1.0.0", "127.0.0.1:9002"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::PermissionDenied(_)), "{e:?}");

    assert_eq!(
        web.discover(CALC.into(), "*".into())
            .await
            .unwrap()
            .unwrap()
            .len(),
        1
    );
    for e in [
        web.discover("billing.Invoices".into(), "*".into())
            .await
            .unwrap()
            .unwrap_err(),
        web.subscribe("billing.Invoices".into(), "*".into())
            .await
            .unwrap()
            .unwrap_err(),
    ] {
        assert!(matches!(e, RegistryError::PermissionDenied(_)), "{e:?}");
    }
    // No consume list: anything.
    assert!(
        calc.discover("billing.Invoices".into(), "*".into())
            .await
            .unwrap()
            .is_ok()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_the_list_pushed_on_register_and_deregister() {
    let node = start(Config::dev()).await;
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    // Listen before subscribing, so no push can be missed.
    let mut pushes = consumer.client().notifications();
    let initial = consumer
        .subscribe(CALC.into(), "^1.2".into())
        .await
        .unwrap()
        .unwrap();
    assert!(initial.is_empty());

    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    provider
        .register(registration(CALC, "1.2.5", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap();
    let event = next_event(&mut pushes).await;
    assert_eq!(event.service, CALC);
    assert_eq!(event.version_req, "^1.2");
    assert_eq!(endpoints(&event.instances), ["127.0.0.1:9001"]);

    // A non-matching version changes nothing for this subscription: no push. The next push is
    // about the second matching instance, and carries the full list.
    provider
        .register(registration(CALC, "2.0.0", "127.0.0.1:9002"))
        .await
        .unwrap()
        .unwrap();
    provider
        .register(registration(CALC, "1.3.0", "127.0.0.1:9003"))
        .await
        .unwrap()
        .unwrap();
    let event = next_event(&mut pushes).await;
    assert_eq!(
        endpoints(&event.instances),
        ["127.0.0.1:9001", "127.0.0.1:9003"]
    );

    assert!(
        provider
            .deregister(CALC.into(), "127.0.0.1:9001".into())
            .await
            .unwrap()
            .unwrap()
    );
    let event = next_event(&mut pushes).await;
    assert_eq!(endpoints(&event.instances), ["127.0.0.1:9003"]);
    // Deregistering again: nothing there any more.
    assert!(
        !provider
            .deregister(CALC.into(), "127.0.0.1:9001".into())
            .await
            .unwrap()
            .unwrap()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_the_pushes() {
    let node = start(Config::dev()).await;
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    let mut pushes = consumer.client().notifications();
    for service in [CALC, "other.Service"] {
        consumer
            .subscribe(service.into(), "*".into())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        consumer
            .unsubscribe(CALC.into(), "*".into())
            .await
            .unwrap()
            .unwrap()
    );
    // Again, or one that never was: nothing to stop.
    for (service, req) in [(CALC, "*"), ("other.Service", "^1")] {
        assert!(
            !consumer
                .unsubscribe(service.into(), req.into())
                .await
                .unwrap()
                .unwrap()
        );
    }

    // Pushes on one connection arrive in order: had the first registration been pushed, it
    // would come before the second's.
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    for (service, endpoint) in [
        (CALC, "127.0.0.1:9001"),
        ("other.Service", "127.0.0.1:9002"),
    ] {
        provider
            .register(registration(service, "1.0.0", endpoint))
            .await
            .unwrap()
            .unwrap();
    }
    let event = next_event(&mut pushes).await;
    assert_eq!(event.service, "other.Service");
    assert_eq!(endpoints(&event.instances), ["127.0.0.1:9002"]);

    // Anonymous connections have nothing to unsubscribe.
    let anonymous = connect(node.local_addr()).await;
    let refused = anonymous
        .unsubscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            refused,
            stardust::discovery::api::RegistryError::Unauthorized(_)
        ),
        "{refused}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_without_heartbeats_expires() {
    let node = start(Config::dev().with_lease_ttl(Duration::from_millis(200))).await;
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    let mut pushes = consumer.client().notifications();
    consumer
        .subscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();

    // The provider stays connected (a hung process) but never heartbeats.
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    provider
        .register(registration(CALC, "1.0.0", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut pushes).await.instances.len(), 1);
    let event = next_event(&mut pushes).await;
    assert!(event.instances.is_empty(), "expected expiry, got {event:?}");
    assert!(
        consumer
            .discover(CALC.into(), "*".into())
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
    // Its next heartbeat is refused, saying why, so a real provider reconnects and registers
    // again instead of heartbeating on, invisible.
    let refused = provider
        .heartbeat(Status::default())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&refused, RegistryError::Invalid(m) if m.contains("expired")),
        "{refused:?}"
    );
    // Told once, and the session survives its lease: it can register again.
    provider
        .heartbeat(Status::default())
        .await
        .unwrap()
        .unwrap();
    provider
        .register(registration(CALC, "1.0.0", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut pushes).await.instances.len(), 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_lease_alive() {
    // Heartbeats every 50 ms against a 2 s lease: only a 2 s stall of the test could let the
    // lease lapse. That a lease's lifetime has passed is shown by an event, not a sleep: a
    // second provider, registered later and never heartbeating, sees its lease expire.
    let ttl = Duration::from_secs(2);
    let node = start(Config::dev().with_lease_ttl(ttl)).await;
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    let mut pushes = consumer.client().notifications();
    consumer
        .subscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    provider
        .register(registration(CALC, "1.0.0", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut pushes).await.instances.len(), 1);

    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let beating = {
        let (provider, stop) = (provider.clone(), stop.clone());
        tokio::spawn(async move {
            let mut beats = 0u64;
            loop {
                provider
                    .heartbeat(Status {
                        in_flight: beats,
                        uptime_ms: beats * 50,
                        version: "test".into(),
                        ..Status::default()
                    })
                    .await
                    .unwrap()
                    .unwrap();
                beats += 1;
                tokio::select! {
                    _ = stop.notified() => return beats,
                    _ = tokio::time::sleep(ttl / 40) => {}
                }
            }
        })
    };
    let (silent, _) = login(node.local_addr(), "calc", "pw").await;
    silent
        .register(registration(CALC, "1.0.0", "127.0.0.1:9002"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut pushes).await.instances.len(), 2);
    // The later, silent registration expires; the heartbeating one, older, stays.
    let event = next_event(&mut pushes).await;
    assert_eq!(endpoints(&event.instances), ["127.0.0.1:9001"]);
    stop.notify_one();
    let beats = within("the heartbeats to stop", beating).await.unwrap();
    assert!(beats > 1, "{beats} heartbeats");
    // Then it stops: the lease expires.
    assert!(next_event(&mut pushes).await.instances.is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_provider_connection_removes_its_instances_at_once() {
    // A long lease: only the disconnect can explain a prompt removal.
    let node = start(Config::dev().with_lease_ttl(Duration::from_secs(3600))).await;
    let (consumer, _) = login(node.local_addr(), "web", "pw").await;
    let mut pushes = consumer.client().notifications();
    consumer
        .subscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();

    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    for endpoint in ["127.0.0.1:9001", "127.0.0.1:9002"] {
        provider
            .register(registration(CALC, "1.0.0", endpoint))
            .await
            .unwrap()
            .unwrap();
    }
    // Pushes are batched in rounds: the two registrations arrive in one push or in two.
    let mut listed = 0;
    while listed < 2 {
        listed = next_event(&mut pushes).await.instances.len();
    }

    drop(provider);
    let event = next_event(&mut pushes).await;
    assert!(event.instances.is_empty(), "{event:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_die_with_their_connection() {
    let node = start(Config::dev()).await;
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    let (gone, _) = login(node.local_addr(), "web", "pw").await;
    gone.subscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    let (stays, _) = login(node.local_addr(), "web", "pw").await;
    let mut pushes = stays.client().notifications();
    stays
        .subscribe(CALC.into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    drop(gone);
    // Pushes keep flowing to the live subscriber (the dead one is simply skipped).
    provider
        .register(registration(CALC, "1.0.0", "127.0.0.1:9001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next_event(&mut pushes).await.instances.len(), 1);
    node.shutdown().await;
}
