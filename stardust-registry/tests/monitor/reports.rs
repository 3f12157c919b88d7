//! Status reports for the monitoring tests (`tests/monitor.rs`, `tests/monitor_http.rs`):
//! handcrafted heartbeats of `calc.Calculator` providers, sent the way `stardust::Stardust`
//! sends them, and readers of what `/api` and `/metrics` make of them.
#![allow(dead_code)]

use stardust::ErrorKind;
use stardust::discovery::api::{
    ErrorCount, FaultCount, LATENCY_BOUNDS_US, Latency, MethodFigures, RegistryClient, Status,
};
use stardust::traffic::{Fault, FaultAction, Match, RulesEdit};
use stardust_registry::{AppConfig, Config, RegistryNode};

use crate::common::*;

pub const CALC: &str = "calc.Calculator";
pub const EP: &str = "127.0.0.1:9001";

/// `calls` calls of `method` taking `us` each, with `errors` of them failed as `kind`.
pub fn served(method: &str, calls: u64, us: u64, errors: &[(ErrorKind, u64)]) -> MethodFigures {
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
        slowest: None,
        failed: None,
    }
}

pub fn report(served: Vec<MethodFigures>) -> Status {
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
        faults: Vec::new(),
    }
}

pub async fn beat(client: &RegistryClient, status: Status) {
    within("heartbeat", client.heartbeat(status))
        .await
        .expect("heartbeat call")
        .expect("heartbeat accepted");
}

/// A consumer's report of the faults it injected into calls of `calc.Calculator` in its last
/// window: (fault, kind, calls).
pub fn injected(faults: &[(&str, &str, u64)]) -> Status {
    Status {
        window_ms: 1000,
        uptime_ms: 60_000,
        version: "0.1.0".into(),
        faults: faults
            .iter()
            .map(|&(fault, kind, count)| FaultCount {
                service: CALC.into(),
                fault: fault.into(),
                kind: kind.into(),
                count,
            })
            .collect(),
        ..Status::default()
    }
}

/// The app allowed to change traffic rules in the tests' registries (see [`with_admin`]).
pub const ADMIN: (&str, &str) = ("ops", "ops-secret");

/// `config` with an app that has the `admin` role ([`ADMIN`]).
pub fn with_admin(config: Config) -> Config {
    let app = AppConfig::with_secret(ADMIN.1)
        .expect("a valid secret")
        .roles(["admin"]);
    config.with_app(ADMIN.0, app)
}

/// A connection logged in as the [`ADMIN`] app.
pub async fn admin(node: &RegistryNode) -> RegistryClient {
    login(node.local_addr(), ADMIN.0, ADMIN.1).await.0
}

/// A fault on every call of `service` (`percent` of them).
pub fn fault(name: &str, percent: f64, action: FaultAction) -> Fault {
    Fault {
        name: name.into(),
        matches: Match::default(),
        percent,
        action,
    }
}

/// Applies `edit` as `admin`; the rules' new revision.
pub async fn edit(admin: &RegistryClient, edit: RulesEdit) -> u64 {
    within("edit_rules", admin.edit_rules(edit, None))
        .await
        .expect("edit_rules call")
        .expect("edit accepted")
}

/// A provider of `calc.Calculator` at `endpoint`, logged in as `calc`.
pub async fn provider(node: &RegistryNode, endpoint: &str) -> RegistryClient {
    let (client, _) = login(node.local_addr(), "calc", "pw").await;
    client
        .register(registration(CALC, "1.2.0", endpoint))
        .await
        .unwrap()
        .unwrap();
    client
}

pub fn instance<'a>(services: &'a serde_json::Value, endpoint: &str) -> &'a serde_json::Value {
    services["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no instance {endpoint} in {services:#}"))
}

pub fn method<'a>(instance: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    instance["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["method"] == name)
        .unwrap_or_else(|| panic!("no method {name} in {instance:#}"))
}

/// The value of the series `name{labels}` in a Prometheus text body (labels as written).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}
