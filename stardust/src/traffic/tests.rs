use super::rules::{Fallback, FaultAction, Match, ServiceRules};
use super::rules::{Fault, Route, Rules, Weighted};
use super::*;

fn weighted(weight: u32, subset: &str) -> Weighted {
    Weighted {
        weight,
        subset: subset.to_owned(),
    }
}

fn route(name: &str, matches: Match, to: Vec<Weighted>) -> Route {
    Route {
        name: name.to_owned(),
        matches,
        to,
        fallback: Fallback::All,
    }
}

fn fault(percent: f64, action: FaultAction) -> Fault {
    Fault {
        name: "drill".to_owned(),
        matches: Match::default(),
        percent,
        action,
    }
}

fn one_service(rules: ServiceRules) -> Rules {
    Rules {
        revision: 1,
        services: BTreeMap::from([("calc.Calculator".to_owned(), rules)]),
    }
}

fn call<'a>(caller: &'a str, method: &'a str, meta: &'a Metadata) -> CallFacts<'a> {
    CallFacts {
        caller,
        method,
        meta,
    }
}

#[test]
fn subsets_parse_and_admit() {
    let tags = BTreeMap::from([("canary".to_owned(), "yes".to_owned())]);
    let none = BTreeMap::new();
    let v14 = Subset::parse("^1.4").unwrap();
    assert!(v14.admits("1.4.2", &none) && v14.admits("1.9.0", &none));
    assert!(!v14.admits("1.3.9", &none) && !v14.admits("2.0.0", &none));
    assert!(!v14.admits("not a version", &none));
    assert!(Subset::parse("*").unwrap().admits("0.1.0", &none));
    let canary = Subset::parse("tag:canary").unwrap();
    assert!(canary.admits("1.0.0", &tags) && !canary.admits("1.0.0", &none));
    let yes = Subset::parse("tag:canary=yes").unwrap();
    let no = Subset::parse("tag:canary=no").unwrap();
    assert!(yes.admits("1.0.0", &tags) && !no.admits("1.0.0", &tags));
    for bad in ["tag:", "tag:=x", "^1.x.y.z", "banana"] {
        let err = Subset::parse(bad).unwrap_err();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn bad_rules_are_refused_naming_the_field() {
    let cases: Vec<(ServiceRules, &str)> = vec![
        (
            ServiceRules {
                faults: vec![fault(120.0, FaultAction::Delay { delay_ms: 5 })],
                ..ServiceRules::default()
            },
            "services.\"calc.Calculator\".faults[0].percent: 120 is not a percentage",
        ),
        (
            ServiceRules {
                faults: vec![fault(10.0, FaultAction::Delay { delay_ms: 0 })],
                ..ServiceRules::default()
            },
            "faults[0].delay_ms: a delay is at least 1 ms",
        ),
        (
            ServiceRules {
                faults: vec![fault(
                    10.0,
                    FaultAction::Abort {
                        error: "Oops".to_owned(),
                    },
                )],
                ..ServiceRules::default()
            },
            "faults[0].error: `Oops` is not an error kind",
        ),
        (
            ServiceRules {
                routes: vec![route(
                    "canary",
                    Match::default(),
                    vec![weighted(90, "^1.4"), weighted(10, "^2.x.y.z")],
                )],
                ..ServiceRules::default()
            },
            "routes[0].to[1].subset: `^2.x.y.z` is neither a version requirement",
        ),
        (
            ServiceRules {
                routes: vec![route("canary", Match::default(), vec![weighted(0, "^1")])],
                ..ServiceRules::default()
            },
            "routes[0].to[0].weight: a weight is at least 1",
        ),
        (
            ServiceRules {
                routes: vec![route("empty", Match::default(), Vec::new())],
                ..ServiceRules::default()
            },
            "routes[0].to: a route needs at least one destination",
        ),
    ];
    for (rules, expected) in cases {
        let err = one_service(rules).validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArguments);
        assert!(err.message().contains(expected), "{err} ≠ {expected}");
    }
    // Good rules pass, for a service nobody may provide yet.
    let good = one_service(ServiceRules {
        revision: 0,
        routes: vec![route(
            "canary",
            Match::default(),
            vec![weighted(95, "^1.4"), weighted(5, "tag:canary")],
        )],
        faults: vec![fault(
            12.5,
            FaultAction::Abort {
                error: "Overloaded".to_owned(),
            },
        )],
    });
    good.validate().unwrap();
    // They survive the registry's encoding unchanged.
    let bytes = rmp_serde::to_vec_named(&good).unwrap();
    assert_eq!(rmp_serde::from_slice::<Rules>(&bytes).unwrap(), good);
}

#[test]
fn matches_look_at_caller_method_and_metadata() {
    let mut marked = Metadata::new();
    marked.insert("x-canary", "1");
    let plain = Metadata::new();
    let m = Match {
        callers: vec!["web".to_owned()],
        methods: vec!["add".to_owned()],
        metadata: BTreeMap::from([("x-canary".to_owned(), "*".to_owned())]),
    };
    assert!(m.matches(&call("web", "add", &marked)));
    assert!(!m.matches(&call("batch", "add", &marked)));
    assert!(!m.matches(&call("web", "mul", &marked)));
    assert!(!m.matches(&call("web", "add", &plain)));
    let exact = Match {
        metadata: BTreeMap::from([("x-canary".to_owned(), "2".to_owned())]),
        ..Match::default()
    };
    assert!(!exact.matches(&call("web", "add", &marked)));
    assert!(Match::default().matches(&call("", "any", &plain)));
}

/// Whether `hits` of `n` draws is within 5 standard deviations of a `p` share.
fn within_5_sigma(hits: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    (hits as f64 - mean).abs() <= 5.0 * sigma
}

#[test]
fn weighted_routes_split_calls_by_weight() {
    let rules = ServiceRules {
        routes: vec![
            route(
                "pinned",
                Match {
                    callers: vec!["batch".to_owned()],
                    ..Match::default()
                },
                vec![weighted(1, "=1.0.0")],
            ),
            route(
                "canary",
                Match::default(),
                vec![weighted(90, "^1.4"), weighted(10, "tag:canary")],
            ),
        ],
        ..ServiceRules::default()
    };
    let traffic = ServiceTraffic::new(&rules, None, true);
    let meta = Metadata::new();
    let mut dice = Dice::seeded(42);
    let n = 10_000;
    let canary = (0..n)
        .filter(|_| {
            let choice = traffic
                .route(&call("web", "add", &meta), &mut dice)
                .unwrap();
            assert_eq!(choice.route, "canary");
            matches!(choice.subset, Subset::Tag { .. })
        })
        .count() as u64;
    assert!(within_5_sigma(canary, n, 0.10), "{canary} of {n}");
    // The caller-app route comes first and pins that app.
    let pinned = traffic
        .route(&call("batch", "add", &meta), &mut dice)
        .unwrap();
    assert_eq!(pinned.route, "pinned");
    assert!(pinned.subset.admits("1.0.0", &BTreeMap::new()));
    // No rules: no route.
    assert!(
        ServiceTraffic::default()
            .route(&call("web", "add", &meta), &mut dice)
            .is_none()
    );
}

#[test]
fn faults_hit_their_share_of_matching_calls() {
    let abort = FaultAction::Abort {
        error: "Overloaded".to_owned(),
    };
    let mut rules = ServiceRules {
        faults: vec![fault(20.0, abort.clone())],
        ..ServiceRules::default()
    };
    rules.faults[0].matches.methods = vec!["add".to_owned()];
    let traffic = ServiceTraffic::new(&rules, None, true);
    let meta = Metadata::new();
    let mut dice = Dice::seeded(7);
    let n = 10_000;
    let hits = (0..n)
        .filter(|_| {
            traffic
                .fault(&call("web", "add", &meta), &mut dice)
                .is_some()
        })
        .count() as u64;
    assert!(within_5_sigma(hits, n, 0.20), "{hits} of {n}");
    // Another method is never hit; 0% never, 100% always.
    assert!((0..1000).all(|_| {
        traffic
            .fault(&call("web", "mul", &meta), &mut dice)
            .is_none()
    }));
    let never = ServiceTraffic::new(
        &ServiceRules {
            faults: vec![fault(0.0, abort.clone())],
            ..ServiceRules::default()
        },
        None,
        true,
    );
    let always = ServiceTraffic::new(
        &ServiceRules {
            faults: vec![fault(100.0, abort)],
            ..ServiceRules::default()
        },
        None,
        true,
    );
    for _ in 0..1000 {
        assert!(never.fault(&call("web", "add", &meta), &mut dice).is_none());
        assert!(
            always
                .fault(&call("web", "add", &meta), &mut dice)
                .is_some()
        );
    }
    assert_eq!(error_kind("Overloaded"), Ok(ErrorKind::Overloaded));
    assert_eq!(error_kind("Internal"), Ok(ErrorKind::Internal));
}

#[test]
fn edits_set_in_place_remove_by_name_and_bump_the_revision() {
    let service = "calc.Calculator";
    let set = |name: &str, subset: &str| RulesEdit::SetRoute {
        service: service.to_owned(),
        route: route(name, Match::default(), vec![weighted(1, subset)]),
    };
    let r1 = Rules::default().edited(&set("a", "^1")).unwrap();
    let r2 = r1.edited(&set("b", "^2")).unwrap();
    let r3 = r2.edited(&set("a", "^3")).unwrap();
    assert_eq!((r1.revision, r2.revision, r3.revision), (1, 2, 3));
    let rules = &r3.services[service];
    assert_eq!(
        rules.revision, 3,
        "the service's own revision follows its changes"
    );
    let names: Vec<&str> = rules.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "a set replaces the rule where it stands");
    assert_eq!(rules.routes[0].to[0].subset, "^3");
    // Removing what is not there names it; nothing changes.
    let missing = RulesEdit::RemoveFault {
        service: service.to_owned(),
        name: "nope".to_owned(),
    };
    let err = r3.edited(&missing).unwrap_err();
    assert!(err.message().contains("no fault named `nope`"), "{err}");
    // A bad rule is refused whole.
    assert!(r3.edited(&set("c", "banana")).is_err());
    // The last rule's removal drops the service.
    let rm = |name: &str| RulesEdit::RemoveRoute {
        service: service.to_owned(),
        name: name.to_owned(),
    };
    let r5 = r3.edited(&rm("a")).unwrap().edited(&rm("b")).unwrap();
    assert_eq!(r5.revision, 5);
    assert!(r5.services.is_empty());
    assert_eq!(r5.service(service), ServiceRules::default());
}

#[test]
fn rules_for_other_callers_and_refused_faults_are_left_out_when_compiled() {
    let rules = ServiceRules {
        routes: vec![route(
            "batch-only",
            Match {
                callers: vec!["batch".to_owned()],
                ..Match::default()
            },
            vec![weighted(1, "=1.0.0")],
        )],
        faults: vec![fault(
            100.0,
            FaultAction::Abort {
                error: "Internal".to_owned(),
            },
        )],
        ..ServiceRules::default()
    };
    let meta = Metadata::new();
    let mut dice = Dice::seeded(3);
    let web = ServiceTraffic::new(&rules, Some("web"), true);
    assert!(web.route(&call("web", "add", &meta), &mut dice).is_none());
    assert!(web.fault(&call("web", "add", &meta), &mut dice).is_some());
    // Compiled for its caller, a rule no longer checks the caller per call.
    let batch = ServiceTraffic::new(&rules, Some("batch"), false);
    assert!(batch.route(&call("", "add", &meta), &mut dice).is_some());
    assert!(batch.fault(&call("", "add", &meta), &mut dice).is_none());
    assert!(ServiceTraffic::new(&ServiceRules::default(), Some("web"), true).is_empty());
}

#[test]
fn routed_calls_go_to_their_subset_or_fall_back() {
    use crate::balance::Target;
    use std::sync::Arc;

    let canary = BTreeMap::from([("canary".to_owned(), "true".to_owned())]);
    let plain = BTreeMap::new();
    let instances = [("1.4.0", &plain), ("1.5.0", &canary)];
    let targets: Arc<[Target]> = Arc::from(vec![
        Target::new("10.0.0.1:1", 100),
        Target::new("10.0.0.2:1", 100),
    ]);
    let context = Arc::new(TrafficContext::new("web".to_owned(), true, 9));
    let mut rules = ServiceRules {
        routes: vec![route(
            "to-canary",
            Match::default(),
            vec![weighted(1, "tag:canary")],
        )],
        ..ServiceRules::default()
    };
    let routed = |rules: &ServiceRules| {
        Routed::new(
            "calc.C",
            rules,
            &context,
            instances.iter().copied(),
            &targets,
        )
        .unwrap()
    };
    let meta = Metadata::new();
    let d = routed(&rules).decide("add", &meta, &targets, true).unwrap();
    assert_eq!(d.targets.len(), 1);
    assert_eq!(&*d.targets[0].endpoint, "10.0.0.2:1");
    // An empty subset: every instance, or `NoProvider` naming the route.
    rules.routes[0].to[0].subset = "tag:none".to_owned();
    let d = routed(&rules).decide("add", &meta, &targets, true).unwrap();
    assert_eq!(d.targets.len(), 2);
    rules.routes[0].fallback = Fallback::Fail;
    let err = routed(&rules)
        .decide("add", &meta, &targets, true)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoProvider);
    assert!(err.message().contains("route `to-canary`"), "{err}");
    // Faults are counted for the status report, by service, name and kind.
    rules.routes.clear();
    rules.faults = vec![fault(100.0, FaultAction::Delay { delay_ms: 7 })];
    let d = routed(&rules).decide("add", &meta, &targets, true).unwrap();
    assert!(matches!(d.fault, Some((_, Injected::Delay(t))) if t.as_millis() == 7));
    assert!(
        routed(&rules)
            .decide("add", &meta, &targets, false)
            .unwrap()
            .fault
            .is_none()
    );
    assert_eq!(
        context.take_injected(),
        [("calc.C".to_owned(), "drill".to_owned(), "delay", 1)]
    );
    assert!(context.take_injected().is_empty());
}
