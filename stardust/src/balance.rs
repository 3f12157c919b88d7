//! Choosing a provider per call: the [`Balancer`] trait and the strategies that ship with
//! Stardust.
//!
//! A consumer proxy from [`Stardust::client`](crate::Stardust::client) keeps one connection per
//! provider the registry lists and asks its balancer, for every call, which provider takes it.
//! When the chosen provider cannot take the call (see [`Error::is_not_delivered`]) the call is
//! retried on another one, and the balancer is asked again with the providers not yet tried.
//!
//! [`Error::is_not_delivered`]: crate::Error::is_not_delivered
//!
//! ```
//! use stardust::balance::{Balancer, Target};
//!
//! /// Always the provider with the highest registry weight.
//! struct Heaviest;
//!
//! impl Balancer for Heaviest {
//!     fn pick(&self, targets: &[Target]) -> usize {
//!         (0..targets.len()).max_by_key(|&i| targets[i].weight).unwrap_or(0)
//!     }
//! }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A provider a call may go to, as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// The address consumers dial (`host:port`), as registered.
    pub endpoint: Arc<str>,
    /// The provider's registry weight (100 unless registered otherwise).
    pub weight: u32,
}

impl Target {
    /// A target for `endpoint` with `weight`.
    pub fn new(endpoint: impl Into<Arc<str>>, weight: u32) -> Target {
        Target {
            endpoint: endpoint.into(),
            weight,
        }
    }
}

/// Picks the provider that takes a call.
///
/// `pick` is called once per attempt with the providers still eligible (never an empty slice)
/// and returns an index into it; an index out of range is taken modulo the length. It runs on
/// the call path, so it should be quick and must not block.
pub trait Balancer: Send + Sync + 'static {
    /// The index, in `targets`, of the provider that takes the call.
    fn pick(&self, targets: &[Target]) -> usize;
}

/// Takes the providers in turn: with `n` providers and `k * n` calls, each gets exactly `k`
/// (while the list does not change and no call is retried).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first provider.
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, targets: &[Target]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % targets.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_each_in_turn() {
        let targets: Vec<Target> = (0..3)
            .map(|i| Target::new(format!("10.0.0.{i}:1"), 100))
            .collect();
        let rr = RoundRobin::new();
        let mut counts = [0usize; 3];
        for _ in 0..30 {
            counts[rr.pick(&targets)] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }
}
