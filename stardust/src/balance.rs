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

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// A provider a call may go to, as the registry lists it, with its live load as seen by this
/// process.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Target {
    /// The address consumers dial (`host:port`), as registered.
    pub endpoint: Arc<str>,
    /// The provider's registry weight (100 unless registered otherwise).
    pub weight: u32,
    load: Arc<Load>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.endpoint == other.endpoint && self.weight == other.weight
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
            load,
        }
    }

    /// Calls this process has in flight on the provider.
    pub fn in_flight(&self) -> u32 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Moving average of the provider's response time as seen by this process; `None` before its
    /// first answer.
    pub fn latency(&self) -> Option<Duration> {
        match self.load.ewma_ns.load(Ordering::Relaxed) {
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

/// One provider's load as seen by this process, shared by every proxy of a `Stardust` handle.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds; 0 until the first answer.
    ewma_ns: AtomicU64,
}

/// Weight of a new sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;

impl Load {
    /// Counts a call in flight until the returned guard drops.
    pub(crate) fn start(self: &Arc<Load>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Folds an answer's latency into the average.
    pub(crate) fn record(&self, latency: Duration) {
        let sample = (latency.as_nanos() as u64).max(1);
        let _ = self
            .ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match old {
                    0 => sample,
                    old => {
                        ((old as f64) * (1.0 - EWMA_ALPHA) + (sample as f64) * EWMA_ALPHA) as u64
                    }
                    .max(1),
                })
            });
    }
}

/// A call in flight on a provider (see [`Load::start`]).
pub(crate) struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
    fn pick(&self, targets: &[Target], _call: &Pick) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % targets.len().max(1)
    }
}

/// A small seeded generator (SplitMix64). Written here rather than taken from `rand`: its
/// output for a seed is fixed by this code, so seeded tests stay valid across dependency
/// upgrades, and the runtime gains no dependency for a few lines.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Picks at random, each provider with probability `weight / total weight` (registry weights; a
/// weight of 0 gets no calls unless every weight is 0, then all are equally likely).
#[derive(Debug)]
pub struct WeightedRandom {
    rng: Mutex<SplitMix64>,
}

impl Default for WeightedRandom {
    fn default() -> WeightedRandom {
        WeightedRandom::new()
    }
}

impl WeightedRandom {
    /// A weighted random balancer seeded from the system.
    pub fn new() -> WeightedRandom {
        WeightedRandom::with_seed(random_seed())
    }

    /// A weighted random balancer whose sequence of picks is fixed by `seed` (for tests).
    pub fn with_seed(seed: u64) -> WeightedRandom {
        WeightedRandom {
            rng: Mutex::new(SplitMix64::new(seed)),
        }
    }
}

/// The index `r` (uniform over `u64`) selects when each index `i` owns a share `weights[i]`.
pub fn weighted_index(weights: &[u32], r: u64) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return ((r as u128 * weights.len() as u128) >> 64) as usize;
    }
    let mut point = ((r as u128 * total as u128) >> 64) as u64;
    for (i, &w) in weights.iter().enumerate() {
        if point < u64::from(w) {
            return i;
        }
        point -= u64::from(w);
    }
    weights.len() - 1
}

impl Balancer for WeightedRandom {
    fn pick(&self, targets: &[Target], _call: &Pick) -> usize {
        let r = self.rng.lock().next_u64();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        weighted_index(&weights, r)
    }
}

/// Least outstanding requests with the power of two choices: two distinct providers are drawn
/// at random and the call goes to the one with the lower cost, `(calls in flight + 1) × latency
/// EWMA`. A provider that slows down or stalls accumulates calls in flight and quickly stops
/// being chosen, without any single provider being flooded by every caller at once. The
/// default strategy.
#[derive(Debug)]
pub struct LeastLoaded {
    rng: Mutex<SplitMix64>,
}

impl Default for LeastLoaded {
    fn default() -> LeastLoaded {
        LeastLoaded::new()
    }
}

impl LeastLoaded {
    /// A least-loaded balancer seeded from the system.
    pub fn new() -> LeastLoaded {
        LeastLoaded::with_seed(random_seed())
    }

    /// A least-loaded balancer whose random draws are fixed by `seed` (for tests).
    pub fn with_seed(seed: u64) -> LeastLoaded {
        LeastLoaded {
            rng: Mutex::new(SplitMix64::new(seed)),
        }
    }
}

/// The costs of two providers, `(in flight + 1) × latency EWMA`. A provider that has not
/// answered yet is given the other's latency (so a new provider gets tried), but while it has a
/// call in flight it loses to any provider that has answered: it takes one call at a time until
/// its first answer, and one whose calls never come back stops being chosen.
fn costs(a: &Target, b: &Target) -> (u128, u128) {
    let (la, lb) = match (
        a.load.ewma_ns.load(Ordering::Relaxed),
        b.load.ewma_ns.load(Ordering::Relaxed),
    ) {
        (0, 0) => (1, 1),
        (0, _) if a.in_flight() > 0 => return (u128::MAX, 0),
        (_, 0) if b.in_flight() > 0 => return (0, u128::MAX),
        (0, y) => (y, y),
        (x, 0) => (x, x),
        (x, y) => (x, y),
    };
    (
        (u128::from(a.in_flight()) + 1) * u128::from(la),
        (u128::from(b.in_flight()) + 1) * u128::from(lb),
    )
}

impl Balancer for LeastLoaded {
    fn pick(&self, targets: &[Target], _call: &Pick) -> usize {
        let n = targets.len();
        if n < 2 {
            return 0;
        }
        let (a, b) = {
            let mut rng = self.rng.lock();
            let a = rng.below(n);
            let b = (a + 1 + rng.below(n - 1)) % n;
            (a, b)
        };
        let (ca, cb) = costs(&targets[a], &targets[b]);
        if cb < ca { b } else { a }
    }
}

/// Sends each call to the provider its hash key maps to (rendezvous hashing: the provider with
/// the highest hash of key and endpoint). A key stays on one provider while it is listed; when a
/// provider leaves only its keys move, and one that joins takes only the keys it now wins.
/// Calls without a key go to a random provider.
#[derive(Debug)]
pub struct ConsistentHash {
    rng: Mutex<SplitMix64>,
}

impl Default for ConsistentHash {
    fn default() -> ConsistentHash {
        ConsistentHash::new()
    }
}

impl ConsistentHash {
    /// A consistent-hash balancer.
    pub fn new() -> ConsistentHash {
        ConsistentHash {
            rng: Mutex::new(SplitMix64::new(random_seed())),
        }
    }
}

/// FNV-1a 64: a stable hash of bytes (the same across processes, platforms and versions).
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The provider a key maps to among `endpoints`.
pub fn rendezvous(endpoints: &[&str], key: u64) -> usize {
    let mut best = (0, 0u64);
    for (i, e) in endpoints.iter().enumerate() {
        let score = SplitMix64::new(stable_hash(e.as_bytes()) ^ key).next_u64();
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

impl Balancer for ConsistentHash {
    fn pick(&self, targets: &[Target], call: &Pick) -> usize {
        match call.hash_key {
            Some(key) => {
                let endpoints: Vec<&str> = targets.iter().map(|t| &*t.endpoint).collect();
                rendezvous(&endpoints, key)
            }
            None => self.rng.lock().below(targets.len().max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target::new(format!("10.0.0.{i}:1"), 100))
            .collect()
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let rr = RoundRobin::new();
        let mut counts = [0usize; 3];
        for _ in 0..30 {
            counts[rr.pick(&targets(3), &Pick::default())] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        // Pure function of the draw.
        assert_eq!(weighted_index(&[1, 1], 0), 0);
        assert_eq!(weighted_index(&[1, 1], u64::MAX), 1);
        assert_eq!(weighted_index(&[0, 5, 0], 12345), 1);
        assert_eq!(weighted_index(&[0, 0], u64::MAX), 1);
        // Seeded: the same sequence on every run and platform.
        let mut t = targets(3);
        t[0].weight = 100;
        t[1].weight = 200;
        t[2].weight = 700;
        let wr = WeightedRandom::with_seed(42);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[wr.pick(&t, &Pick::default())] += 1;
        }
        let again = WeightedRandom::with_seed(42);
        let mut counts2 = [0u32; 3];
        for _ in 0..10_000 {
            counts2[again.pick(&t, &Pick::default())] += 1;
        }
        assert_eq!(counts, counts2);
        for (c, share) in counts.iter().zip([1000, 2000, 7000]) {
            assert!((*c as i64 - share).abs() < 250, "{counts:?}");
        }
    }

    #[test]
    fn least_loaded_avoids_busy_and_slow_providers() {
        let t = targets(3);
        for _ in 0..5 {
            t[0].load().record(Duration::from_micros(100));
            t[1].load().record(Duration::from_micros(100));
            t[2].load().record(Duration::from_millis(50));
        }
        let _busy: Vec<InFlight> = (0..10).map(|_| t[1].load().start()).collect();
        let ll = LeastLoaded::with_seed(7);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[ll.pick(&t, &Pick::default())] += 1;
        }
        // Provider 0 wins every draw it is in; 1 (busy) and 2 (slow) only meet each other.
        assert!(counts[0] > 1800, "{counts:?}");
        assert_eq!(t[1].in_flight(), 10);
    }

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_leaving_provider() {
        let all = ["a:1", "b:1", "c:1", "d:1", "e:1"];
        let before: Vec<&str> = (0..2000u64).map(|k| all[rendezvous(&all, k)]).collect();
        let rest = ["a:1", "b:1", "d:1", "e:1"];
        let mut per = std::collections::HashMap::new();
        for (k, owner) in before.iter().enumerate() {
            *per.entry(*owner).or_insert(0) += 1;
            let now = rest[rendezvous(&rest, k as u64)];
            if *owner != "c:1" {
                assert_eq!(now, *owner, "key {k} moved");
            }
        }
        assert!(per.values().all(|&n| n > 250), "{per:?}");
    }
}
