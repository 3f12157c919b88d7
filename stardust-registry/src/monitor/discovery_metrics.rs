//! `/metrics` families about discovery's fan-out, leases and session resumption (appended to
//! the monitor's own families).

use std::fmt::Write;

use super::{FanoutStats, LoginStats};

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Appends the families to `out`.
pub(crate) fn prometheus(
    out: &mut String,
    fanout: FanoutStats,
    logins: LoginStats,
    subscriptions: usize,
) {
    family(
        out,
        "stardust_registry_subscriptions",
        "gauge",
        "Live discovery subscriptions, over every session.",
    );
    let _ = writeln!(out, "stardust_registry_subscriptions {subscriptions}");
    family(
        out,
        "stardust_registry_discovery_pushes_total",
        "counter",
        "Discovery pushes to subscribers by outcome: sent, dropped (the subscriber was over its \
         queue bound and will be told to resync), resync (sent once it caught up).",
    );
    for (outcome, n) in [
        ("sent", fanout.pushes),
        ("dropped", fanout.dropped),
        ("resync", fanout.resyncs),
    ] {
        let _ = writeln!(
            out,
            "stardust_registry_discovery_pushes_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    family(
        out,
        "stardust_registry_discovery_rounds_total",
        "counter",
        "Publishing rounds (each sends every change since the previous one).",
    );
    let _ = writeln!(
        out,
        "stardust_registry_discovery_rounds_total {}",
        fanout.rounds
    );
    family(
        out,
        "stardust_registry_subscriber_queue_bytes",
        "gauge",
        "The bound of each subscriber's queue of pushes, in bytes (limits.subscriber_queue_bytes).",
    );
    let _ = writeln!(
        out,
        "stardust_registry_subscriber_queue_bytes {}",
        fanout.queue_bound
    );
    family(
        out,
        "stardust_registry_subscriber_queue_peak_bytes",
        "gauge",
        "The most bytes seen waiting for one subscriber right after a push to it.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_subscriber_queue_peak_bytes {}",
        fanout.queue_peak
    );
    family(
        out,
        "stardust_registry_lease_expiries_total",
        "counter",
        "Registrations removed because their session sent no heartbeat within the lease TTL.",
    );
    let _ = writeln!(
        out,
        "stardust_registry_lease_expiries_total {}",
        fanout.expired
    );
    family(
        out,
        "stardust_registry_resumes_total",
        "counter",
        "Sessions resumed with a still-valid access token, by outcome.",
    );
    for (outcome, n) in [
        ("resumed", logins.resumed),
        ("refused", logins.resume_refused),
    ] {
        let _ = writeln!(
            out,
            "stardust_registry_resumes_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
}
