//! What monitoring reads from the registry service, and the types it reads it as.
//!
//! The service sits above monitoring: it owns the [`Monitor`] and feeds it registrations and
//! status reports. The HTTP server also shows a few figures only the service knows (logins,
//! pushes to subscribers, subscriptions, whether the store is followed), so it reads them
//! through [`RegistryState`], a trait defined here and implemented by the service, instead of
//! naming the service's type: imports then point one way only (`service` -> `monitor`), and
//! the counters' types live here, below both their producer and their readers.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use stardust::discovery::api::{RegistryError, VersionDescription};

use super::Monitor;

/// A boxed future, for the trait's async methods (it is used as a trait object).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The registry as the monitoring HTTP server sees it (implemented by the registry service;
/// the node hands one to the server).
pub(crate) trait RegistryState: Send + Sync + 'static {
    /// The figures folded from status reports.
    fn monitor(&self) -> &Monitor;
    /// `Err(why)` while the node cannot follow its shared store.
    fn store_health(&self) -> Result<(), String>;
    /// The login counters so far.
    fn login_stats(&self) -> LoginStats;
    /// What the pushes to subscribers did so far.
    fn fanout_stats(&self) -> FanoutStats;
    /// Live subscriptions, over every session.
    fn subscriptions(&self) -> usize;
    /// The traffic rules now (a copy: read per request, never on the heartbeat path).
    fn rules(&self) -> stardust::traffic::Rules;
    /// What providers said about `service` (methods, signatures, docs), per version, lowest
    /// first; empty when none described it.
    fn describe(&self, service: &str) -> Vec<VersionDescription>;
    /// Checks `app`'s `secret` exactly like a registry login from `peer` (the same throttle,
    /// hash permits and argon2 off the async threads, the same counters).
    fn check_secret(
        &self,
        app: String,
        secret: String,
        peer: SocketAddr,
    ) -> BoxFuture<'_, Result<(), RegistryError>>;
    /// Whether `app` is configured with the admin role.
    fn is_admin(&self, app: &str) -> bool;
    /// A token for `app`, signed by this registry, valid for `ttl` and bound to the holder of
    /// `key` (proof of possession).
    fn mint_bound(&self, app: &str, key: [u8; 32], ttl: std::time::Duration) -> String;
}

/// Counters of a registry's logins since it started ([`RegistryNode::login_stats`]).
///
/// [`RegistryNode::login_stats`]: crate::RegistryNode::login_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginStats {
    /// Logins that succeeded.
    pub succeeded: u64,
    /// Logins refused for their credentials: wrong secret, unknown app, oversized name or secret.
    pub failed: u64,
    /// Logins refused by the throttle (failure backoff, checks in progress, rate limit), without
    /// their secret being checked.
    pub throttled: u64,
    /// Logins refused because too many were already waiting for a check, or the wait was too
    /// long.
    pub busy: u64,
    /// Argon2 computations run: secrets verified, and new secrets hashed in dev mode.
    pub hashes: u64,
    /// Sessions resumed with a still-valid access token (`resume`), without a secret check.
    pub resumed: u64,
    /// Resumptions refused (expired token, unknown key, app gone): the caller logs in with its
    /// secret instead.
    pub resume_refused: u64,
}

/// What the pushes to subscribers did since the node started (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FanoutStats {
    /// Pushes queued to subscribers.
    pub(crate) pushes: u64,
    /// Pushes not queued because the subscriber was behind (over its queue bound).
    pub(crate) dropped: u64,
    /// Resync demands (or whole lists) sent to subscribers that caught up after falling behind.
    pub(crate) resyncs: u64,
    /// Publishing rounds.
    pub(crate) rounds: u64,
    /// Leases that expired (no heartbeat within the lease TTL).
    pub(crate) expired: u64,
    /// The bound of each subscriber's queue, in bytes.
    pub(crate) queue_bound: u64,
    /// The most bytes seen queued for one subscriber right after a push (at most the bound, or
    /// one push that went to an empty queue, by construction).
    pub(crate) queue_peak: u64,
}
