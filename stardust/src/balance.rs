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

/// One provider's load as seen by this process, shared by every proxy of a `Stardust` handle.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds; 0 until the first answer.
    ewma_ns: AtomicU64,
    /// When the last answer was folded in ([`clock_ns`]).
    sampled_ns: AtomicU64,
    /// Provider faults in a row (see [`Outliers`]).
    failures: AtomicU32,
    /// Ejected until this time ([`clock_ns`]); 0 when not ejected.
    ejected_until: AtomicU64,
}

/// Weight of a new sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;
/// A provider's latency estimate halves for every this many nanoseconds without an answer
/// (2 s): a provider that was slow once and then lost every draw would otherwise keep its bad
/// estimate forever; decayed, it soon wins a draw and gets measured again.
const EWMA_HALF_LIFE_NS: u64 = 2_000_000_000;

/// `ewma` as it counts at `now_ns` when its last sample was at `sampled_ns`.
fn decayed(ewma: u64, sampled_ns: u64, now_ns: u64) -> u64 {
    if ewma == 0 {
        return 0;
    }
    let halvings = now_ns.saturating_sub(sampled_ns) / EWMA_HALF_LIFE_NS;
    (ewma >> halvings.min(63)).max(1)
}

/// Nanoseconds since the first call of this process's balancers (a monotonic clock that fits in
/// an atomic).
pub(crate) fn clock_ns(now: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    (now.saturating_duration_since(epoch).as_nanos() as u64).max(1)
}

impl Load {
    /// Whether the provider is ejected at `now_ns`.
    pub(crate) fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    /// The provider answered: it is healthy again.
    pub(crate) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The provider failed a call. Returns whether this ejected it.
    pub(crate) fn failed(&self, policy: &Outliers, now_ns: u64) -> bool {
        if policy.consecutive == 0 {
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive || self.is_ejected(now_ns) {
            return false;
        }
        // Back in after the ejection as a probe: one more fault ejects it again at once, an
        // answer clears the count.
        self.failures
            .store(policy.consecutive - 1, Ordering::Relaxed);
        let until = now_ns.saturating_add(policy.ejection.as_nanos() as u64);
        self.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    /// Counts a call in flight until the returned guard drops.
    pub(crate) fn start(self: &Arc<Load>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Folds an answer's latency, received at `now_ns`, into the average.
    pub(crate) fn record(&self, latency: Duration, now_ns: u64) {
        let sample = (latency.as_nanos() as u64).max(1);
        let sampled = self.sampled_ns.swap(now_ns, Ordering::Relaxed);
        let _ = self
            .ewma_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(match decayed(old, sampled, now_ns) {
                    0 => sample,
                    old => {
                        ((old as f64) * (1.0 - EWMA_ALPHA) + (sample as f64) * EWMA_ALPHA) as u64
                    }
                    .max(1),
                })
            });
    }

    /// The latency estimate as it counts at `now_ns` (decayed while no answers come).
    fn estimate(&self, now_ns: u64) -> u64 {
        decayed(
            self.ewma_ns.load(Ordering::Relaxed),
            self.sampled_ns.load(Ordering::Relaxed),
            now_ns,
        )
    }
}

/// Outlier ejection: a provider that fails `consecutive` calls in a row (connection refused or
/// lost, overloaded, shutting down, panicked, internal error, deadline exceeded) takes no calls
/// for `ejection`; then it is probed back in: its next call decides (an answer clears it, one
/// more fault ejects it again). When every provider is ejected, ejection is ignored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outliers {
    pub(crate) consecutive: u32,
    pub(crate) ejection: Duration,
}

impl Default for Outliers {
    fn default() -> Outliers {
        Outliers {
            consecutive: 5,
            ejection: Duration::from_secs(10),
        }
    }
}

/// Limits retries so a failing deployment is not flooded with them: a retry spends a token;
/// tokens come at `min_per_sec` per second (the floor) plus `ratio` per call made (the share of
/// traffic), and at most `10 × min_per_sec + 100 × ratio` are kept.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// Thousandths of a token per second (the floor) and per call (the share).
    floor_milli: u64,
    share_milli: u64,
    cap_milli: u64,
    /// Thousandths of a token.
    tokens: AtomicU64,
    /// When the floor was last added ([`clock_ns`]).
    refilled_ns: AtomicU64,
}

const TOKEN: u64 = 1000;

impl RetryBudget {
    pub(crate) fn new(min_per_sec: u32, ratio: f64) -> RetryBudget {
        let floor_milli = u64::from(min_per_sec) * TOKEN;
        let share_milli = (ratio.clamp(0.0, 1.0) * TOKEN as f64).round() as u64;
        RetryBudget {
            floor_milli,
            share_milli,
            cap_milli: 10 * floor_milli + 100 * share_milli,
            // Starts with one second of the floor.
            tokens: AtomicU64::new(floor_milli),
            refilled_ns: AtomicU64::new(clock_ns(std::time::Instant::now())),
        }
    }

    fn add(&self, milli: u64) {
        if milli > 0 {
            let cap = self.cap_milli;
            let _ = self
                .tokens
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                    Some((t + milli).min(cap))
                });
        }
    }

    /// Adds the floor earned since the last refill (whole thousandths; the rest stays pending).
    fn refill(&self, now_ns: u64) {
        if self.floor_milli == 0 {
            return;
        }
        let last = self.refilled_ns.load(Ordering::Relaxed);
        let earned = (u128::from(now_ns.saturating_sub(last)) * u128::from(self.floor_milli)
            / 1_000_000_000) as u64;
        if earned == 0 {
            return;
        }
        // Whoever moves the refill time adds what was earned; the others see it done.
        let spent_ns = (u128::from(earned) * 1_000_000_000 / u128::from(self.floor_milli)) as u64;
        if self
            .refilled_ns
            .compare_exchange(last, last + spent_ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.add(earned);
        }
    }

    /// A call was made (its first attempt).
    pub(crate) fn deposit(&self, now: std::time::Instant) {
        self.add(self.share_milli);
        self.refill(clock_ns(now));
    }

    /// Spends a token for a retry, if there is one.
    pub(crate) fn withdraw(&self, now: std::time::Instant) -> bool {
        self.refill(clock_ns(now));
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok()
    }
}

impl Default for RetryBudget {
    fn default() -> RetryBudget {
        RetryBudget::new(10, 0.2)
    }
}

/// How a `Stardust` handle's balanced clients retry and eject: shared by all its proxies.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    pub(crate) budget: RetryBudget,
    pub(crate) outliers: Outliers,
}

/// Whether an error counts against the provider for outlier ejection: it could not be reached,
/// lost the connection, refused the call, or failed inside (not the caller's fault, and not a
/// deadline the caller chose).
pub(crate) fn is_provider_fault(kind: crate::ErrorKind) -> bool {
    use crate::ErrorKind::*;
    matches!(
        kind,
        Connect
            | ConnectionClosed
            | Overloaded
            | ShuttingDown
            | UnknownService
            | Internal
            | Panicked
            | Protocol
    )
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

/// A small seeded generator (SplitMix64), lock-free: its state is a counter, so concurrent
/// callers each take the next step with one atomic add. Written here rather than taken from
/// `rand`/`rand_chacha`: its output for a seed is fixed by this code, so seeded tests stay valid
/// across dependency upgrades, and the runtime gains no dependency for a few lines.
#[derive(Debug)]
pub(crate) struct SplitMix64(AtomicU64);

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(AtomicU64::new(seed))
    }

    pub(crate) fn next_u64(&self) -> u64 {
        mix(self
            .0
            .fetch_add(GOLDEN, Ordering::Relaxed)
            .wrapping_add(GOLDEN))
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    fn below(&self, n: usize) -> usize {
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
    rng: SplitMix64,
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
            rng: SplitMix64::new(seed),
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
        let r = self.rng.next_u64();
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
    rng: SplitMix64,
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
            rng: SplitMix64::new(seed),
        }
    }
}

/// The costs of two providers, `(in flight + 1) × latency EWMA` (the EWMA decayed while a
/// provider gets no answers, see [`EWMA_HALF_LIFE_NS`]). A provider that has not
/// answered yet is given the other's latency (so a new provider gets tried), but while it has a
/// call in flight it loses to any provider that has answered: it takes one call at a time until
/// its first answer, and one whose calls never come back stops being chosen.
fn costs(a: &Target, b: &Target, now_ns: u64) -> (u128, u128) {
    let (la, lb) = match (a.load.estimate(now_ns), b.load.estimate(now_ns)) {
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
    fn pick(&self, targets: &[Target], call: &Pick) -> usize {
        let n = targets.len();
        if n < 2 {
            return 0;
        }
        let (a, b) = {
            let rng = &self.rng;
            let a = rng.below(n);
            let b = (a + 1 + rng.below(n - 1)) % n;
            (a, b)
        };
        let (ca, cb) = costs(&targets[a], &targets[b], call.now_ns);
        if cb < ca { b } else { a }
    }
}

/// Sends each call to the provider its hash key maps to (rendezvous hashing: the provider with
/// the highest hash of key and endpoint). A key stays on one provider while it is listed; when a
/// provider leaves only its keys move, and one that joins takes only the keys it now wins.
/// Calls without a key go to a random provider.
#[derive(Debug)]
pub struct ConsistentHash {
    rng: SplitMix64,
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
            rng: SplitMix64::new(random_seed()),
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
        let score = mix((stable_hash(e.as_bytes()) ^ key).wrapping_add(GOLDEN));
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
            None => self.rng.below(targets.len().max(1)),
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
    fn retry_budget_has_a_floor_and_a_share_of_traffic() {
        // The clock's epoch is set before t0.
        let _ = clock_ns(std::time::Instant::now());
        let t0 = std::time::Instant::now();
        let budget = RetryBudget::new(10, 0.2);
        budget.refilled_ns.store(clock_ns(t0), Ordering::Relaxed);
        // One second of the floor to start with.
        assert_eq!((0..20).filter(|_| budget.withdraw(t0)).count(), 10);
        // 100 calls earn 20 retries.
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!((0..50).filter(|_| budget.withdraw(t0)).count(), 20);
        // Half a second later, half a second of the floor.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| budget.withdraw(t1)).count(), 5);
        // A long quiet period fills up to the cap only (10 s of floor + 100 × 0.2).
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..500).filter(|_| budget.withdraw(t2)).count(), 120);
        // No floor, no share: no retries at all.
        let none = RetryBudget::new(0, 0.0);
        none.deposit(t2);
        assert!(!none.withdraw(t2 + Duration::from_secs(60)));
    }

    #[test]
    fn outliers_are_ejected_then_probed_back_in() {
        let policy = Outliers {
            consecutive: 3,
            ejection: Duration::from_secs(10),
        };
        let load = Load::default();
        let sec = 1_000_000_000;
        assert!(!load.failed(&policy, sec));
        load.succeeded();
        assert!(!load.failed(&policy, sec));
        assert!(!load.failed(&policy, sec));
        assert!(load.failed(&policy, sec), "third fault in a row");
        assert!(load.is_ejected(5 * sec));
        assert!(!load.is_ejected(11 * sec), "back in after the ejection");
        // The probe fails: out again at once.
        assert!(load.failed(&policy, 11 * sec));
        assert!(load.is_ejected(12 * sec));
        // The next probe answers: healthy, three faults needed again.
        load.succeeded();
        assert!(!load.failed(&policy, 30 * sec));
        assert!(!load.failed(&policy, 30 * sec));
        assert!(load.failed(&policy, 30 * sec));
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
            t[0].load().record(Duration::from_micros(100), 0);
            t[1].load().record(Duration::from_micros(100), 0);
            t[2].load().record(Duration::from_millis(50), 0);
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
    fn a_provider_that_was_slow_once_is_measured_again_later() {
        let t = targets(2);
        let s = |secs: u64| secs * 1_000_000_000;
        // Provider 1 was slow once; provider 0 keeps answering fast.
        t[1].load().record(Duration::from_millis(50), s(1));
        t[0].load().record(Duration::from_micros(100), s(1));
        let ll = LeastLoaded::with_seed(3);
        let at = |now_ns| Pick {
            hash_key: None,
            now_ns,
        };
        assert!((0..100).all(|_| ll.pick(&t, &at(s(1))) == 0));
        // Twenty seconds on, provider 0 answering all along: provider 1's estimate has decayed
        // (50 ms halved ten times is under 100 µs), so it gets a call and a new measurement.
        for second in 2..=21 {
            t[0].load().record(Duration::from_micros(100), s(second));
        }
        assert_eq!(ll.pick(&t, &at(s(21))), 1);
        // Its new answer counts from the decayed estimate, not from the stale 50 ms.
        t[1].load().record(Duration::from_micros(80), s(21));
        assert!(t[1].latency().unwrap() < Duration::from_micros(100));
        assert_eq!(decayed(0, 0, s(100)), 0, "no answer yet stays unknown");
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
