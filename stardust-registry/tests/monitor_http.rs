//! The monitoring HTTP server itself: read-only, bounded, loopback-only, off unless configured,
//! and not taken down by idle clients. (What it reports is tested in `tests/monitor.rs`.)

mod common;
#[path = "monitor/reports.rs"]
mod reports;

use std::time::Duration;

use common::*;
use reports::*;
use stardust::traffic::{Fallback, FaultAction, Match, Route, RulesEdit, Weighted};
use stardust_registry::{Config, RegistryNode};

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
async fn traffic_rules_and_injected_faults_show_in_metrics_and_api() {
    let (node, http) = start_monitored(with_admin(Config::dev())).await;
    let _calc = provider(&node, EP).await;
    let ops = admin(&node).await;
    let metrics = || async { http_get(http, "/metrics").await.body };
    let series = |fault: &str, kind: &str| {
        format!(
            "stardust_faults_injected_total{{service=\"{CALC}\",fault=\"{fault}\",kind=\"{kind}\"}}"
        )
    };
    let rules_of =
        |kind: &str| format!("stardust_traffic_rules{{service=\"{CALC}\",type=\"{kind}\"}}");

    // No rules yet: revision 0, the families announced all the same.
    let m = metrics().await;
    assert_eq!(sample(&m, "stardust_traffic_rules_revision"), Some(0.0));
    for family in [
        "stardust_faults_injected_total counter",
        "stardust_traffic_rules gauge",
        "stardust_traffic_rules_revision gauge",
    ] {
        assert!(m.contains(&format!("# TYPE {family}\n")), "{family} in {m}");
    }

    // A canary route and two faults.
    let route = Route {
        name: "canary".into(),
        matches: Match::default(),
        to: vec![
            Weighted {
                weight: 95,
                subset: "^1.2".into(),
            },
            Weighted {
                weight: 5,
                subset: "tag:canary".into(),
            },
        ],
        fallback: Fallback::All,
    };
    edit(
        &ops,
        RulesEdit::SetRoute {
            service: CALC.into(),
            route,
        },
    )
    .await;
    edit(
        &ops,
        RulesEdit::SetFault {
            service: CALC.into(),
            fault: fault("slow", 25.0, FaultAction::Delay { delay_ms: 200 }),
        },
    )
    .await;
    let revision = edit(
        &ops,
        RulesEdit::SetFault {
            service: CALC.into(),
            fault: fault(
                "boom",
                10.0,
                FaultAction::Abort {
                    error: "Overloaded".into(),
                },
            ),
        },
    )
    .await;
    assert_eq!(revision, 3);

    // A consumer reports what it injected, twice: the counter sums the windows.
    let (web, _) = login(node.local_addr(), "web", "pw").await;
    beat(
        &web,
        injected(&[("slow", "delay", 3), ("boom", "abort", 1)]),
    )
    .await;
    let m = metrics().await;
    assert_eq!(sample(&m, &series("slow", "delay")), Some(3.0), "{m}");
    assert_eq!(sample(&m, &series("boom", "abort")), Some(1.0), "{m}");
    beat(&web, injected(&[("slow", "delay", 4)])).await;
    // Malformed entries are ignored.
    beat(
        &web,
        injected(&[("slow", "explode", 9), ("boom", "abort", 0)]),
    )
    .await;
    let m = metrics().await;
    assert_eq!(sample(&m, &series("slow", "delay")), Some(7.0), "{m}");
    assert_eq!(sample(&m, &series("boom", "abort")), Some(1.0), "{m}");
    assert_eq!(sample(&m, &series("slow", "explode")), None, "{m}");
    assert_eq!(sample(&m, &rules_of("route")), Some(1.0), "{m}");
    assert_eq!(sample(&m, &rules_of("fault")), Some(2.0), "{m}");
    assert_eq!(sample(&m, "stardust_traffic_rules_revision"), Some(3.0));

    // The API: the service's routes, faults and counts; the overview's marker.
    let service = http_get(http, "/api/services/calc.Calculator").await.json();
    let t = &service["traffic"];
    assert_eq!(t["revision"], 3, "{t:#}");
    assert_eq!(t["faults_active"], true);
    assert_eq!(t["routes"][0]["name"], "canary");
    assert_eq!(t["routes"][0]["match"], serde_json::json!({}));
    assert_eq!(t["routes"][0]["to"][0]["subset"], "^1.2");
    assert_eq!(t["routes"][0]["to"][0]["percent"], 95.0);
    assert_eq!(t["routes"][0]["to"][1]["percent"], 5.0);
    assert_eq!(t["faults"][0]["name"], "slow");
    assert_eq!(t["faults"][0]["percent"], 25.0);
    assert_eq!(t["faults"][0]["kind"], "delay");
    assert_eq!(t["faults"][0]["delay_ms"], 200);
    assert_eq!(t["faults"][1]["kind"], "abort");
    assert_eq!(t["faults"][1]["error"], "Overloaded");
    assert_eq!(t["injected_total"], 8);
    assert_eq!(
        t["injected"],
        serde_json::json!([
            {"fault": "boom", "kind": "abort", "count": 1},
            {"fault": "slow", "kind": "delay", "count": 7},
        ])
    );
    let overview = http_get(http, "/api/services").await.json();
    assert_eq!(overview["traffic"]["revision"], 3);
    assert_eq!(
        overview["traffic"]["faults_active"],
        serde_json::json!([CALC])
    );
    assert_eq!(overview["services"][0]["traffic"]["faults_active"], true);

    // Faults removed: the marker goes, the counts stay (counters since the registry started);
    // rules for a service nobody registered are listed apart.
    for name in ["slow", "boom"] {
        edit(
            &ops,
            RulesEdit::RemoveFault {
                service: CALC.into(),
                name: name.into(),
            },
        )
        .await;
    }
    edit(
        &ops,
        RulesEdit::SetFault {
            service: "other.Svc".into(),
            fault: fault("off", 0.0, FaultAction::Delay { delay_ms: 5 }),
        },
    )
    .await;
    let overview = http_get(http, "/api/services").await.json();
    assert_eq!(overview["traffic"]["faults_active"], serde_json::json!([]));
    assert_eq!(overview["services"][0]["traffic"]["faults_active"], false);
    assert_eq!(
        overview["services"][0]["traffic"]["faults"],
        serde_json::json!([])
    );
    assert_eq!(overview["traffic"]["unlisted"][0]["name"], "other.Svc");
    assert_eq!(
        overview["traffic"]["unlisted"][0]["faults"][0]["percent"],
        0.0
    );
    let m = metrics().await;
    assert_eq!(sample(&m, &rules_of("fault")), Some(0.0), "{m}");
    assert_eq!(sample(&m, &series("slow", "delay")), Some(7.0), "{m}");
    assert_eq!(sample(&m, "stardust_traffic_rules_revision"), Some(6.0));
    node.shutdown().await;
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
