//! Call figures of one method (or of one provider as a consumer sees it): completed calls with
//! their latency, failures by kind, calls started. Recorded on the call path, read once per
//! status report as the figures of the window since the previous one.
//!
//! Recording costs one uncontended lock of a shard picked by thread (so the runtime's worker
//! threads never fight over one lock) plus one histogram increment; failures add one atomic.
//! Nothing allocates after the first call a thread records.
//!
//! Each window also keeps two *exemplars*, calls an operator can look up in a trace UI: the
//! slowest call and the latest failure among the calls that carried a sampled trace. Keeping
//! them costs one comparison per call (and, per failure, one more atomic).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use crate::error::ErrorKind;
use crate::protocol::registry::{ErrorCount, Exemplar, LATENCY_BOUNDS_US, Latency};

/// Shards per figure set: enough for the worker threads of a typical runtime to rarely share.
const SHARDS: usize = 4;
/// Error codes counted separately; higher codes (from newer peers) count as the last one.
const CODES: usize = 24;
/// Longest latency told apart (60 s); slower calls count as this.
const MAX_US: u64 = 60_000_000;

/// Picks a shard per thread, round robin over the threads that record.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

fn new_histogram() -> Histogram<u32> {
    // Two significant digits (1% precision) from 1 µs to a minute: about 10 KiB.
    Histogram::new_with_bounds(1, MAX_US, 2).expect("valid histogram bounds")
}

#[derive(Default)]
struct Shard {
    /// Created on the first call this shard records.
    latency: Option<Histogram<u32>>,
    sum_us: u64,
    /// The slowest call with a trace: (microseconds, trace id); trace id 0 = none yet.
    slowest: (u64, u128),
    /// The latest failure with a trace: (failure number, microseconds, code, trace id).
    failed: Option<(u64, u64, u16, u128)>,
}

/// One completed call, as [`Figures::completed_many`] counts it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completed {
    pub(crate) elapsed: Duration,
    pub(crate) error: Option<ErrorKind>,
    /// The W3C trace id of a call whose trace is sampled, else 0 (the call cannot be an
    /// exemplar).
    pub(crate) trace_id: u128,
}

/// The figures of one method (provider side) or one provider's service (consumer side).
pub(crate) struct Figures {
    shards: [Mutex<Shard>; SHARDS],
    errors: [AtomicU64; CODES],
    /// Calls running as tasks of their own (a call that completes inline is never counted:
    /// it is not in flight at any moment a report could see).
    running: AtomicU64,
    /// Stream items received from and sent to callers by streams that ended in the window.
    items_in: AtomicU64,
    items_out: AtomicU64,
    /// Numbers failures with a trace, so the window's latest one is found across shards.
    failures: AtomicU64,
}

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            shards: Default::default(),
            errors: Default::default(),
            running: AtomicU64::new(0),
            items_in: AtomicU64::new(0),
            items_out: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Figures")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a window held: see [`Figures::take_window`].
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Window {
    pub(crate) calls: u64,
    pub(crate) errors: Vec<ErrorCount>,
    pub(crate) in_flight: u64,
    pub(crate) latency: Latency,
    /// Stream items received and sent by the streams that ended in the window.
    pub(crate) items_in: u64,
    pub(crate) items_out: u64,
    /// The window's slowest call with a sampled trace.
    pub(crate) slowest: Option<Exemplar>,
    /// The window's latest failed call with a sampled trace.
    pub(crate) failed: Option<Exemplar>,
}

impl Figures {
    /// A call became a task of its own (it is in flight until [`Figures::finished`]).
    pub(crate) fn running(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// A call counted by [`Figures::running`] completed.
    pub(crate) fn finished(&self, call: Completed) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.completed_many(std::iter::once(call));
    }

    /// A streaming call ended having received `items_in` items and sent `items_out`.
    pub(crate) fn stream_items(&self, items_in: u64, items_out: u64) {
        self.items_in.fetch_add(items_in, Ordering::Relaxed);
        self.items_out.fetch_add(items_out, Ordering::Relaxed);
    }

    /// A call without a trace completed after `elapsed`, failing with `error` if it failed.
    pub(crate) fn completed(&self, elapsed: Duration, error: Option<ErrorKind>) {
        self.completed_many(std::iter::once(Completed {
            elapsed,
            error,
            trace_id: 0,
        }));
    }

    /// Several calls completed (one lock for all of them).
    pub(crate) fn completed_many(&self, calls: impl IntoIterator<Item = Completed>) {
        let mut shard = self.shards[shard_index()].lock();
        let shard = &mut *shard;
        let latency = shard.latency.get_or_insert_with(new_histogram);
        for call in calls {
            let us = u64::try_from(call.elapsed.as_micros()).unwrap_or(u64::MAX);
            if let Some(kind) = call.error {
                let code = (kind.code() as usize).min(CODES - 1);
                self.errors[code].fetch_add(1, Ordering::Relaxed);
                if call.trace_id != 0 {
                    let n = self.failures.fetch_add(1, Ordering::Relaxed);
                    shard.failed = Some((n, us, kind.code(), call.trace_id));
                }
            }
            // `>=`: of equally slow calls the latest is kept, as for failures.
            if call.trace_id != 0 && us >= shard.slowest.0 {
                shard.slowest = (us, call.trace_id);
            }
            shard.sum_us = shard.sum_us.saturating_add(us);
            latency.saturating_record(us.clamp(1, MAX_US));
        }
    }

    /// The figures since the previous call (the window), resetting them for the next one.
    pub(crate) fn take_window(&self) -> Window {
        let mut merged: Option<Histogram<u32>> = None;
        let mut sum_us = 0u64;
        let mut slowest = (0u64, 0u128);
        let mut failed: Option<(u64, u64, u16, u128)> = None;
        for shard in &self.shards {
            let mut shard = shard.lock();
            sum_us = sum_us.saturating_add(std::mem::take(&mut shard.sum_us));
            let s = std::mem::take(&mut shard.slowest);
            if s.1 != 0 && (slowest.1 == 0 || s.0 > slowest.0) {
                slowest = s;
            }
            if let Some(f) = shard.failed.take()
                && failed.is_none_or(|g| f.0 > g.0)
            {
                failed = Some(f);
            }
            let Some(h) = shard.latency.as_mut() else {
                continue;
            };
            if h.is_empty() {
                continue;
            }
            match merged.as_mut() {
                Some(m) => {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = m.add(&*h);
                }
                None => merged = Some(h.clone()),
            }
            h.reset();
        }
        let errors = self
            .errors
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let count = n.swap(0, Ordering::Relaxed);
                (count > 0).then_some(ErrorCount {
                    code: code as u16,
                    count,
                })
            })
            .collect();
        let calls = merged.as_ref().map_or(0, |h| h.len());
        // Decremented by a call that may finish between the increment and our read: never
        // report that as a huge number.
        let running = self.running.load(Ordering::Relaxed);
        let in_flight = if running > u64::MAX / 2 { 0 } else { running };
        Window {
            calls,
            errors,
            in_flight,
            latency: merged.map_or_else(Latency::default, |h| summarize(&h, sum_us)),
            items_in: self.items_in.swap(0, Ordering::Relaxed),
            items_out: self.items_out.swap(0, Ordering::Relaxed),
            slowest: (slowest.1 != 0).then(|| exemplar(slowest.1, slowest.0, None)),
            failed: failed.map(|(_, us, code, trace)| exemplar(trace, us, Some(code))),
        }
    }
}

fn exemplar(trace_id: u128, latency_us: u64, error: Option<u16>) -> Exemplar {
    Exemplar {
        trace_id: format!("{trace_id:032x}"),
        latency_us,
        error,
    }
}

/// The report form of a window's histogram.
fn summarize(h: &Histogram<u32>, sum_us: u64) -> Latency {
    let mut buckets = vec![0u64; LATENCY_BOUNDS_US.len() + 1];
    for v in h.iter_recorded() {
        // Each recorded value stands for a range 1% wide; it is placed by its low end.
        let value = h.lowest_equivalent(v.value_iterated_to());
        let i = LATENCY_BOUNDS_US.partition_point(|&bound| bound < value);
        buckets[i] += v.count_since_last_iteration();
    }
    Latency {
        buckets,
        sum_us,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        max_us: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(us: u64, error: Option<ErrorKind>, trace_id: u128) -> Completed {
        Completed {
            elapsed: Duration::from_micros(us),
            error,
            trace_id,
        }
    }

    #[test]
    fn windows_count_every_call_once_with_errors_and_buckets() {
        let f = Figures::default();
        assert_eq!(f.take_window(), Window::default());
        f.running();
        f.running();
        f.completed_many((0..8u64).map(|i| done(40 + i, None, 0)));
        f.finished(done(3000, Some(ErrorKind::DeadlineExceeded), 0));
        let w = f.take_window();
        assert_eq!(w.calls, 9);
        assert_eq!(w.in_flight, 1);
        assert_eq!(
            w.errors,
            vec![ErrorCount {
                code: ErrorKind::DeadlineExceeded.code(),
                count: 1
            }]
        );
        assert_eq!(w.latency.buckets.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(w.latency.buckets.iter().sum::<u64>(), 9);
        assert_eq!(w.latency.buckets[1], 8, "40-47 µs fall in the 50 µs bucket");
        assert_eq!(w.latency.buckets[7], 1, "3 ms falls in the 5 ms bucket");
        assert_eq!(w.latency.sum_us, (40..48).sum::<u64>() + 3000);
        assert!((40..=48).contains(&w.latency.p50_us), "{:?}", w.latency);
        assert!(w.latency.max_us >= 3000 && w.latency.max_us <= 3030);

        // The next window starts empty; the call still running is still counted as such.
        let w = f.take_window();
        assert_eq!((w.calls, w.in_flight), (0, 1));
        assert!(w.errors.is_empty() && w.latency.buckets.is_empty());
        f.finished(done(100_000_000, None, 0));
        let w = f.take_window();
        assert_eq!((w.calls, w.in_flight), (1, 0));
        assert_eq!(*w.latency.buckets.last().unwrap(), 1, "overflow bucket");
    }

    #[test]
    fn threads_recording_at_once_lose_nothing() {
        let f = std::sync::Arc::new(Figures::default());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..5000u64 {
                        f.running();
                        let err = (i % 100 == 0).then_some(ErrorKind::Overloaded);
                        f.finished(done(t * 100 + i % 50, err, 0));
                    }
                })
            })
            .collect();
        let mut calls = 0;
        let mut errors = 0;
        for t in threads {
            // Windows taken while recording go on must still add up.
            let w = f.take_window();
            calls += w.calls;
            errors += w.errors.iter().map(|e| e.count).sum::<u64>();
            t.join().unwrap();
        }
        let w = f.take_window();
        calls += w.calls;
        errors += w.errors.iter().map(|e| e.count).sum::<u64>();
        assert_eq!(calls, 30_000);
        assert_eq!(errors, 300);
        assert_eq!(w.in_flight, 0);
    }

    #[test]
    fn a_window_keeps_its_slowest_and_latest_failed_traced_calls() {
        let f = Figures::default();
        // Calls without a sampled trace are never exemplars, however slow or failed.
        f.completed_many([
            done(900, None, 0),
            done(50, None, 7),
            done(300, Some(ErrorKind::Internal), 0),
        ]);
        let w = f.take_window();
        let slowest = w.slowest.expect("a traced call");
        assert_eq!(slowest.trace_id, format!("{:032x}", 7));
        assert_eq!((slowest.latency_us, slowest.error), (50, None));
        assert_eq!(w.failed, None);

        // From two threads (two shards): the slowest overall, the failure recorded last.
        let id = 0x4bf92f3577b34da6a3ce929d0e0e4736u128;
        f.completed_many([done(120, None, 1), done(80, Some(ErrorKind::Overloaded), 2)]);
        let f = std::sync::Arc::new(f);
        let g = f.clone();
        std::thread::spawn(move || {
            g.completed_many([
                done(700, None, id),
                done(10, Some(ErrorKind::UnknownMethod), 3),
            ])
        })
        .join()
        .unwrap();
        let w = f.take_window();
        let slowest = w.slowest.unwrap();
        assert_eq!(slowest.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(slowest.latency_us, 700);
        let failed = w.failed.unwrap();
        assert_eq!(failed.trace_id, format!("{:032x}", 3));
        assert_eq!(
            (failed.latency_us, failed.error),
            (10, Some(ErrorKind::UnknownMethod.code()))
        );
        // The next window starts without exemplars.
        let w = f.take_window();
        assert_eq!((w.slowest, w.failed), (None, None));
    }
}
