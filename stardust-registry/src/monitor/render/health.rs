//! An instance's health (`healthy`, `erroring`, `stale`, `unreachable`) and the reasons for
//! it: judged from a snapshot the same way for the JSON views and for `/metrics`, so both
//! always agree.

use std::time::Duration;

use serde::Serialize;

use crate::monitor::{ERRORING_RATE, InstanceStats, Snapshot, UNREACHABLE_HOLD};

/// An instance's health, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Health {
    /// Consumers report they cannot connect to it.
    Unreachable,
    /// No report within about two report intervals.
    Stale,
    /// Its last window (or its consumers' last windows) had errors on 5% of calls or more.
    Erroring,
    /// None of the above.
    Healthy,
}

impl Health {
    pub(crate) const ALL: [Health; 4] = [
        Health::Healthy,
        Health::Erroring,
        Health::Stale,
        Health::Unreachable,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Unreachable => "unreachable",
            Health::Stale => "stale",
            Health::Erroring => "erroring",
            Health::Healthy => "healthy",
        }
    }
}

/// An instance's health and the reasons for it.
pub(super) fn health(stats: &InstanceStats, snap: &Snapshot) -> (Health, Vec<String>) {
    let now = snap.now;
    let mut health = Health::Healthy;
    let mut reasons = Vec::new();
    let unreachable = stats.unreachable_from(now);
    if !unreachable.is_empty() {
        health = health.min(Health::Unreachable);
        reasons.push(format!(
            "consumers cannot connect to it: {}",
            unreachable.join(", ")
        ));
    }
    let interval = if stats.window_ms > 0 {
        Duration::from_millis(stats.window_ms).clamp(Duration::from_millis(100), snap.lease_ttl)
    } else {
        snap.lease_ttl / 3
    };
    match stats.reported {
        None if now.saturating_duration_since(stats.registered) > snap.lease_ttl / 2 => {
            health = health.min(Health::Stale);
            reasons.push("no report since it registered".into());
        }
        None => reasons.push("awaiting its first report".into()),
        Some(at) => {
            let age = now.saturating_duration_since(at);
            if age > interval * 2 + Duration::from_secs(2) {
                health = health.min(Health::Stale);
                reasons.push(format!("no report for {:.1} s", age.as_secs_f64()));
            }
        }
    }
    let (calls, errors) = stats.methods.values().fold((0u64, 0u64), |(c, e), m| {
        (
            c.saturating_add(m.last.calls),
            e.saturating_add(m.last.errors),
        )
    });
    if calls > 0 && errors as f64 >= calls as f64 * ERRORING_RATE {
        health = health.min(Health::Erroring);
        reasons.push(format!(
            "{errors} of {calls} calls failed in its last report"
        ));
    }
    let (c_calls, c_errors) = stats
        .consumers
        .values()
        .flat_map(|c| c.sessions.values())
        .filter(|w| now.saturating_duration_since(w.at) < UNREACHABLE_HOLD)
        .fold((0u64, 0u64), |(c, e), w| {
            // Connect failures already make it `unreachable`.
            let errors = w.errors.saturating_sub(w.connect_errors);
            (c.saturating_add(w.calls), e.saturating_add(errors))
        });
    if c_calls > 0 && c_errors as f64 >= c_calls as f64 * ERRORING_RATE {
        health = health.min(Health::Erroring);
        reasons.push(format!(
            "consumers saw {c_errors} of {c_calls} calls fail recently"
        ));
    }
    (health, reasons)
}

/// Every live instance's version and health, by service: what `stardust-registry services`
/// summarizes.
pub(crate) fn by_service(snap: &Snapshot) -> Vec<(String, Vec<(String, Health)>)> {
    snap.services
        .iter()
        .map(|(name, entry)| {
            let instances = entry
                .instances
                .values()
                .map(|stats| (stats.instance.version.clone(), health(stats, snap).0))
                .collect();
            (name.clone(), instances)
        })
        .collect()
}
