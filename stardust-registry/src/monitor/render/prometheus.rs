//! The Prometheus text exposition (format 0.0.4) served at `/metrics`: per method, per
//! consumer app, per instance, per process, the traffic rules and the faults they injected, and
//! for the registry itself.

use std::fmt::Write as _;
use std::time::Instant;

use stardust::discovery::api::LATENCY_BOUNDS_US;

use super::RegistryFacts;
use super::health::{Health, health};
use crate::monitor::{ProcessReport, Snapshot, kind_name};

/// Escapes a label value: backslash, double quote and line feed.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `name="value",...` with values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out
}

fn seconds_label(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `/metrics`.
pub(crate) fn prometheus(snap: &Snapshot, facts: &RegistryFacts) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let now = snap.now;
    let instances = || {
        snap.services
            .iter()
            .flat_map(|(name, e)| e.instances.values().map(move |s| (name.as_str(), s)))
    };
    let methods = || {
        instances().flat_map(|(service, s)| {
            s.methods
                .iter()
                .map(move |(m, stats)| (service, s.instance.endpoint.as_str(), m.as_str(), stats))
        })
    };

    family(
        &mut out,
        "stardust_calls_total",
        "counter",
        "Calls a provider instance completed, per method, since it registered (from its reports).",
    );
    for (service, instance, method, m) in methods() {
        let l = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let _ = writeln!(out, "stardust_calls_total{{{l}}} {}", m.calls);
    }
    family(
        &mut out,
        "stardust_errors_total",
        "counter",
        "Calls a provider instance completed with an error, per method and error kind.",
    );
    for (service, instance, method, m) in methods() {
        for (code, n) in &m.errors {
            let kind = kind_name(*code);
            let l = labels(&[
                ("service", service),
                ("method", method),
                ("instance", instance),
                ("kind", &kind),
            ]);
            let _ = writeln!(out, "stardust_errors_total{{{l}}} {n}");
        }
    }
    family(
        &mut out,
        "stardust_stream_items_total",
        "counter",
        "Stream items a provider instance's streaming calls received (direction=\"in\") and sent \
         (direction=\"out\"), per method, since it registered (methods that stream only).",
    );
    for (service, instance, method, m) in methods() {
        if m.items_in == 0 && m.items_out == 0 {
            continue;
        }
        for (direction, n) in [("in", m.items_in), ("out", m.items_out)] {
            let l = labels(&[
                ("service", service),
                ("method", method),
                ("instance", instance),
                ("direction", direction),
            ]);
            let _ = writeln!(out, "stardust_stream_items_total{{{l}}} {n}");
        }
    }
    family(
        &mut out,
        "stardust_in_flight",
        "gauge",
        "Calls running on a provider instance at its last report, per method.",
    );
    for (service, instance, method, m) in methods() {
        let l = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let _ = writeln!(out, "stardust_in_flight{{{l}}} {}", m.last.in_flight);
    }
    family(
        &mut out,
        "stardust_call_duration_seconds",
        "histogram",
        "How long a provider instance took to serve calls, per method (request to response).",
    );
    for (service, instance, method, m) in methods() {
        let base = labels(&[
            ("service", service),
            ("method", method),
            ("instance", instance),
        ]);
        let mut cumulative = 0u64;
        for (i, n) in m.buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = LATENCY_BOUNDS_US
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |us| seconds_label(*us));
            let _ = writeln!(
                out,
                "stardust_call_duration_seconds_bucket{{{base},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "stardust_call_duration_seconds_sum{{{base}}} {}",
            m.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "stardust_call_duration_seconds_count{{{base}}} {cumulative}"
        );
    }

    family(
        &mut out,
        "stardust_consumer_calls_total",
        "counter",
        "Calls consumers of an app made to a provider instance, as the consumers saw them.",
    );
    for (service, s) in instances() {
        for (app, c) in &s.consumers {
            let l = labels(&[
                ("consumer_app", app),
                ("service", service),
                ("instance", &s.instance.endpoint),
            ]);
            let _ = writeln!(out, "stardust_consumer_calls_total{{{l}}} {}", c.calls);
        }
    }
    family(
        &mut out,
        "stardust_consumer_errors_total",
        "counter",
        "Calls consumers of an app made to a provider instance that failed, per error kind \
         (Connect: the provider could not be reached).",
    );
    for (service, s) in instances() {
        for (app, c) in &s.consumers {
            for (code, n) in &c.errors {
                let kind = kind_name(*code);
                let l = labels(&[
                    ("consumer_app", app),
                    ("service", service),
                    ("instance", &s.instance.endpoint),
                    ("kind", &kind),
                ]);
                let _ = writeln!(out, "stardust_consumer_errors_total{{{l}}} {n}");
            }
        }
    }

    family(
        &mut out,
        "stardust_instances",
        "gauge",
        "Live (leased) instances per service; services that lost their last instance stay at 0 \
         for a few minutes.",
    );
    for (name, e) in &snap.services {
        let l = labels(&[("service", name)]);
        let _ = writeln!(out, "stardust_instances{{{l}}} {}", e.instances.len());
    }
    family(
        &mut out,
        "stardust_instance_info",
        "gauge",
        "Always 1: an instance's registration (app, service version, weight in its own gauge).",
    );
    for (service, s) in instances() {
        let i = &s.instance;
        let l = labels(&[
            ("service", service),
            ("instance", &i.endpoint),
            ("app", &i.app),
            ("version", &i.version),
            ("tls", if i.tls { "true" } else { "false" }),
        ]);
        let _ = writeln!(out, "stardust_instance_info{{{l}}} 1");
    }
    family(
        &mut out,
        "stardust_instance_weight",
        "gauge",
        "An instance's registered weight.",
    );
    for (service, s) in instances() {
        let l = labels(&[("service", service), ("instance", &s.instance.endpoint)]);
        let _ = writeln!(out, "stardust_instance_weight{{{l}}} {}", s.instance.weight);
    }
    family(
        &mut out,
        "stardust_instance_health",
        "gauge",
        "1 for an instance's current health state (healthy, erroring, stale, unreachable), 0 for \
         the others.",
    );
    for (service, s) in instances() {
        let (h, _) = health(s, snap);
        for state in Health::ALL {
            let l = labels(&[
                ("service", service),
                ("instance", &s.instance.endpoint),
                ("state", state.as_str()),
            ]);
            let _ = writeln!(
                out,
                "stardust_instance_health{{{l}}} {}",
                u8::from(state == h)
            );
        }
    }
    family(
        &mut out,
        "stardust_instance_lease_age_seconds",
        "gauge",
        "Seconds since an instance's lease was last renewed.",
    );
    for (service, s) in instances() {
        let l = labels(&[("service", service), ("instance", &s.instance.endpoint)]);
        let _ = writeln!(
            out,
            "stardust_instance_lease_age_seconds{{{l}}} {}",
            now.saturating_duration_since(s.renewed).as_secs_f64()
        );
    }

    // Process facts, per session: labelled by its endpoints (one series each), or by its
    // address for a process that registers nothing (a consumer).
    let mut processes: Vec<(String, String, &ProcessReport)> = Vec::new();
    for s in snap.sessions.values() {
        let Some(report) = &s.report else { continue };
        let mut endpoints: Vec<&str> = s.instances.iter().map(|(_, e)| e.as_str()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        if endpoints.is_empty() {
            processes.push((s.app.to_string(), s.peer.to_string(), report));
        }
        for e in endpoints {
            processes.push((s.app.to_string(), e.to_owned(), report));
        }
    }
    processes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    processes.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    type Fact = fn(&ProcessReport, Instant) -> Option<f64>;
    let facts_list: [(&str, &str, &str, Fact); 6] = [
        (
            "stardust_process_uptime_seconds",
            "gauge",
            "Seconds since the process started (from its last report).",
            |r, _| Some(r.uptime_ms as f64 / 1e3),
        ),
        (
            "stardust_process_in_flight",
            "gauge",
            "Calls the process was serving at its last report.",
            |r, _| Some(r.in_flight as f64),
        ),
        (
            "stardust_process_cpu_seconds_total",
            "counter",
            "CPU time (user + system) the process reported using since the registry first saw it.",
            |r, _| Some(r.cpu_ms_total as f64 / 1e3),
        ),
        (
            "stardust_process_resident_memory_bytes",
            "gauge",
            "The process's resident memory at its last report (absent when it does not report it).",
            |r, _| (r.rss_bytes > 0).then_some(r.rss_bytes as f64),
        ),
        (
            "stardust_process_unbound_tokens_accepted_total",
            "counter",
            "Unbound (bearer) access tokens the process's providers accepted since it started, \
             with require_proof off: clients still to upgrade before proof of possession is required.",
            |r, _| Some(r.unbound_tokens_accepted as f64),
        ),
        (
            "stardust_process_report_age_seconds",
            "gauge",
            "Seconds since the process's last report.",
            |r, now| {
                r.at.map(|at| now.saturating_duration_since(at).as_secs_f64())
            },
        ),
    ];
    for (name, kind, help, get) in facts_list {
        family(&mut out, name, kind, help);
        for (app, instance, report) in &processes {
            let l = labels(&[("app", app), ("instance", instance)]);
            if let Some(v) = get(report, now) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    }

    traffic(&mut out, snap);

    family(
        &mut out,
        "stardust_registry_sessions",
        "gauge",
        "Logged-in registry connections.",
    );
    let _ = writeln!(out, "stardust_registry_sessions {}", snap.sessions.len());
    family(
        &mut out,
        "stardust_registry_logins_total",
        "counter",
        "Registry logins by outcome since it started.",
    );
    let l = facts.logins;
    for (outcome, n) in [
        ("succeeded", l.succeeded),
        ("failed", l.failed),
        ("throttled", l.throttled),
        ("busy", l.busy),
    ] {
        let _ = writeln!(
            out,
            "stardust_registry_logins_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    family(
        &mut out,
        "stardust_registry_store_up",
        "gauge",
        "1 while the registry follows its store (always, in memory); 0 while a shared store \
         (etcd) cannot be reached or watched.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_store_up {}",
        u8::from(facts.store_health.is_ok())
    );
    family(
        &mut out,
        "stardust_registry_uptime_seconds",
        "gauge",
        "Seconds since the registry started.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_uptime_seconds {}",
        now.saturating_duration_since(facts.started).as_secs_f64()
    );
    out
}

/// The traffic rules per service, their revision, and the faults consumers injected.
fn traffic(out: &mut String, snap: &Snapshot) {
    family(
        out,
        "stardust_faults_injected_total",
        "counter",
        "Calls consumers delayed (kind=\"delay\") or failed (kind=\"abort\") on purpose, per \
         service and fault of the traffic rules, since the registry started (from their reports).",
    );
    for (service, fault, kind, n) in snap.faults.series() {
        let l = labels(&[
            ("service", service),
            ("fault", fault),
            ("kind", kind.as_str()),
        ]);
        let _ = writeln!(out, "stardust_faults_injected_total{{{l}}} {n}");
    }
    family(
        out,
        "stardust_traffic_rules",
        "gauge",
        "Traffic rules per service and type (route, fault).",
    );
    for (service, rules) in &snap.rules.services {
        for (kind, n) in [("route", rules.routes.len()), ("fault", rules.faults.len())] {
            let l = labels(&[("service", service), ("type", kind)]);
            let _ = writeln!(out, "stardust_traffic_rules{{{l}}} {n}");
        }
    }
    family(
        out,
        "stardust_traffic_rules_revision",
        "gauge",
        "The revision of the traffic rules (rises with every accepted change).",
    );
    let _ = writeln!(
        out,
        "stardust_traffic_rules_revision {}",
        snap.rules.revision
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(
            labels(&[("service", "s\"1"), ("method", "m")]),
            r#"service="s\"1",method="m""#
        );
    }

    #[test]
    fn le_labels_are_seconds() {
        assert_eq!(seconds_label(25), "0.000025");
        assert_eq!(seconds_label(1_000_000), "1");
        assert_eq!(seconds_label(2_500_000), "2.5");
    }
}
