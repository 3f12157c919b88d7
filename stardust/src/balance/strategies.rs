//! The strategies that ship with Stardust: round robin, weighted random, least loaded (the
//! default) and consistent hashing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{Balancer, Pick, Target};

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
pub(crate) fn weighted_index(weights: &[u32], r: u64) -> usize {
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
/// estimate`, where the estimate is the latency EWMA, or, while the provider holds calls without
/// answering, how long it has been silent if that is longer. A provider that slows down or
/// stalls accumulates calls in flight and silence, and quickly stops being chosen, without any single provider being flooded by every caller at once. The
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

/// The costs of two providers, `(in flight + 1) × latency estimate` (the EWMA, decayed while a
/// provider gets no calls, and at least the time it has held calls without answering; see
/// `Load::estimate`). A provider that has not
/// answered yet is given the other's latency (so a new provider gets tried), but while it has a
/// call in flight it loses to any provider that has answered: it takes one call at a time until
/// its first answer, and one whose calls never come back stops being chosen.
fn costs(a: &Target, b: &Target, now_ns: u64) -> (u128, u128) {
    let unproven = |t: &Target| t.load().ewma_ns() == 0 && t.in_flight() > 0;
    match (unproven(a), unproven(b)) {
        (true, false) => return (u128::MAX, 0),
        (false, true) => return (0, u128::MAX),
        _ => {}
    }
    let (la, lb) = match (a.load().estimate(now_ns), b.load().estimate(now_ns)) {
        (0, 0) => (1, 1),
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
pub(crate) fn rendezvous(endpoints: &[&str], key: u64) -> usize {
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
    use std::time::Duration;

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
            t[0].load().record(Duration::from_micros(100), 0);
            t[1].load().record(Duration::from_micros(100), 0);
            t[2].load().record(Duration::from_millis(50), 0);
        }
        let _busy: Vec<_> = (0..10).map(|_| t[1].load().start(0)).collect();
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
    }

    #[test]
    fn least_loaded_moves_away_from_a_provider_that_stops_answering() {
        let t = targets(2);
        let ms = 1_000_000u64;
        for _ in 0..5 {
            t[0].load().record(Duration::from_millis(1), 0);
            t[1].load().record(Duration::from_millis(1), 0);
        }
        // Provider 1 takes four calls at 10 ms and answers none of them.
        let _stuck: Vec<_> = (0..4).map(|_| t[1].load().start(10 * ms)).collect();
        let ll = LeastLoaded::with_seed(5);
        let at = |now_ns| Pick {
            hash_key: None,
            now_ns,
        };
        assert!((0..100).all(|_| ll.pick(&t, &at(210 * ms)) == 0));
        // Twenty seconds on, still silent: more expensive than ever (a decaying estimate made
        // it as cheap as a healthy provider after about ten seconds).
        assert!((0..100).all(|_| ll.pick(&t, &at(20_000 * ms)) == 0));
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
