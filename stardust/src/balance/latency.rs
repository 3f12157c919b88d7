//! A method's recent latency distribution, for the adaptive hedging delay: a log-linear
//! histogram of atomic counters over two rotating windows, so recording an answer is one atomic
//! add and the percentile is recomputed at most every 100 ms by whoever asks.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Sub-buckets per power of two: values are kept to within 25%.
const SUB: u32 = 4;
/// Buckets cover 1 µs to about 2^40 µs (12 days); larger values land in the last one.
const BUCKETS: usize = (40 * SUB) as usize;
/// How long a window collects before it becomes the previous one (the percentile looks at
/// the current and the previous window: the last 10 to 20 seconds).
const WINDOW_NS: u64 = 10_000_000_000;
/// How often the cached percentile is recomputed.
const REFRESH_NS: u64 = 100_000_000;

/// Latencies of one method's answers, as one `Stardust` handle saw them.
pub(crate) struct LatencyTracker {
    windows: [[AtomicU32; BUCKETS]; 2],
    /// Which window is current (its parity) and when it started: `start_ns << 1 | index`.
    epoch: AtomicU64,
    /// The cached 99th percentile in nanoseconds (0: not enough answers) and when it was
    /// computed.
    p99_ns: AtomicU64,
    computed_ns: AtomicU64,
}

impl std::fmt::Debug for LatencyTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyTracker")
            .field("p99_ns", &self.p99_ns.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn bucket(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let log = 63 - us.leading_zeros(); // >= 2
    let sub = ((us >> (log - 2)) & u64::from(SUB - 1)) as u32;
    (((log - 1) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The largest value (µs) bucket `i` holds.
fn upper(i: usize) -> u64 {
    let i = i as u32;
    if i < SUB {
        return u64::from(i);
    }
    let log = i / SUB + 1;
    let sub = u64::from(i % SUB);
    ((u64::from(SUB) + sub + 1) << (log - 2)) - 1
}

impl Default for LatencyTracker {
    fn default() -> LatencyTracker {
        LatencyTracker::new()
    }
}

impl LatencyTracker {
    pub(crate) fn new() -> LatencyTracker {
        LatencyTracker {
            windows: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
            epoch: AtomicU64::new(0),
            p99_ns: AtomicU64::new(0),
            computed_ns: AtomicU64::new(0),
        }
    }

    /// The current window at `now_ns`, rotating when it is over (the one it replaces is
    /// cleared: it held the window before the previous one).
    fn current(&self, now_ns: u64) -> usize {
        let epoch = self.epoch.load(Ordering::Relaxed);
        let (start, index) = (epoch >> 1, (epoch & 1) as usize);
        if now_ns.saturating_sub(start) < WINDOW_NS {
            return index;
        }
        let next = 1 - index;
        if self
            .epoch
            .compare_exchange(
                epoch,
                (now_ns << 1) | next as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            // A window more than one period old says nothing about now: start afresh.
            let stale = now_ns.saturating_sub(start) >= 2 * WINDOW_NS;
            for (i, c) in self.windows[next].iter().enumerate() {
                c.store(0, Ordering::Relaxed);
                if stale {
                    self.windows[index][i].store(0, Ordering::Relaxed);
                }
            }
        }
        next
    }

    /// Records an answer that took `latency_ns`, received at `now_ns`.
    pub(crate) fn record(&self, latency_ns: u64, now_ns: u64) {
        let w = self.current(now_ns);
        self.windows[w][bucket(latency_ns / 1000)].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th percentile of the last 10 to 20 seconds in nanoseconds, or `None` with fewer
    /// than `min_samples` answers.
    pub(crate) fn p99(&self, now_ns: u64, min_samples: u64) -> Option<u64> {
        let computed = self.computed_ns.load(Ordering::Relaxed);
        if computed != 0 && now_ns.saturating_sub(computed) < REFRESH_NS {
            return match self.p99_ns.load(Ordering::Relaxed) {
                0 => None,
                p => Some(p),
            };
        }
        self.current(now_ns);
        let counts: Vec<u64> = (0..BUCKETS)
            .map(|i| {
                u64::from(self.windows[0][i].load(Ordering::Relaxed))
                    + u64::from(self.windows[1][i].load(Ordering::Relaxed))
            })
            .collect();
        let total: u64 = counts.iter().sum();
        let p99 = if total < min_samples.max(1) {
            0
        } else {
            // The smallest bucket with at least 99% of the answers at or below it.
            let want = total - total / 100;
            let mut seen = 0;
            let i = counts
                .iter()
                .position(|&c| {
                    seen += c;
                    seen >= want
                })
                .unwrap_or(BUCKETS - 1);
            (upper(i) + 1) * 1000
        };
        self.p99_ns.store(p99, Ordering::Relaxed);
        self.computed_ns.store(now_ns.max(1), Ordering::Relaxed);
        (p99 != 0).then_some(p99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            12_345,
            1 << 30,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(upper(b) >= us, "bucket {b} of {us} ends at {}", upper(b));
            if b > 0 {
                assert!(upper(b - 1) < us, "{us} belongs below bucket {b}");
            }
            last = b;
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_percentile_follows_recent_answers() {
        let t = LatencyTracker::new();
        let now = 1_000 * MS;
        assert_eq!(t.p99(now, 100), None, "no answers");
        // 990 answers at 1 ms and 10 at 40 ms: the 99th percentile is about 1 ms.
        for i in 0..1000 {
            t.record(if i % 100 == 0 { 40 * MS } else { MS }, now);
        }
        let p = t.p99(now + REFRESH_NS, 100).unwrap();
        assert!((MS..=MS * 5 / 4 + 1000).contains(&p), "{p}");
        // Cached for 100 ms.
        for _ in 0..1000 {
            t.record(40 * MS, now + REFRESH_NS);
        }
        assert_eq!(t.p99(now + REFRESH_NS + 1, 100), Some(p));
        let p = t.p99(now + 2 * REFRESH_NS, 100).unwrap();
        assert!(p >= 40 * MS, "{p}");
        // Twenty seconds later both windows have rotated out: unknown again.
        assert_eq!(t.p99(now + 25_000 * MS, 100), None);
        // Too few answers: unknown.
        t.record(MS, now + 25_000 * MS);
        assert_eq!(t.p99(now + 26_000 * MS, 100), None);
    }
}
