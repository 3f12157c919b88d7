//! Rendering a [`Snapshot`]: JSON for `/api/...` and Prometheus text for `/metrics`.
//!
//! Split by what each output is: [`health`](mod@health) judges an instance (shared by both
//! outputs), [`api`] builds the JSON views of services and instances,
//! [`history`](mod@history) the JSON of the console's chart, and
//! [`prometheus`](mod@prometheus) the text exposition, [`traffic`] the JSON of the traffic
//! rules and injected faults. This module holds what they all use:
//! the registry's own facts and a few unit conversions.
//!
//! [`Snapshot`]: super::Snapshot

mod api;
mod health;
mod history;
mod prometheus;
mod traffic;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::monitor::LoginStats;

pub(crate) use api::{instances, overview, service_view};
pub(crate) use health::by_service as health_by_service;
pub(crate) use history::history;
pub(crate) use prometheus::prometheus;

/// Facts about the registry itself, shown in the console's header and in `/metrics`.
pub(crate) struct RegistryFacts {
    pub rpc_addr: SocketAddr,
    pub dev: bool,
    pub tls: bool,
    /// Where registrations live: `memory`, or the etcd URL of a registry with several nodes.
    pub store: String,
    /// This node's name in a shared store's entries.
    pub node: String,
    /// Whether the node follows its store (`Err(why)` otherwise).
    pub store_health: Result<(), String>,
    pub started: Instant,
    pub logins: LoginStats,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn age_ms(now: Instant, then: Instant) -> u64 {
    ms(now.saturating_duration_since(then))
}

/// Rounds a rate for JSON (three decimals is plenty, and keeps payloads short).
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
