//! Choosing a provider per call: the [`Balancer`] trait and the strategies that ship with
//! Stardust.
//!
//! A consumer proxy from [`Stardust::client`](crate::Stardust::client) keeps one connection per
//! provider the registry lists and asks its balancer, for every call, which provider takes it.
//! When the chosen provider cannot take the call (see [`Error::is_not_delivered`]) the call is
//! retried on another one, and the balancer is asked again with the providers not yet tried.
//!
//! | strategy | picks | use it for |
//! | --- | --- | --- |
//! | [`LeastLoaded`] (default) | the less loaded of two random providers: calls in flight × latency EWMA | most services: steers away from slow or stuck providers |
//! | [`RoundRobin`] | each provider in turn | identical providers, even spread |
//! | [`WeightedRandom`] | at random, in proportion to registry weights | providers of unequal capacity |
//! | [`ConsistentHash`] | the provider the call's hash key maps to ([`Client::with_hash_key`]) | caches, sessions: a key stays on one provider |
//!
//! Whatever the strategy, a provider that holds calls without answering is *suspect* and left
//! out of the choice until a probe call gets an answer ([`StallDetection`]), a provider that
//! fails calls in a row is ejected for a while, and a call that may run twice is *hedged*: sent
//! to a second provider when the first has not answered in time ([`Hedging`]). A custom
//! [`Balancer`] sees only the providers left after that.
//!
//! [`Error::is_not_delivered`]: crate::Error::is_not_delivered
//! [`Client::with_hash_key`]: crate::Client::with_hash_key
//!
//! ```
//! use stardust::balance::{Balancer, Pick, Target};
//!
//! /// Always the provider with the highest registry weight.
//! struct Heaviest;
//!
//! impl Balancer for Heaviest {
//!     fn pick(&self, targets: &[Target], _call: &Pick) -> usize {
//!         (0..targets.len()).max_by_key(|&i| targets[i].weight).unwrap_or(0)
//!     }
//! }
//! ```

mod latency;
mod load;
mod policy;
mod strategies;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use latency::LatencyTracker;
pub(crate) use load::{InFlight, Load, clock_ns};
pub(crate) use policy::{
    HEDGE_MIN_SAMPLES, HedgeDelay, Outliers, Policy, RetryBudget, is_provider_fault,
};
pub use policy::{Hedging, StallDetection};
pub(crate) use strategies::stable_hash;
pub use strategies::{ConsistentHash, LeastLoaded, RoundRobin, WeightedRandom};

/// A provider a call may go to, as the registry lists it, with its live load as seen by this
/// process.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Target {
    /// The address consumers dial (`host:port`), as registered.
    pub endpoint: Arc<str>,
    /// The provider's registry weight (100 unless registered otherwise).
    pub weight: u32,
    /// The provider speaks TLS (as registered): its connection uses the handle's
    /// [`ClientTls`](crate::tls::ClientTls).
    pub tls: bool,
    load: Arc<Load>,
    /// Where this process counts its calls to the provider's service (status reports).
    pub(crate) figures: Option<Arc<crate::monitor::Figures>>,
    /// The connection pool's entry for the endpoint, so a call reaches its connection without
    /// a lookup by name (type-erased: choosing a provider knows nothing of connections).
    pub(crate) route: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.endpoint == other.endpoint && self.weight == other.weight && self.tls == other.tls
    }
}

impl Target {
    /// A target for `endpoint` with `weight` and no recorded load.
    pub fn new(endpoint: impl Into<Arc<str>>, weight: u32) -> Target {
        Target::with_load(endpoint.into(), weight, Arc::new(Load::default()))
    }

    pub(crate) fn with_load(endpoint: Arc<str>, weight: u32, load: Arc<Load>) -> Target {
        Target {
            endpoint,
            weight,
            tls: false,
            load,
            figures: None,
            route: None,
        }
    }

    /// Calls this process has in flight on the provider.
    pub fn in_flight(&self) -> u32 {
        self.load.in_flight()
    }

    /// Moving average of the provider's response time as seen by this process; `None` before its
    /// first answer.
    pub fn latency(&self) -> Option<Duration> {
        match self.load.ewma_ns() {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub(crate) fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

/// What a balancer knows about the call it routes.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Pick {
    /// The key given with [`Client::with_hash_key`](crate::Client::with_hash_key), hashed.
    pub hash_key: Option<u64>,
    /// When the pick happens ([`clock_ns`]; 0 when unknown).
    pub(crate) now_ns: u64,
}

/// Picks the provider that takes a call.
///
/// `pick` is called once per attempt with the providers still eligible (never an empty slice)
/// and returns an index into it; an index out of range is taken modulo the length. It runs on
/// the call path, so it should be quick and must not block.
pub trait Balancer: Send + Sync + 'static {
    /// The index, in `targets`, of the provider that takes the call.
    fn pick(&self, targets: &[Target], call: &Pick) -> usize;
}
