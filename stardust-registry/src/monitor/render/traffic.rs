//! The JSON view of traffic rules: per service its routes (where calls go, by weight) and
//! faults (what share of calls is delayed or failed), and the calls consumers reported they
//! hit with each fault; for the registry, the rules' revision and whether any fault is on.

use serde::Serialize;
use stardust::traffic::{Fallback, Fault, FaultAction, Match, Route, ServiceRules};

use crate::monitor::Snapshot;

/// One service's traffic rules and injected-fault counts.
#[derive(Serialize, Default)]
pub(crate) struct TrafficView {
    /// The rules' revision at which this service's rules last changed (0: it has none).
    revision: u64,
    routes: Vec<RouteView>,
    faults: Vec<FaultView>,
    /// Some fault hits a share of calls (over 0%): calls are delayed or failed on purpose.
    faults_active: bool,
    /// Calls consumers delayed or failed on purpose, per fault and kind, since the registry
    /// started (faults since removed included).
    injected: Vec<InjectedView>,
    injected_total: u64,
}

#[derive(Serialize)]
struct RouteView {
    name: String,
    /// The calls it routes (`{}`: all).
    #[serde(rename = "match")]
    matches: Match,
    to: Vec<DestinationView>,
    fallback: Fallback,
}

#[derive(Serialize)]
struct DestinationView {
    subset: String,
    weight: u32,
    /// Its share of the route's calls, in percent.
    percent: f64,
}

#[derive(Serialize)]
struct FaultView {
    name: String,
    /// The calls it applies to (`{}`: all).
    #[serde(rename = "match")]
    matches: Match,
    /// The share of those calls it hits.
    percent: f64,
    /// `delay` or `abort`.
    kind: &'static str,
    /// The delay (delay faults).
    #[serde(skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    /// The error kind it fails calls with (abort faults).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct InjectedView {
    fault: String,
    kind: &'static str,
    count: u64,
}

/// What `/api/services` says of the rules as a whole.
#[derive(Serialize)]
pub(crate) struct TrafficSummary {
    revision: u64,
    /// Services where some fault is on.
    faults_active: Vec<String>,
    /// Services with rules or injected counts that are not listed among the services (nothing
    /// registered them, or not any more), by name.
    unlisted: Vec<NamedTraffic>,
}

#[derive(Serialize)]
pub(crate) struct NamedTraffic {
    name: String,
    #[serde(flatten)]
    traffic: TrafficView,
}

fn route_view(r: &Route) -> RouteView {
    let sum: u64 = r.to.iter().map(|w| u64::from(w.weight)).sum();
    RouteView {
        name: r.name.clone(),
        matches: r.matches.clone(),
        to: r
            .to
            .iter()
            .map(|w| DestinationView {
                subset: w.subset.clone(),
                weight: w.weight,
                percent: if sum == 0 {
                    0.0
                } else {
                    super::round3(f64::from(w.weight) * 100.0 / sum as f64)
                },
            })
            .collect(),
        fallback: r.fallback,
    }
}

fn fault_view(f: &Fault) -> FaultView {
    let (kind, delay_ms, error) = match &f.action {
        FaultAction::Delay { delay_ms } => ("delay", Some(*delay_ms), None),
        FaultAction::Abort { error } => ("abort", None, Some(error.clone())),
    };
    FaultView {
        name: f.name.clone(),
        matches: f.matches.clone(),
        percent: f.percent,
        kind,
        delay_ms,
        error,
    }
}

/// A fault that hits some calls.
fn active(rules: &ServiceRules) -> bool {
    rules.faults.iter().any(|f| f.percent > 0.0)
}

/// `service`'s rules and injected counts.
pub(crate) fn traffic_view(service: &str, snap: &Snapshot) -> TrafficView {
    let mut view = TrafficView::default();
    if let Some(rules) = snap.rules.services.get(service) {
        view.revision = rules.revision;
        view.routes = rules.routes.iter().map(route_view).collect();
        view.faults = rules.faults.iter().map(fault_view).collect();
        view.faults_active = active(rules);
    }
    if let Some(faults) = snap.faults.by_service.get(service) {
        for (fault, counts) in faults {
            view.injected_total = view.injected_total.saturating_add(counts.total());
            view.injected
                .extend(counts.series().map(|(kind, count)| InjectedView {
                    fault: fault.clone(),
                    kind: kind.as_str(),
                    count,
                }));
        }
    }
    view
}

/// The rules' revision, the services with a fault on, and the services with rules or counts
/// that `listed` does not name.
pub(crate) fn summary(snap: &Snapshot, listed: impl Fn(&str) -> bool) -> TrafficSummary {
    let mut unlisted: Vec<&str> = snap
        .rules
        .services
        .keys()
        .chain(snap.faults.by_service.keys())
        .map(String::as_str)
        .filter(|s| !listed(s))
        .collect();
    unlisted.sort_unstable();
    unlisted.dedup();
    TrafficSummary {
        revision: snap.rules.revision,
        faults_active: snap
            .rules
            .services
            .iter()
            .filter(|(_, r)| active(r))
            .map(|(s, _)| s.clone())
            .collect(),
        unlisted: unlisted
            .into_iter()
            .map(|name| NamedTraffic {
                name: name.to_owned(),
                traffic: traffic_view(name, snap),
            })
            .collect(),
    }
}
