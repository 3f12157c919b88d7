//! Monitoring over HTTP: status reports folded into `/metrics` and `/api/...`, exactly.
//!
//! The reports are handcrafted heartbeats (sent the way `stardust::Stardust` sends them), so
//! every count is known; a heartbeat's figures are folded before its reply, so no waiting. The
//! HTTP server itself (methods, hosts, idle clients) is tested in `tests/monitor_http.rs`.

mod common;
#[path = "monitor/reports.rs"]
mod reports;

use std::time::Duration;

use common::*;
use reports::*;
use stardust::ErrorKind;
use stardust::discovery::api::{CallFigures, ErrorCount, Latency, MethodFigures, Status};
use stardust_registry::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_calls_show_exactly_in_the_api_and_metrics() {
    let (node, http) = start_monitored(Config::dev()).await;
    let calc = provider(&node, EP).await;
    // 3 + 4 + 5 = 12 calls of `add` over three windows, one of them failed; 2 of `div`.
    beat(&calc, report(vec![served("add", 3, 300, &[])])).await;
    beat(
        &calc,
        report(vec![
            served("add", 4, 300, &[(ErrorKind::DeadlineExceeded, 1)]),
            served("div", 2, 40, &[]),
        ]),
    )
    .await;
    beat(&calc, report(vec![served("add", 5, 300, &[])])).await;

    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(service["name"], CALC);
    assert_eq!(service["instance_count"], 1);
    assert_eq!(service["calls_total"], 14);
    assert_eq!(service["errors_total"], 1);
    let inst = instance(&service, EP);
    assert_eq!(inst["app"], "calc");
    assert_eq!(inst["version"], "1.2.0");
    assert_eq!(inst["weight"], 100);
    assert_eq!(inst["health"], "healthy", "{inst:#}");
    let add = method(inst, "add");
    assert_eq!(add["totals"]["calls"], 12);
    assert_eq!(add["totals"]["errors"], 1);
    assert_eq!(add["totals"]["errors_by_kind"]["DeadlineExceeded"], 1);
    assert_eq!(add["latency_sum_us"], 12 * 300);
    // The last window: 5 calls of `add` over 1 s, none of `div`.
    assert_eq!(add["last"]["calls"], 5);
    assert_eq!(add["last"]["calls_per_s"], 5.0);
    assert_eq!(add["last"]["p50_us"], 300);
    assert_eq!(method(inst, "div")["totals"]["calls"], 2);
    assert_eq!(method(inst, "div")["last"]["calls"], 0);
    assert_eq!(inst["totals"]["calls"], 14);
    assert_eq!(inst["process"]["rss_bytes"], 30 << 20);
    assert_eq!(inst["process"]["cpu_percent"], 5.0);
    assert_eq!(inst["process"]["software_version"], "0.1.0");

    // The overview and the flat list say the same.
    let overview = http_get(http, "/api/services").await.json();
    assert_eq!(overview["registry"]["instances"], 1);
    assert_eq!(overview["registry"]["store"], "memory");
    assert!(
        overview["registry"]["node"]
            .as_str()
            .is_some_and(|n| n.starts_with("node-")),
        "{overview}"
    );
    assert_eq!(
        overview["registry"]["listen"],
        node.local_addr().to_string()
    );
    let listed = &overview["services"][0];
    assert_eq!(listed["name"], CALC);
    assert_eq!(method(instance(listed, EP), "add")["totals"]["calls"], 12);
    let flat = http_get(http, "/api/instances").await.json();
    assert_eq!(flat[0]["service"], CALC);
    assert_eq!(flat[0]["totals"]["calls"], 14);

    let metrics = http_get(http, "/metrics").await;
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &metrics.body;
    assert_eq!(sample(m, "stardust_registry_store_up"), Some(1.0), "{m}");
    let health = http_get(http, "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["store"], "memory");
    let labels = format!("service=\"{CALC}\",method=\"add\",instance=\"{EP}\"");
    assert_eq!(
        sample(m, &format!("stardust_calls_total{{{labels}}}")),
        Some(12.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_errors_total{{{labels},kind=\"DeadlineExceeded\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_call_duration_seconds_bucket{{{labels},le=\"+Inf\"}}")
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_call_duration_seconds_bucket{{{labels},le=\"0.00025\"}}")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_call_duration_seconds_bucket{{{labels},le=\"0.0005\"}}")
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_call_duration_seconds_count{{{labels}}}")
        ),
        Some(12.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_call_duration_seconds_sum{{{labels}}}")
        ),
        Some(0.0036)
    );
    assert_eq!(
        sample(m, &format!("stardust_instances{{service=\"{CALC}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            m,
            &format!("stardust_process_resident_memory_bytes{{app=\"calc\",instance=\"{EP}\"}}")
        ),
        Some((30u64 << 20) as f64)
    );
    assert_eq!(
        sample(
            m,
            &format!(
                "stardust_instance_health{{service=\"{CALC}\",instance=\"{EP}\",state=\"healthy\"}}"
            )
        ),
        Some(1.0)
    );
    // Every family has HELP and TYPE, and every sample line parses.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line: {line}");
    }
    assert!(m.contains("# TYPE stardust_call_duration_seconds histogram"));

    // The history has a sample for the service.
    let history = http_get(http, "/api/history?minutes=1").await.json();
    assert_eq!(history["slot_ms"], 2000);
    let series = &history["services"][CALC]["calls_per_s"];
    assert!(
        series.as_array().is_some_and(|s| !s.is_empty()),
        "{history:#}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erroring_instance_says_so() {
    let (node, http) = start_monitored(Config::dev()).await;
    let calc = provider(&node, EP).await;
    beat(
        &calc,
        report(vec![served(
            "add",
            10,
            300,
            &[(ErrorKind::Panicked, 2), (ErrorKind::Overloaded, 1)],
        )]),
    )
    .await;
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    let inst = instance(&service, EP);
    assert_eq!(inst["health"], "erroring", "{inst:#}");
    assert_eq!(inst["totals"]["errors"], 3);
    assert_eq!(inst["totals"]["errors_by_kind"]["Panicked"], 2);
    assert_eq!(inst["totals"]["errors_by_kind"]["Overloaded"], 1);
    assert_eq!(inst["last"]["error_rate"], 0.3);
    assert_eq!(service["health"], "unhealthy");
    let m = http_get(http, "/metrics").await.body;
    assert_eq!(
        sample(
            &m,
            &format!(
                "stardust_errors_total{{service=\"{CALC}\",method=\"add\",instance=\"{EP}\",kind=\"Panicked\"}}"
            )
        ),
        Some(2.0)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_providers_disappear_from_the_api() {
    // A long lease: only the deregistration and the disconnect explain the removals.
    let (node, http) =
        start_monitored(Config::dev().with_lease_ttl(Duration::from_secs(3600))).await;
    let a = provider(&node, "127.0.0.1:9001").await;
    let b = provider(&node, "127.0.0.1:9002").await;
    beat(&a, report(vec![served("add", 7, 300, &[])])).await;
    beat(&b, report(vec![served("add", 1, 300, &[])])).await;
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(service["instance_count"], 2);

    // Deregistered: gone at once.
    assert!(
        a.deregister(CALC.into(), "127.0.0.1:9001".into())
            .await
            .unwrap()
            .unwrap()
    );
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(service["instance_count"], 1);
    assert_eq!(service["instances"][0]["endpoint"], "127.0.0.1:9002");
    assert!(
        !http_get(http, "/metrics")
            .await
            .body
            .contains("instance=\"127.0.0.1:9001\"")
    );

    // Its connection dropped: gone once the registry notices (no lease expiry involved).
    drop(b);
    within("the dropped provider leaving the API", async {
        loop {
            let list = http_get(http, "/api/instances").await.json();
            if list.as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The service stays listed for a while, down, with no instances.
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(service["instance_count"], 0);
    assert_eq!(service["health"], "down");
    let m = http_get(http, "/metrics").await.body;
    assert_eq!(
        sample(&m, &format!("stardust_instances{{service=\"{CALC}\"}}")),
        Some(0.0)
    );
    assert!(!m.contains("stardust_calls_total{"), "{m}");

    // Registering again starts from zero.
    let c = provider(&node, "127.0.0.1:9001").await;
    beat(&c, report(vec![served("add", 1, 300, &[])])).await;
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(service["calls_total"], 1);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_disappears_too() {
    let (node, http) =
        start_monitored(Config::dev().with_lease_ttl(Duration::from_millis(300))).await;
    // Registered, never heartbeats (a hung process): its lease expires.
    let _hung = provider(&node, EP).await;
    within("the expired instance leaving the API", async {
        loop {
            let list = http_get(http, "/api/instances").await.json();
            if list.as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_cannot_connect_make_an_instance_unreachable() {
    let (node, http) = start_monitored(Config::dev()).await;
    let calc = provider(&node, EP).await;
    // The provider itself reports healthy figures...
    beat(&calc, report(vec![served("add", 5, 300, &[])])).await;
    let (web, _) = login(node.local_addr(), "web", "pw").await;
    let called = |calls, connect| Status {
        window_ms: 1000,
        called: vec![CallFigures {
            endpoint: EP.into(),
            service: CALC.into(),
            calls,
            errors: vec![ErrorCount {
                code: ErrorKind::Connect.code(),
                count: connect,
            }],
            latency: Latency::default(),
        }],
        ..Status::default()
    };
    beat(&web, called(20, 0)).await;
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    assert_eq!(instance(&service, EP)["health"], "healthy");
    // ...but its consumers cannot reach it.
    beat(&web, called(4, 4)).await;
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    let inst = instance(&service, EP);
    assert_eq!(inst["health"], "unreachable", "{inst:#}");
    assert_eq!(inst["unreachable_from"], serde_json::json!(["web"]));
    let consumer = &inst["consumers"][0];
    assert_eq!(consumer["app"], "web");
    assert_eq!(consumer["calls_total"], 24);
    assert_eq!(consumer["errors_by_kind"]["Connect"], 4);
    assert_eq!(consumer["unreachable"], true);
    let m = http_get(http, "/metrics").await.body;
    let labels = format!("consumer_app=\"web\",service=\"{CALC}\",instance=\"{EP}\"");
    assert_eq!(
        sample(&m, &format!("stardust_consumer_calls_total{{{labels}}}")),
        Some(24.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!("stardust_consumer_errors_total{{{labels},kind=\"Connect\"}}")
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!(
                "stardust_instance_health{{service=\"{CALC}\",instance=\"{EP}\",state=\"unreachable\"}}"
            )
        ),
        Some(1.0)
    );
    // Calls to unknown instances are not tracked.
    beat(
        &web,
        Status {
            called: vec![CallFigures {
                endpoint: "127.0.0.1:1".into(),
                service: CALC.into(),
                calls: 1,
                ..CallFigures::default()
            }],
            ..Status::default()
        },
    )
    .await;
    assert!(
        !http_get(http, "/metrics")
            .await
            .body
            .contains("127.0.0.1:1\"")
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_are_escaped() {
    let (node, http) = start_monitored(Config::dev()).await;
    let (odd, _) = login(node.local_addr(), "calc", "pw").await;
    let service = r#"odd"name\x"#;
    odd.register(registration(service, "1.0.0", EP))
        .await
        .unwrap()
        .unwrap();
    let mut figures = served("a\"b", 1, 10, &[]);
    figures.service = service.into();
    beat(&odd, report(vec![figures])).await;
    let m = http_get(http, "/metrics").await.body;
    assert_eq!(
        sample(
            &m,
            &format!(
                r#"stardust_calls_total{{service="odd\"name\\x",method="a\"b",instance="{EP}"}}"#
            )
        ),
        Some(1.0),
        "{m}"
    );
    // The JSON API takes the name percent-encoded.
    let one = http_get(http, "/api/services/odd%22name%5Cx").await.json();
    assert_eq!(one["name"], service);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_are_counted_per_method() {
    let (node, http) = start_monitored(Config::dev()).await;
    let calc = provider(&node, EP).await;
    let streamed = |calls, items_in, items_out| MethodFigures {
        items_in,
        items_out,
        ..served("tail", calls, 300, &[])
    };
    beat(
        &calc,
        report(vec![streamed(2, 0, 500), served("add", 3, 10, &[])]),
    )
    .await;
    beat(&calc, report(vec![streamed(1, 3, 200)])).await;
    let m = http_get(http, "/metrics").await.body;
    let series = |method: &str, direction: &str| {
        format!(
            "stardust_stream_items_total{{service=\"{CALC}\",method=\"{method}\",instance=\"{EP}\",direction=\"{direction}\"}}"
        )
    };
    assert_eq!(sample(&m, &series("tail", "out")), Some(700.0), "{m}");
    assert_eq!(sample(&m, &series("tail", "in")), Some(3.0), "{m}");
    // A method that never streamed has no such series.
    assert_eq!(sample(&m, &series("add", "out")), None, "{m}");
}
