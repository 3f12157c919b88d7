//! Monitoring end to end with real processes' code: a provider and a consumer built on
//! `stardust::Stardust` make calls; their own status reports carry the figures to the registry,
//! and `/api` and `/metrics` show exactly the calls made.

mod common;

use std::time::Duration;

use common::*;
use stardust::{Server, Stardust};
use stardust_registry::Config;

#[stardust::service(name = "live.Echo", version = "1.0.0")]
pub trait Echo {
    async fn echo(&self, text: String) -> String;
    async fn fail(&self) -> u32;
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, text: String) -> String {
        text
    }
    async fn fail(&self) -> u32 {
        panic!("fails on purpose")
    }
}

async fn star(registry: std::net::SocketAddr, app: &str) -> Stardust {
    Stardust::builder()
        .registry(registry.to_string())
        .app(app, "pw")
        // Reports every 50 ms; the registry's lease TTL (10 s) stays far above.
        .heartbeat(Duration::from_millis(50))
        .connect()
        .await
        .expect("login")
}

fn find<'a>(list: &'a serde_json::Value, key: &str, value: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

/// Polls `/api/services/live.Echo` until `done` accepts it (bounded).
async fn wait_for(
    http: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    within(what, async {
        loop {
            let reply = http_request(http, "GET", "/api/services/live.Echo", None).await;
            if reply.status == 200 {
                let service = reply.json();
                if done(&service) {
                    return service;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A monitored registry, a provider of `live.Echo` (its session kept alive by the returned
/// handle) and a consumer app `web`.
async fn scene() -> (
    stardust_registry::RegistryNode,
    std::net::SocketAddr,
    Stardust,
    stardust::Provider,
    Stardust,
) {
    let (node, http) = start_monitored(Config::dev()).await;
    let provider_star = star(node.local_addr(), "echo-provider").await;
    let provider = provider_star
        .serve(
            Server::builder().serve(EchoServer::new(EchoImpl)),
            "127.0.0.1:0",
        )
        .await
        .unwrap();
    let consumer = star(node.local_addr(), "web").await;
    (node, http, provider_star, provider, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_a_provider_reach_the_api_and_metrics_exactly() {
    let (_node, http, _provider_star, provider, consumer) = scene().await;
    let endpoint = provider.endpoint().to_owned();
    let echo = consumer.client::<EchoClient>();

    const N: u64 = 37;
    for i in 0..N {
        assert_eq!(
            echo.echo(format!("hi {i}")).await.unwrap(),
            format!("hi {i}")
        );
    }
    for _ in 0..2 {
        assert_eq!(
            echo.fail().await.unwrap_err().kind(),
            stardust::ErrorKind::Panicked
        );
    }

    let method = |service: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        let instance = find(&service["instances"], "endpoint", &endpoint)?;
        find(&instance["methods"], "method", name).cloned()
    };
    let service = wait_for(http, "the provider's report of every call", |s| {
        method(s, "echo").is_some_and(|m| m["totals"]["calls"] == N)
            && method(s, "fail").is_some_and(|m| m["totals"]["calls"] == 2)
    })
    .await;
    let echo_figures = method(&service, "echo").unwrap();
    assert_eq!(echo_figures["totals"]["errors"], 0, "{echo_figures:#}");
    let fail = method(&service, "fail").unwrap();
    assert_eq!(fail["totals"]["errors"], 2, "{fail:#}");
    assert_eq!(fail["totals"]["errors_by_kind"]["Panicked"], 2, "{fail:#}");
    assert_eq!(service["instance_count"], 1);

    // The consumer's own view of the provider arrives too.
    let service = wait_for(http, "the consumer's report", |s| {
        find(&s["instances"], "endpoint", &endpoint)
            .and_then(|i| find(&i["consumers"], "app", "web"))
            .is_some_and(|c| c["calls_total"] == N + 2)
    })
    .await;
    let instance = find(&service["instances"], "endpoint", &endpoint).unwrap();
    let web = find(&instance["consumers"], "app", "web").unwrap();
    assert_eq!(web["errors_total"], 2, "{web:#}");
    assert_eq!(web["errors_by_kind"]["Panicked"], 2, "{web:#}");

    // Prometheus says the same.
    let metrics = http_get(http, "/metrics").await.body;
    let series = format!(
        "stardust_calls_total{{service=\"live.Echo\",method=\"echo\",instance=\"{endpoint}\"}} {N}"
    );
    assert!(
        metrics.lines().any(|l| l == series),
        "no `{series}` in:\n{metrics}"
    );
    let errors = format!(
        "stardust_errors_total{{service=\"live.Echo\",method=\"fail\",instance=\"{endpoint}\",kind=\"Panicked\"}} 2"
    );
    assert!(
        metrics.lines().any(|l| l == errors),
        "no `{errors}` in:\n{metrics}"
    );

    // A provider that stops disappears from the API.
    provider.shutdown().await;
    wait_for(http, "the stopped provider to disappear", |s| {
        find(&s["instances"], "endpoint", &endpoint).is_none()
    })
    .await;
}

/// Exemplars: each method's slowest call and latest failure with a sampled trace reach `/api`
/// under their W3C trace ids (what the console links to the trace UI); unsampled calls never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_names_the_traces_of_the_slowest_call_and_the_latest_failure() {
    const TRACED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const FAILED: &str = "0af7651916cd43dd8448eb211c80319c";
    const UNSAMPLED: &str = "11111111111111111111111111111111";
    let (_node, http, _provider_star, provider, consumer) = scene().await;
    let endpoint = provider.endpoint().to_owned();
    let client = consumer.client_for("live.Echo", "^1");
    let traced = EchoClient::new(
        client.with_metadata("traceparent", format!("00-{TRACED}-00f067aa0ba902b7-01")),
    );
    let failing = EchoClient::new(
        client.with_metadata("traceparent", format!("00-{FAILED}-00f067aa0ba902b7-01")),
    );
    let unsampled = EchoClient::new(
        client.with_metadata("traceparent", format!("00-{UNSAMPLED}-00f067aa0ba902b7-00")),
    );
    for i in 0..5 {
        traced.echo(format!("t{i}")).await.unwrap();
        unsampled.echo(format!("u{i}")).await.unwrap();
        assert!(unsampled.fail().await.is_err());
    }
    assert!(failing.fail().await.is_err());

    let method = |service: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        let instance = find(&service["instances"], "endpoint", &endpoint)?;
        find(&instance["methods"], "method", name).cloned()
    };
    let service = wait_for(http, "the provider's report of every call", |s| {
        method(s, "echo").is_some_and(|m| m["totals"]["calls"] == 10)
            && method(s, "fail").is_some_and(|m| m["totals"]["calls"] == 6)
    })
    .await;
    let echo = method(&service, "echo").unwrap();
    assert_eq!(echo["slowest"]["trace_id"], TRACED, "{echo:#}");
    assert!(
        echo["slowest"]["latency_us"].as_u64().unwrap() > 0,
        "{echo:#}"
    );
    assert_eq!(
        echo["slowest"]["error"],
        serde_json::Value::Null,
        "{echo:#}"
    );
    assert_eq!(echo["last_failure"], serde_json::Value::Null, "{echo:#}");
    let fail = method(&service, "fail").unwrap();
    assert_eq!(fail["last_failure"]["trace_id"], FAILED, "{fail:#}");
    assert_eq!(fail["last_failure"]["error"], "Panicked", "{fail:#}");
    assert_eq!(fail["slowest"]["trace_id"], FAILED, "{fail:#}");
    assert!(fail["last_failure"]["age_ms"].is_u64(), "{fail:#}");

    // Later windows without traced calls keep them; a newer failure replaces the last one.
    let newer = "5e2b9f1c7d3a4e6f8091a2b3c4d5e6f7";
    let failing = EchoClient::new(
        client.with_metadata("traceparent", format!("00-{newer}-00f067aa0ba902b7-01")),
    );
    assert!(failing.fail().await.is_err());
    wait_for(http, "the newer failure", |s| {
        method(s, "fail").is_some_and(|m| m["last_failure"]["trace_id"] == newer)
            && method(s, "echo").is_some_and(|m| m["slowest"]["trace_id"] == TRACED)
    })
    .await;
    provider.shutdown().await;
}
