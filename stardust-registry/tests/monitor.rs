//! Monitoring over HTTP: status reports folded into `/metrics` and `/api/...`, exactly.
//!
//! The reports are handcrafted heartbeats (sent the way `stardust::Stardust` sends them), so
//! every count is known; a heartbeat's figures are folded before its reply, so no waiting.

mod common;

use std::time::Duration;

use common::*;
use stardust::ErrorKind;
use stardust::discovery::api::{
    CallFigures, ErrorCount, LATENCY_BOUNDS_US, Latency, MethodFigures, RegistryClient, Status,
};
use stardust_registry::{Config, RegistryNode};

const CALC: &str = "calc.Calculator";
const EP: &str = "127.0.0.1:9001";

/// `calls` calls of `method` taking `us` each, with `errors` of them failed as `kind`.
fn served(method: &str, calls: u64, us: u64, errors: &[(ErrorKind, u64)]) -> MethodFigures {
    let mut buckets = vec![0; LATENCY_BOUNDS_US.len() + 1];
    let i = LATENCY_BOUNDS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(LATENCY_BOUNDS_US.len());
    buckets[i] = calls;
    MethodFigures {
        service: CALC.into(),
        method: method.into(),
        calls,
        errors: errors
            .iter()
            .map(|&(k, count)| ErrorCount {
                code: k.code(),
                count,
            })
            .collect(),
        in_flight: 2,
        latency: Latency {
            buckets,
            sum_us: us * calls,
            p50_us: us,
            p90_us: us,
            p99_us: us,
            max_us: us,
        },
        items_in: 0,
        items_out: 0,
    }
}

fn report(served: Vec<MethodFigures>) -> Status {
    Status {
        in_flight: 2,
        uptime_ms: 60_000,
        version: "0.1.0".into(),
        window_ms: 1000,
        cpu_ms: 50,
        rss_bytes: 30 << 20,
        unbound_tokens_accepted: 0,
        served,
        called: Vec::new(),
    }
}

async fn beat(client: &RegistryClient, status: Status) {
    within("heartbeat", client.heartbeat(status))
        .await
        .expect("heartbeat call")
        .expect("heartbeat accepted");
}

/// A provider of `calc.Calculator` at `endpoint`, logged in as `calc`.
async fn provider(node: &RegistryNode, endpoint: &str) -> RegistryClient {
    let (client, _) = login(node.local_addr(), "calc", "pw").await;
    client
        .register(registration(CALC, "1.2.0", endpoint))
        .await
        .unwrap()
        .unwrap();
    client
}

fn instance<'a>(services: &'a serde_json::Value, endpoint: &str) -> &'a serde_json::Value {
    services["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no instance {endpoint} in {services:#}"))
}

fn method<'a>(instance: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    instance["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == name)
        .unwrap_or_else(|| panic!("no method {name} in {instance:#}"))
}

/// The value of the series `name{labels}` in a Prometheus text body (labels as written).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

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
async fn the_http_server_is_read_only_bounded_and_loopback_only() {
    let (node, http) = start_monitored(Config::dev()).await;
    let console = http_get(http, "/").await;
    assert_eq!(
        console.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = console.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // Self-contained: nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
        assert!(
            !console.body.contains(external),
            "the console loads {external}"
        );
    }
    assert!(console.body.contains("/api/services"));

    let post = http_request(http, "POST", "/api/services", None).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = http_request(http, "GET", "/nope", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        http_request(http, "GET", "/api/services/no.Such", None)
            .await
            .status,
        404
    );
    // HEAD: the headers of GET, no body.
    let head = http_request(http, "HEAD", "/metrics", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // A page on another origin cannot read it through DNS rebinding.
    let rebound = http_request(http, "GET", "/api/services", Some("evil.example:7601")).await;
    assert_eq!(rebound.status, 403);
    assert_eq!(
        http_request(
            http,
            "GET",
            "/api/services",
            Some(&format!("localhost:{}", http.port()))
        )
        .await
        .status,
        200
    );
    let index = http_get(http, "/api").await.json();
    assert!(index["endpoints"]["/metrics"].is_string());

    // The port is released on shutdown.
    node.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "still listening on {http}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_off_unless_configured() {
    let node = start(Config::dev()).await;
    assert_eq!(node.http_addr(), None);
    node.shutdown().await;
    let node = RegistryNode::builder()
        .config(Config::dev().with_http_listen("127.0.0.1:0"))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert!(node.http_addr().is_some());
    node.shutdown().await;
    let node = RegistryNode::builder()
        .config(Config::dev().with_http_listen("127.0.0.1:0"))
        .http_listen("off")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert_eq!(node.http_addr(), None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_clients_cannot_take_the_registry_down() {
    use tokio::io::AsyncReadExt;
    let (node, http) = start_monitored(Config::dev()).await;
    // More idle connections than the server takes: the extra ones are closed at once.
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let mut last = idle.pop().unwrap();
    let mut buf = [0u8; 16];
    let read = within("the extra connection being closed", last.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The registry itself is unaffected.
    let calc = provider(&node, EP).await;
    beat(&calc, report(vec![served("add", 1, 300, &[])])).await;
    // Once they go, HTTP answers again.
    drop(idle);
    within("HTTP answering again", async {
        loop {
            let ok = async {
                let mut s = tokio::net::TcpStream::connect(http).await.ok()?;
                use tokio::io::AsyncWriteExt;
                s.write_all(
                    b"GET /api/instances HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
                .await
                .ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                Some(out.starts_with(b"HTTP/1.1 200"))
            }
            .await;
            if ok == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
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
