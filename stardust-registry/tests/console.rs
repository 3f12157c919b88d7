//! The web console in a real browser: headless Chromium, driven over the DevTools protocol.
//!
//! An embedded registry gets fake provider instances (handcrafted status reports, so the counts
//! are exact); the test opens the console, waits until the service and its instance count show,
//! reports more calls, and waits until the page's call count rises without a reload. Another
//! sets a fault in the traffic rules and waits for the console's "fault injection active"
//! markers, then removes it and waits for them to go.
//!
//! Needs Debian's `chromium` (or `chromium-browser`, or the binary named by `STARDUST_CHROMIUM`).
//! Without one the test prints `SKIPPED` and passes, unless `STARDUST_REQUIRE_EXTERNAL=1` (CI),
//! where it fails. `STARDUST_UPDATE_SCREENSHOT=1` also feeds a realistic deployment for about a
//! minute and writes `docs/console.png` (the README's screenshot).

#[path = "console/admin.rs"]
mod admin;
#[path = "console/chromium.rs"]
mod chromium;
mod common;

use std::path::Path;
use std::time::Duration;

use chromium::{Browser, Page, find_chromium};
use common::*;
use stardust::ErrorKind;
use stardust::discovery::api::{
    CallFigures, ErrorCount, FaultCount, LATENCY_BOUNDS_US, Latency, MethodFigures, Registration,
    RegistryClient, Status,
};
use stardust::traffic::{Fallback, Fault, FaultAction, Match, Route, RulesEdit, Weighted};
use stardust_registry::{AppConfig, Config};

const SERVICE: &str = "test.Calc";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_services_and_updates_live() {
    let Some(chromium) = find_chromium() else {
        return;
    };
    let screenshot = std::env::var("STARDUST_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    let (node, http) =
        start_monitored(Config::dev().with_lease_ttl(Duration::from_secs(3600))).await;

    // Two instances of test.Calc, 10 calls each so far.
    let mut providers = Vec::new();
    for port in [9101, 9102] {
        let (client, _) = login(node.local_addr(), "calc", "pw").await;
        let endpoint = format!("127.0.0.1:{port}");
        client
            .register(registration(SERVICE, "1.0.0", &endpoint))
            .await
            .unwrap()
            .unwrap();
        beat(&client, report(SERVICE, &[("add", 10, 120, &[])])).await;
        providers.push(client);
    }

    let browser = Browser::launch(&chromium).await;
    let mut page = browser.page().await;
    page.navigate(&format!("http://{http}/")).await;

    let card = format!("document.querySelector('[data-service=\"{SERVICE}\"]')");
    let field = |name: &str| {
        format!("({card}?.querySelector('[data-field=\"{name}\"]')?.dataset.value ?? null)")
    };
    page.wait_for(
        "the service card with 2 instances",
        &format!("{} === '2'", field("instances")),
    )
    .await;
    page.wait_for(
        "20 calls on the page",
        &format!("{} === '20'", field("calls-total")),
    )
    .await;
    let rows = page
        .eval(&format!(
            "[...{card}.querySelectorAll('tr[data-instance]')].map(r => r.dataset.instance + ' ' + r.dataset.health).join(', ')"
        ))
        .await;
    assert_eq!(rows, "127.0.0.1:9101 healthy, 127.0.0.1:9102 healthy");

    // More calls: the count rises in place (a marker set on the window survives: no reload).
    page.eval("window.__noReload = 1").await;
    beat(&providers[0], report(SERVICE, &[("add", 15, 120, &[])])).await;
    page.wait_for(
        "35 calls on the page, without a reload",
        &format!(
            "{} === '35' && window.__noReload === 1",
            field("calls-total")
        ),
    )
    .await;

    node.shutdown().await;
    if screenshot {
        take_screenshot(&mut page).await;
    }
    browser.close(page).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_marks_fault_injection_while_a_fault_is_on() {
    let Some(chromium) = find_chromium() else {
        return;
    };
    let admin = AppConfig::with_secret("ops-secret")
        .unwrap()
        .roles(["admin"]);
    let config = Config::dev()
        .with_lease_ttl(Duration::from_secs(3600))
        .with_app("ops", admin);
    let (node, http) = start_monitored(config).await;
    let (provider, _) = login(node.local_addr(), "calc", "pw").await;
    provider
        .register(registration(SERVICE, "1.0.0", "127.0.0.1:9101"))
        .await
        .unwrap()
        .unwrap();
    beat(&provider, report(SERVICE, &[("add", 10, 120, &[])])).await;
    let (ops, _) = login(node.local_addr(), "ops", "ops-secret").await;
    let edit = async |edit: RulesEdit| {
        within("edit_rules", ops.edit_rules(edit, None))
            .await
            .expect("edit_rules call")
            .expect("edit accepted")
    };
    // A route from the start: rules, but no fault.
    edit(RulesEdit::SetRoute {
        service: SERVICE.into(),
        route: Route {
            name: "canary".into(),
            matches: Match::default(),
            to: vec![
                Weighted {
                    weight: 95,
                    subset: "^1".into(),
                },
                Weighted {
                    weight: 5,
                    subset: "tag:canary".into(),
                },
            ],
            fallback: Fallback::All,
        },
    })
    .await;

    let browser = Browser::launch(&chromium).await;
    let mut page = browser.page().await;
    page.navigate(&format!("http://{http}/")).await;
    let card = format!("document.querySelector('[data-service=\"{SERVICE}\"]')");
    let in_card = |selector: &str| format!("{card}?.querySelector('{selector}')");
    let header_marker = "document.getElementById('faults-active')";
    let card_marker = in_card("[data-field=\"fault-badge\"]");
    page.wait_for(
        "the service card with its route",
        &format!(
            "{}?.textContent.includes('95%')",
            in_card("[data-route=\"canary\"]")
        ),
    )
    .await;
    assert_eq!(
        page.eval(&format!(
            "{header_marker}.hidden && {card_marker}.hidden && !document.getElementById('fault-banner').checkVisibility()"
        ))
        .await,
        "true",
        "a fault marker shows without any fault"
    );

    // A fault, and a consumer that injected it into 3 calls: both markers and the count show.
    edit(RulesEdit::SetFault {
        service: SERVICE.into(),
        fault: Fault {
            name: "boom".into(),
            matches: Match::default(),
            percent: 50.0,
            action: FaultAction::Abort {
                error: "Overloaded".into(),
            },
        },
    })
    .await;
    let (web, _) = login(node.local_addr(), "web", "pw").await;
    beat(
        &web,
        Status {
            window_ms: 1000,
            faults: vec![FaultCount {
                service: SERVICE.into(),
                fault: "boom".into(),
                kind: "abort".into(),
                count: 3,
            }],
            ..Status::default()
        },
    )
    .await;
    page.wait_for(
        "the fault injection markers and the injected count",
        &format!(
            "{header_marker}.checkVisibility() && {card_marker}.checkVisibility() \
             && {card}.dataset.faults === 'active' \
             && {}?.dataset.injected === '3'",
            in_card("[data-fault=\"boom\"]")
        ),
    )
    .await;
    let text = page
        .eval(&format!(
            "{header_marker}.textContent + ' | ' + {card_marker}.textContent + ' | ' + {}.textContent",
            in_card("[data-fault=\"boom\"]")
        ))
        .await;
    assert!(
        text.starts_with("FAULT INJECTION ACTIVE | FAULT INJECTION ACTIVE | boom: 50% of calls"),
        "{text}"
    );
    assert!(text.contains("Overloaded"), "{text}");

    // The fault removed: the markers go, without a reload; the route stays.
    page.eval("window.__noReload = 1").await;
    edit(RulesEdit::RemoveFault {
        service: SERVICE.into(),
        name: "boom".into(),
    })
    .await;
    page.wait_for(
        "the fault injection markers to go",
        &format!(
            "{header_marker}.hidden && {card_marker}.hidden && {card}.dataset.faults === '' \
             && !{}?.checkVisibility() && window.__noReload === 1",
            in_card("[data-fault=\"boom\"]")
        ),
    )
    .await;
    assert_eq!(
        page.eval(&format!("!!{}", in_card("[data-route=\"canary\"]")))
            .await,
        "true"
    );

    node.shutdown().await;
    browser.close(page).await;
}

// ---------------------------------------------------------------------------------------------
// Reports

type Method<'a> = (&'a str, u64, u64, &'a [(ErrorKind, u64)]);

/// A one-minute report of `methods`: (name, calls, typical µs, errors). A minute, not the
/// usual few seconds: an instance turns `stale` after two report windows without one, and
/// starting Chromium on a loaded machine can take longer than a short window (CI once saw it).
fn report(service: &str, methods: &[Method]) -> Status {
    Status {
        in_flight: 1,
        uptime_ms: 3_600_000,
        version: "0.1.0".into(),
        window_ms: 60_000,
        cpu_ms: 35,
        rss_bytes: 48 << 20,
        unbound_tokens_accepted: 0,
        served: methods
            .iter()
            .map(|&(method, calls, us, errors)| MethodFigures {
                service: service.into(),
                method: method.into(),
                calls,
                errors: errors
                    .iter()
                    .map(|&(k, count)| ErrorCount {
                        code: k.code(),
                        count,
                    })
                    .collect(),
                in_flight: 0,
                latency: latency(calls, us),
                items_in: 0,
                items_out: 0,
                slowest: None,
                failed: None,
            })
            .collect(),
        called: Vec::new(),
        faults: Vec::new(),
    }
}

/// `calls` calls spread around `us` like a real service's: most near it, a tail up to 12x.
fn latency(calls: u64, us: u64) -> Latency {
    if calls == 0 {
        return Latency::default();
    }
    let mut buckets = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
    let bucket = |v: u64| {
        LATENCY_BOUNDS_US
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len())
    };
    let tail = calls / 10;
    let far = calls / 100;
    buckets[bucket(us)] += calls - tail;
    buckets[bucket(us * 3)] += tail - far;
    buckets[bucket(us * 12)] += far;
    Latency {
        buckets,
        sum_us: calls * us * 13 / 10,
        p50_us: us,
        p90_us: us * 2,
        p99_us: if far > 0 { us * 9 } else { us * 3 },
        max_us: us * 12,
    }
}

async fn beat(client: &RegistryClient, status: Status) {
    within("heartbeat", client.heartbeat(status))
        .await
        .expect("heartbeat call")
        .expect("heartbeat accepted");
}

// ---------------------------------------------------------------------------------------------
// The README's screenshot: a small deployment, fed for a minute.

struct Fake {
    client: RegistryClient,
    service: &'static str,
    /// (method, calls per second, typical µs)
    methods: Vec<(&'static str, f64, u64)>,
    /// Errors per call, and their kind.
    error_rate: f64,
    error_kind: ErrorKind,
    phase: f64,
    cpu_ms: u64,
    rss: u64,
}

/// Feeds a fresh registry with a small, realistic deployment for a minute, then writes a picture
/// of its console to `docs/console.png`.
async fn take_screenshot(page: &mut Page) {
    const FEED_SECS: u64 = 70;
    let (node, http) =
        start_monitored(Config::dev().with_lease_ttl(Duration::from_secs(3600))).await;
    page.navigate(&format!("http://{http}/")).await;
    eprintln!("feeding a realistic deployment for {FEED_SECS} s for the screenshot...");
    struct Deployed {
        service: &'static str,
        app: &'static str,
        version: &'static str,
        endpoints: &'static [&'static str],
        methods: Vec<(&'static str, f64, u64)>,
        error_rate: f64,
        error_kind: ErrorKind,
    }
    let deployment = [
        Deployed {
            service: "billing.Invoices",
            app: "billing",
            version: "2.3.1",
            endpoints: &["10.0.1.11:7000", "10.0.1.12:7000", "10.0.1.13:7000"],
            methods: vec![
                ("create", 14.0, 2_400),
                ("get", 55.0, 650),
                ("list", 9.0, 7_800),
                ("void", 0.6, 3_100),
            ],
            error_rate: 0.002,
            error_kind: ErrorKind::DeadlineExceeded,
        },
        Deployed {
            service: "calc.Calculator",
            app: "calc",
            version: "1.4.0",
            endpoints: &["10.0.2.21:7000", "10.0.2.22:7000"],
            methods: vec![("add", 310.0, 85), ("div", 120.0, 90), ("whoami", 4.0, 60)],
            error_rate: 0.0,
            error_kind: ErrorKind::Internal,
        },
        Deployed {
            service: "auth.Users",
            app: "auth",
            version: "0.9.2",
            endpoints: &["10.0.3.31:7100", "10.0.3.32:7100"],
            methods: vec![("lookup", 42.0, 1_200), ("verify", 30.0, 4_500)],
            error_rate: 0.0,
            error_kind: ErrorKind::Internal,
        },
        Deployed {
            service: "search.Index",
            app: "search",
            version: "3.0.0",
            endpoints: &["10.0.4.41:7200"],
            methods: vec![("query", 24.0, 38_000), ("suggest", 36.0, 9_000)],
            error_rate: 0.08,
            error_kind: ErrorKind::DeadlineExceeded,
        },
    ];
    let mut fakes = Vec::new();
    for (i, d) in deployment.into_iter().enumerate() {
        for (j, endpoint) in d.endpoints.iter().enumerate() {
            let (client, _) = login(node.local_addr(), d.app, "pw").await;
            let mut tags = std::collections::BTreeMap::new();
            tags.insert("zone".to_owned(), format!("eu-west-{}", 1 + j % 2));
            client
                .register(Registration {
                    service: d.service.into(),
                    version: d.version.into(),
                    endpoint: (*endpoint).into(),
                    weight: 100,
                    tags,
                    tls: d.service == "auth.Users",
                    description: None,
                })
                .await
                .unwrap()
                .unwrap();
            fakes.push(Fake {
                client,
                service: d.service,
                methods: d.methods.clone(),
                error_rate: d.error_rate,
                error_kind: d.error_kind,
                phase: (i * 3 + j) as f64 * 1.7,
                cpu_ms: 20 + (i as u64 * 37 + j as u64 * 11) % 90,
                rss: (40 + (i as u64 * 53 + j as u64 * 17) % 160) << 20,
            });
        }
    }
    // A consumer that cannot reach one auth.Users instance (the other works).
    let (web, _) = login(node.local_addr(), "web", "pw").await;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1000) as f64 / 1000.0
    };
    // Reports every second, until the picture is taken.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let feeder = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while matches!(
            stopped.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ) {
            tick.tick().await;
            let t = start.elapsed().as_secs_f64();
            for fake in &fakes {
                let wave = 1.0 + 0.35 * (t / 9.0 + fake.phase).sin() + 0.15 * (noise() - 0.5);
                let mut served = Vec::new();
                for &(method, per_s, us) in &fake.methods {
                    let calls = (per_s * wave).round().max(0.0) as u64;
                    let errors = (calls as f64 * fake.error_rate * (0.5 + noise())).round() as u64;
                    let jitter = (us as f64 * (0.9 + 0.2 * noise())) as u64;
                    served.push(MethodFigures {
                        service: fake.service.into(),
                        method: method.into(),
                        calls,
                        errors: if errors > 0 {
                            vec![ErrorCount {
                                code: fake.error_kind.code(),
                                count: errors,
                            }]
                        } else {
                            Vec::new()
                        },
                        in_flight: (calls as f64 * us as f64 / 1e6).ceil() as u64,
                        latency: latency(calls, jitter),
                        items_in: 0,
                        items_out: 0,
                        slowest: None,
                        failed: None,
                    });
                }
                let in_flight = served.iter().map(|m| m.in_flight).sum();
                let status = Status {
                    in_flight,
                    uptime_ms: 26 * 3_600_000 + (t * 1000.0) as u64 + fake.phase as u64 * 600_000,
                    version: "0.1.0".into(),
                    window_ms: 1000,
                    cpu_ms: fake.cpu_ms + (noise() * 20.0) as u64,
                    rss_bytes: fake.rss,
                    unbound_tokens_accepted: 0,
                    served,
                    called: Vec::new(),
                    faults: Vec::new(),
                };
                beat(&fake.client, status).await;
            }
            let called = |endpoint: &str, calls: u64, connect: u64| CallFigures {
                endpoint: endpoint.into(),
                service: "auth.Users".into(),
                calls,
                errors: if connect > 0 {
                    vec![ErrorCount {
                        code: ErrorKind::Connect.code(),
                        count: connect,
                    }]
                } else {
                    Vec::new()
                },
                latency: latency(calls, 1_400),
            };
            beat(
                &web,
                Status {
                    window_ms: 1000,
                    uptime_ms: 5_400_000,
                    version: "0.1.0".into(),
                    rss_bytes: 61 << 20,
                    cpu_ms: 14,
                    called: vec![
                        called("10.0.3.31:7100", 70, 0),
                        called("10.0.3.32:7100", 6, 6),
                    ],
                    ..Status::default()
                },
            )
            .await;
        }
    });
    tokio::time::sleep(Duration::from_secs(FEED_SECS)).await;
    // The chart over the last minute, then a full-page picture.
    page.eval("document.querySelector('#span button[data-min=\"1\"]').click()")
        .await;
    page.eval("document.querySelector('[data-service=\"billing.Invoices\"] details').open = true")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    page.wait_for(
        "all four services",
        "document.querySelectorAll('article.svc').length === 4",
    )
    .await;
    let png = page.screenshot().await;
    let _ = stop.send(());
    feeder.await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("wrote {}", path.display());
    node.shutdown().await;
}
