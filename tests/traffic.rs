//! Traffic management and fault injection, end to end over loopback: an admin sets routes and
//! faults in the registry, consumers receive them without reconnecting and apply them per
//! call. Shares are counted over 10,000 calls with seeded draws and checked within 5 standard
//! deviations; waits are on events (see `canary_service`'s probe), never on sleeps.

#[path = "common/canary_service.rs"]
mod canary;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use canary::*;
use common::within;
use stardust::ErrorKind;
use stardust::balance::{Hedging, RoundRobin};
use stardust::discovery::api::RegistryError;
use stardust::traffic::{Fallback, FaultAction, Match, RulesEdit};

const N: u64 = 10_000;

/// Makes `n` calls of `which`, 16 at a time; the labels that answered, and the errors.
async fn count(client: &CanaryClient, n: u64) -> (Vec<String>, Vec<stardust::Error>) {
    let left = Arc::new(AtomicU64::new(n));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let left = left.clone();
            tokio::spawn(async move {
                let (mut labels, mut errors) = (Vec::new(), Vec::new());
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                    .is_ok()
                {
                    match client.which().await {
                        Ok(label) => labels.push(label),
                        Err(e) => errors.push(e),
                    }
                }
                (labels, errors)
            })
        })
        .collect();
    let (mut labels, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (l, e) = within("the calls", t).await.unwrap();
        labels.extend(l);
        errors.extend(e);
    }
    (labels, errors)
}

fn share(labels: &[String], label: &str) -> u64 {
    labels.iter().filter(|l| *l == label).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_route_splits_calls_by_weight() {
    let mut s = Scene::start(WEB, |b| b).await;
    let (client, admin) = (&s.client, &mut s.admin);
    admin
        .route_all("split", &[(90, "=1.4.0"), (10, "=1.5.0")])
        .await;
    admin.synced(&[client]).await;
    let (labels, errors) = count(client, N).await;
    assert!(errors.is_empty(), "{errors:?}");
    let new = share(&labels, "new");
    // `=1.4.0` holds two instances (stable and canary): the balancer picks within it.
    assert_eq!(new + share(&labels, "stable") + share(&labels, "canary"), N);
    assert!(within_5_sigma(new, N, 0.10), "{new} of {N} went to 1.5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_route_sends_marked_calls_to_the_canary_and_no_others() {
    let mut s = Scene::start(WEB, |b| b).await;
    let (client, admin) = (&s.client, &mut s.admin);
    let marked = CanaryClient::new(client.client().with_metadata("x-canary", "1"));
    admin.route_marked_to_canary().await;
    admin.route_all("rest", &[(1, "=1.5.0")]).await;
    admin.synced(&[client]).await;
    let (labels, errors) = count(&marked, 500).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        share(&labels, "canary"),
        500,
        "every marked call to the canary"
    );
    let (labels, errors) = count(client, 500).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(share(&labels, "new"), 500, "no unmarked call to the canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_app_route_pins_that_app() {
    let mut s = Scene::start(WEB, |b| b).await;
    let batch = consumer(&s.node, BATCH, |b| b).await;
    let batch_client = batch.client_matching::<CanaryClient>("*");
    sees_all(&batch_client).await;
    let (web_client, admin) = (&s.client, &mut s.admin);
    let batch_only = Match {
        callers: vec![BATCH.0.into()],
        ..Match::default()
    };
    admin
        .set_route(route(
            "pin-batch",
            batch_only,
            &[(1, "=1.4.0")],
            Fallback::Fail,
        ))
        .await;
    admin.route_all("others", &[(1, "=1.5.0")]).await;
    admin.synced(&[web_client, &batch_client]).await;
    let (labels, errors) = count(&batch_client, 400).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(share(&labels, "new"), 0, "batch stays on 1.4.0: {labels:?}");
    let (labels, _) = count(web_client, 400).await;
    assert_eq!(share(&labels, "new"), 400, "web goes to 1.5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_route_under_load_moves_traffic_without_a_failed_call() {
    // No hedging: a hedge of a call routed before the change would still go to 1.4.0.
    let mut s = Scene::start(WEB, |b| b.hedging(Hedging::off())).await;
    let (client, admin) = (&s.client, &mut s.admin);
    let providers = &s.providers;
    admin.route_all("to", &[(1, "=1.4.0")]).await;
    admin.synced(&[client]).await;
    // Load: 8 callers until told to stop; every failure is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut calls = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    calls += 1;
                    if let Err(e) = client.which().await {
                        failures.push(e);
                    }
                }
                (calls, failures)
            })
        })
        .collect();
    let before = providers.ran("new");
    admin.route_all("to", &[(1, "=1.5.0")]).await;
    // The move shows at the providers: 1.5.0 takes calls, and then takes all of them.
    within("traffic to move to 1.5.0", async {
        while providers.ran("new") < before + 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (old, new) = (
        providers.ran("stable") + providers.ran("canary"),
        providers.ran("new"),
    );
    within("more calls after the move", async {
        while providers.ran("new") < new + 200 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        let (calls, failures) = within("the callers", t).await.unwrap();
        assert!(
            failures.is_empty(),
            "calls failed during the change: {failures:?}"
        );
        total += calls;
    }
    assert!(total > 400);
    // Once 1.5.0 had taken 200 calls after the change, nothing new went to 1.4.0: at most the
    // 8 calls the callers had already sent when the count was read reached it afterwards.
    let late = providers.ran("stable") + providers.ran("canary") - old;
    assert!(late <= 8, "{late} calls went to 1.4.0 after the move");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_fault_fails_its_share_ejects_nobody_and_is_counted() {
    // No hedging: every call the providers run is one the consumer sent once.
    let mut s = Scene::start(WEB, |b| b.hedging(Hedging::off())).await;
    let (admin, providers, node) = (&mut s.admin, &s.providers, &s.node);
    // Round robin: a provider ejected by the drill would visibly stop taking calls.
    let client = s
        .star
        .client_matching_with::<CanaryClient>("*", RoundRobin::new());
    sees_all(&client).await;
    let abort = FaultAction::Abort {
        error: "Overloaded".into(),
    };
    admin.set_fault(fault("drill", 20.0, abort)).await;
    admin.synced(&[&client]).await;
    let ran_before = providers.total();
    let (labels, errors) = count(&client, N).await;
    let aborted = errors.len() as u64;
    for e in &errors {
        assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
        assert!(e.message().contains("fault `drill`"), "{e}");
    }
    assert!(within_5_sigma(aborted, N, 0.20), "{aborted} of {N} aborted");
    // Never sent, never retried: the providers ran exactly the calls that succeeded.
    assert_eq!(providers.total() - ran_before, labels.len() as u64);
    // Nobody was ejected: every provider keeps its turn.
    let (labels, _) = count(&client, 300).await;
    for label in ["stable", "new", "canary"] {
        assert!(share(&labels, label) > 30, "{label}: {labels:?}");
    }
    // The registry counts the injected faults from the consumer's status reports.
    let line = format!(
        "stardust_faults_injected_total{{service=\"{SERVICE}\",fault=\"drill\",kind=\"abort\"}}"
    );
    within("the faults to be counted in /metrics", async {
        loop {
            let text = common::registry_metrics(node).await;
            let counted = text
                .lines()
                .find(|l| l.starts_with(&line))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
            if counted.is_some_and(|c| c >= aborted) {
                assert!(counted.unwrap() < aborted + 300, "{counted:?} vs {aborted}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Removing the fault restores clean calls.
    admin.remove_fault("drill").await;
    admin.synced(&[&client]).await;
    let (_, errors) = count(&client, 500).await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_past_the_deadline_is_deadline_exceeded_and_consumers_may_opt_out() {
    let mut s = Scene::start(WEB, |b| b).await;
    let careful = consumer(&s.node, BATCH, |b| b.faults(false)).await;
    let opted_out = careful.client_matching::<CanaryClient>("*");
    let (client, admin) = (&s.client, &mut s.admin);
    let delay = FaultAction::Delay { delay_ms: 60_000 };
    admin.set_fault(fault("slow", 100.0, delay)).await;
    admin.synced(&[client, &opted_out]).await;
    let short = client.with_timeout(Duration::from_millis(200));
    let err = within("a delayed call", short.which()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    assert!(err.message().contains("fault `slow`"), "{err}");
    // The consumer that opted out sees no fault at all.
    let (_, errors) = count(&opted_out.with_timeout(Duration::from_secs(10)), 200).await;
    assert!(errors.is_empty(), "{errors:?}");
    // Removing it restores clean calls.
    admin.remove_fault("slow").await;
    admin.synced(&[client]).await;
    let (_, errors) = count(client, 200).await;
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_edit_rules_and_bad_rules_are_refused_naming_the_field() {
    let dir = scratch();
    let node = registry(dir.path()).await;
    let web = registry_client(&node, WEB).await;
    let edit = RulesEdit::SetFault {
        service: SERVICE.into(),
        fault: fault("drill", 10.0, FaultAction::Delay { delay_ms: 5 }),
    };
    match web.edit_rules(edit.clone(), None).await.unwrap() {
        Err(RegistryError::PermissionDenied(m)) => {
            assert!(m.contains("roles = [\"admin\"]"), "{m}")
        }
        other => panic!("a non-admin edited the rules: {other:?}"),
    }
    // Reading them is fine for any app.
    assert_eq!(web.rules().await.unwrap().unwrap().revision, 0);
    let admin = Admin::new(&node).await;
    let revision = admin.client.rules().await.unwrap().unwrap().revision;
    // A stale --if-revision is refused and changes nothing.
    match admin
        .client
        .edit_rules(edit.clone(), Some(revision - 1))
        .await
        .unwrap()
    {
        Err(RegistryError::Invalid(m)) => assert!(m.contains("--if-revision"), "{m}"),
        other => panic!("a stale edit went through: {other:?}"),
    }
    assert_eq!(
        admin.client.rules().await.unwrap().unwrap().revision,
        revision
    );
    assert_eq!(
        admin.client.edit_rules(edit, Some(revision)).await.unwrap(),
        Ok(revision + 1)
    );
    // Bad rules name the field; an unknown service is fine.
    let bad = RulesEdit::SetFault {
        service: "not.yet.Registered".into(),
        fault: fault("too-much", 120.0, FaultAction::Delay { delay_ms: 5 }),
    };
    match admin.edit(bad).await {
        Err(RegistryError::Invalid(m)) => assert!(m.contains("faults[0].percent"), "{m}"),
        other => panic!("{other:?}"),
    }
    let bad = RulesEdit::SetRoute {
        service: "not.yet.Registered".into(),
        route: route("v", Match::default(), &[(1, "^1.x.y.z")], Fallback::All),
    };
    match admin.edit(bad).await {
        Err(RegistryError::Invalid(m)) => assert!(m.contains("routes[0].to[0].subset"), "{m}"),
        other => panic!("{other:?}"),
    }
    let fine = RulesEdit::SetRoute {
        service: "not.yet.Registered".into(),
        route: route("v", Match::default(), &[(1, "^1.4")], Fallback::All),
    };
    admin
        .edit(fine)
        .await
        .expect("a rule for a service nobody provides yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_survive_a_registry_restart_in_the_rules_file() {
    let dir = scratch();
    let node = registry(dir.path()).await;
    let admin = Admin::new(&node).await;
    admin
        .set_route(route(
            "split",
            Match::default(),
            &[(95, "^1.4"), (5, "tag:canary")],
            Fallback::All,
        ))
        .await;
    admin
        .set_fault(fault("slow", 12.5, FaultAction::Delay { delay_ms: 200 }))
        .await;
    let before = node.rules();
    assert_eq!(before.revision, 3);
    drop(admin);
    node.shutdown().await;
    let node = registry(dir.path()).await;
    assert_eq!(node.rules(), before);
    // And editing goes on from there.
    let admin = Admin::new(&node).await;
    assert_eq!(node.rules().revision, 4);
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_empty_subset_falls_back_as_it_says() {
    let mut s = Scene::start(WEB, |b| b).await;
    let (client, admin) = (&s.client, &mut s.admin);
    admin.route_all("gone", &[(1, "^9")]).await;
    admin.synced(&[client]).await;
    let err = client.which().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.message().contains("route `gone`"), "{err}");
    admin
        .set_route(route("gone", Match::default(), &[(1, "^9")], Fallback::All))
        .await;
    admin.synced(&[client]).await;
    let (_, errors) = count(client, 100).await;
    assert!(errors.is_empty(), "{errors:?}");
}
