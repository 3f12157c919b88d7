//! One provider's load as this process sees it: calls in flight, a latency average, and whether
//! it has stopped answering (a *stall*: calls outstanding and no answer for a while).
//!
//! Everything is a relaxed atomic: the record is read on every pick and written on every call,
//! by every caller task, and a slightly stale value only makes one choice slightly worse.
//! Times are [`clock_ns`] nanoseconds.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::policy::{Outliers, StallDetection};

/// One provider's load as seen by this process, shared by every proxy of a `Stardust` handle.
#[derive(Debug, Default)]
pub(crate) struct Load {
    in_flight: AtomicU32,
    /// Latency EWMA in nanoseconds; 0 until the first answer.
    ewma_ns: AtomicU64,
    /// When the last latency was folded in.
    sampled_ns: AtomicU64,
    /// When `in_flight` last went from 0 to 1.
    busy_since_ns: AtomicU64,
    /// When the provider last answered anything (a result or an error it sent): progress.
    answered_ns: AtomicU64,
    /// Time the provider spent holding calls without answering in busy periods that ended
    /// since its last answer (tries given up on: hedged elsewhere, or past their deadline).
    /// Without it, a stalled provider whose tries are all hedged away would look idle again
    /// after each one, and its silence would never add up to a stall.
    silent_ns: AtomicU64,
    /// Provider faults in a row (see [`Outliers`]).
    failures: AtomicU32,
    /// Ejected until this time; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Since when the provider is suspected of hanging; 0 when it is not. Sticky: only an
    /// answer clears it (calls that expire unanswered leave the provider suspect).
    suspect_since: AtomicU64,
    /// While suspect: when the next probe call may go there.
    next_probe_ns: AtomicU64,
}

/// Weight of a new sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;
/// An idle provider's latency estimate halves for every this many nanoseconds without an answer
/// (2 s): a provider that was slow once and then lost every draw would otherwise keep its bad
/// estimate forever; decayed, it soon wins a draw and gets measured again. Only while it has
/// nothing in flight: a provider sitting on calls is not "unmeasured", it is not answering.
const EWMA_HALF_LIFE_NS: u64 = 2_000_000_000;

/// How stale the "last answered" and "last sampled" times may get (250 µs): every answer
/// writing them would make the provider's record a cache line that all callers on all cores
/// fight over, and the times are compared with stall thresholds of milliseconds and a decay
/// half-life of seconds.
const COARSE_NS: u64 = 250_000;

/// Sets a "last time" to `now_ns` unless it is already within [`COARSE_NS`] of it (a load,
/// and a store only when it moves; racing stores all write about now).
fn store_coarse(at: &AtomicU64, now_ns: u64) {
    if now_ns.saturating_sub(at.load(Ordering::Relaxed)) >= COARSE_NS {
        at.fetch_max(now_ns, Ordering::Relaxed);
    }
}

/// `ewma` as it counts at `now_ns` when its last sample was at `sampled_ns`.
pub(super) fn decayed(ewma: u64, sampled_ns: u64, now_ns: u64) -> u64 {
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

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl Load {
    /// Calls in flight.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency average, undecayed (0 before the first answer).
    pub(crate) fn ewma_ns(&self) -> u64 {
        self.ewma_ns.load(Ordering::Relaxed)
    }

    /// Whether the provider is ejected at `now_ns`.
    pub(crate) fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ns
    }

    /// The provider answered: it is healthy again (for outlier ejection).
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
        let until = now_ns.saturating_add(ns(policy.ejection));
        self.ejected_until.store(until, Ordering::Relaxed);
        true
    }

    /// Counts a call in flight (from `now_ns`) until the returned guard drops. Returns whether
    /// the provider had nothing in flight before.
    pub(crate) fn start(self: &Arc<Load>, now_ns: u64) -> (InFlight, bool) {
        let was_idle = self.count_start(now_ns);
        (
            InFlight {
                load: self.clone(),
                finished: false,
            },
            was_idle,
        )
    }

    /// [`start`](Self::start) for a call that ends while the record is borrowed (a unary
    /// call holding its provider list): no reference count to update.
    pub(crate) fn start_borrowed(&self, now_ns: u64) -> (InFlight<&Load>, bool) {
        let was_idle = self.count_start(now_ns);
        (
            InFlight {
                load: self,
                finished: false,
            },
            was_idle,
        )
    }

    fn count_start(&self, now_ns: u64) -> bool {
        let was_idle = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        if was_idle {
            self.busy_since_ns.store(now_ns, Ordering::Relaxed);
        }
        was_idle
    }

    /// The provider answered at `now_ns` (anything it sent: a result or an error). Returns
    /// whether this cleared a suspicion of hanging.
    pub(crate) fn answered(&self, now_ns: u64) -> bool {
        store_coarse(&self.answered_ns, now_ns);
        if self.silent_ns.load(Ordering::Relaxed) != 0 {
            self.silent_ns.store(0, Ordering::Relaxed);
        }
        self.suspect_since.load(Ordering::Relaxed) != 0
            && self.suspect_since.swap(0, Ordering::Relaxed) != 0
    }

    /// Folds an answer's latency, received at `now_ns`, into the average.
    pub(crate) fn record(&self, latency: Duration, now_ns: u64) {
        let sample = ns(latency).max(1);
        let sampled = self.sampled_ns.load(Ordering::Relaxed);
        store_coarse(&self.sampled_ns, now_ns);
        // A load and a store, not a compare-and-swap loop: two answers folded at the same
        // moment may lose one sample, which an average does not miss, while every caller
        // retrying a contended atomic would cost each call far more.
        let old = self.ewma_ns.load(Ordering::Relaxed);
        let new = match decayed(old, sampled, now_ns) {
            0 => sample,
            old => ((old as f64) * (1.0 - EWMA_ALPHA) + (sample as f64) * EWMA_ALPHA) as u64,
        };
        self.ewma_ns.store(new.max(1), Ordering::Relaxed);
    }

    /// The silence of the current busy period at `now_ns`: how long the provider has held
    /// calls since it last answered or became busy (0 while it has nothing in flight).
    fn busy_silence(&self, now_ns: u64) -> u64 {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let since = self
            .busy_since_ns
            .load(Ordering::Relaxed)
            .max(self.answered_ns.load(Ordering::Relaxed));
        now_ns.saturating_sub(since)
    }

    /// How long, in total, the provider has held calls without answering any since its last
    /// answer: the busy periods that ended unanswered, plus the current one. Idle time between
    /// them does not count (nobody was waiting for the provider then).
    pub(crate) fn stalled_for(&self, now_ns: u64) -> u64 {
        self.silent_ns
            .load(Ordering::Relaxed)
            .saturating_add(self.busy_silence(now_ns))
    }

    /// The latency estimate as it counts at `now_ns`: the average, decayed while the provider
    /// gets no calls; while it holds calls, at least the age of its silence (how long it has
    /// held calls without answering). A provider that stops answering gets more expensive the
    /// longer it is silent, never cheaper. Tries already given up on do not count here (they
    /// count toward suspicion, [`Load::stalled_for`]): a provider that lost a hedge race keeps
    /// being tried, so it either answers (and is cleared) or adds to the silence that makes it
    /// suspect, instead of being starved by its cost with nobody left to find out.
    pub(crate) fn estimate(&self, now_ns: u64) -> u64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            return decayed(ewma, self.sampled_ns.load(Ordering::Relaxed), now_ns);
        }
        ewma.max(self.busy_silence(now_ns))
    }

    /// The stall past which the provider is suspect: `multiple × latency average`, at least the
    /// policy's floor.
    pub(crate) fn stall_threshold(&self, policy: &StallDetection) -> u64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        ns(policy.min_stall).max(ewma.saturating_mul(u64::from(policy.latency_multiple)))
    }

    /// Whether the provider is suspected of hanging.
    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect_since.load(Ordering::Relaxed) != 0
    }

    /// How long the provider has been suspect at `now_ns` (`None` when it is not).
    pub(crate) fn suspect_for(&self, now_ns: u64) -> Option<u64> {
        match self.suspect_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(now_ns.saturating_sub(since)),
        }
    }

    /// Checks for a stall at `now_ns`; returns how long the provider has been silent when this
    /// check made it suspect (only the first to notice gets it, to log and count it once).
    pub(crate) fn check_stall(&self, policy: &StallDetection, now_ns: u64) -> Option<u64> {
        if !policy.enabled || self.is_suspect() {
            return None;
        }
        let stalled = self.stalled_for(now_ns);
        if stalled <= self.stall_threshold(policy) {
            return None;
        }
        self.suspect(policy, now_ns).then_some(stalled)
    }

    /// Marks the provider suspect (a stall, or a ping it left unanswered); returns whether it
    /// was not already. Its first probe may go one probe interval from now.
    pub(crate) fn suspect(&self, policy: &StallDetection, now_ns: u64) -> bool {
        let fresh = self
            .suspect_since
            .compare_exchange(0, now_ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if fresh {
            self.next_probe_ns.store(
                now_ns.saturating_add(ns(policy.probe_interval)),
                Ordering::Relaxed,
            );
        }
        fresh
    }

    /// When the next probe may go to this suspect provider.
    pub(crate) fn next_probe_ns(&self) -> u64 {
        self.next_probe_ns.load(Ordering::Relaxed)
    }

    /// Claims the probe due at `now_ns`, if it is due and nobody took it: the caller sends one
    /// call there, and the next probe waits another interval.
    pub(crate) fn claim_probe(&self, policy: &StallDetection, now_ns: u64) -> bool {
        let due = self.next_probe_ns.load(Ordering::Relaxed);
        due <= now_ns
            && self
                .next_probe_ns
                .compare_exchange(
                    due,
                    now_ns.saturating_add(ns(policy.probe_interval)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// A call in flight on a provider (see [`Load::start`]). Ended with [`InFlight::finish`] when
/// the framework knows the time (the try was answered, failed, or was given up on); simply
/// dropped when the caller dropped the call, which says nothing about the provider.
pub(crate) struct InFlight<L: Deref<Target = Load> = Arc<Load>> {
    load: L,
    finished: bool,
}

impl<L: Deref<Target = Load>> InFlight<L> {
    /// The try ended at `now_ns` (after any answer was recorded with [`Load::answered`]). When
    /// it was the last one in flight, the busy period's unanswered time adds to the provider's
    /// silence.
    pub(crate) fn finish(mut self, now_ns: u64) {
        self.finished = true;
        let load = &self.load;
        let silence = load.busy_silence(now_ns);
        if load.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 && silence > 0 {
            load.silent_ns.fetch_add(silence, Ordering::Relaxed);
        }
    }
}

impl<L: Deref<Target = Load>> Drop for InFlight<L> {
    fn drop(&mut self) {
        if !self.finished {
            self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn outliers_are_ejected_then_probed_back_in() {
        let policy = Outliers {
            consecutive: 3,
            ejection: Duration::from_secs(10),
        };
        let load = Load::default();
        assert!(!load.failed(&policy, SEC));
        load.succeeded();
        assert!(!load.failed(&policy, SEC));
        assert!(!load.failed(&policy, SEC));
        assert!(load.failed(&policy, SEC), "third fault in a row");
        assert!(load.is_ejected(5 * SEC));
        assert!(!load.is_ejected(11 * SEC), "back in after the ejection");
        // The probe fails: out again at once.
        assert!(load.failed(&policy, 11 * SEC));
        assert!(load.is_ejected(12 * SEC));
        // The next probe answers: healthy, three faults needed again.
        load.succeeded();
        assert!(!load.failed(&policy, 30 * SEC));
        assert!(!load.failed(&policy, 30 * SEC));
        assert!(load.failed(&policy, 30 * SEC));
    }

    #[test]
    fn a_silent_provider_gets_more_expensive_never_cheaper() {
        let load = Arc::new(Load::default());
        load.record(Duration::from_millis(1), SEC);
        load.answered(SEC);
        // Idle: the estimate decays (it is not being measured).
        assert_eq!(load.estimate(SEC), MS);
        assert_eq!(load.estimate(5 * SEC), MS / 4);
        // Calls go out at 5 s and nothing comes back: the estimate is the silence, growing.
        let (_call, idle) = load.start(5 * SEC);
        assert!(idle);
        let mut last = 0;
        for t in [
            5 * SEC + MS,
            5 * SEC + 100 * MS,
            6 * SEC,
            15 * SEC,
            60 * SEC,
        ] {
            let e = load.estimate(t);
            assert!(
                e >= last && e >= MS,
                "estimate {e} at {t} fell below {last}"
            );
            last = e;
        }
        assert_eq!(load.estimate(60 * SEC), 55 * SEC);
        // An answer is progress: the silence counts from it.
        load.answered(60 * SEC);
        assert_eq!(load.stalled_for(60 * SEC + MS), MS);
    }

    #[test]
    fn silence_adds_up_over_tries_given_up_on_but_not_over_idle_time() {
        let policy = StallDetection::default();
        let load = Arc::new(Load::default());
        load.record(Duration::from_millis(1), SEC);
        load.answered(SEC);
        // Ten tries of 10 ms each, every one hedged away unanswered, with idle gaps between.
        for i in 0..10 {
            let t = 2 * SEC + i * 100 * MS;
            let (call, _) = load.start(t);
            assert_eq!(load.check_stall(&policy, t + 10 * MS).is_some(), i == 5);
            call.finish(t + 10 * MS);
            assert_eq!(
                load.stalled_for(t + 50 * MS),
                (i + 1) * 10 * MS,
                "gaps do not count"
            );
        }
        // While idle it costs its (decayed) average: it gets tried again, and each unanswered
        // try adds to the silence that makes it suspect.
        assert_eq!(load.estimate(4 * SEC), MS / 2);
        // A call the caller dropped says nothing.
        let (dropped, _) = load.start(5 * SEC);
        drop(dropped);
        assert_eq!(load.stalled_for(6 * SEC), 100 * MS);
        // An answer wipes the slate.
        let (call, _) = load.start(7 * SEC);
        load.answered(7 * SEC + MS);
        call.finish(7 * SEC + MS);
        assert_eq!(load.stalled_for(8 * SEC), 0);
        assert!(!load.is_suspect());
    }

    #[test]
    fn a_stall_makes_the_provider_suspect_until_it_answers() {
        let policy = StallDetection::default();
        let load = Arc::new(Load::default());
        for _ in 0..10 {
            load.record(Duration::from_millis(2), SEC);
        }
        // Threshold: max(10 × 2 ms, 50 ms) = 50 ms; then 10 × the average once that is larger.
        assert_eq!(load.stall_threshold(&policy), 50 * MS);
        let (call, _) = load.start(SEC);
        assert_eq!(load.check_stall(&policy, SEC + 40 * MS), None);
        assert_eq!(load.check_stall(&policy, SEC + 60 * MS), Some(60 * MS));
        assert!(load.is_suspect());
        assert_eq!(
            load.check_stall(&policy, SEC + 70 * MS),
            None,
            "reported once"
        );
        // The stuck call expires: nothing in flight, but the provider stays suspect.
        drop(call);
        assert!(load.is_suspect());
        // One probe per interval (1 s), the first one interval after the suspicion.
        assert!(!load.claim_probe(&policy, SEC + 500 * MS));
        assert!(load.claim_probe(&policy, 2 * SEC + 60 * MS));
        assert!(
            !load.claim_probe(&policy, 2 * SEC + 61 * MS),
            "one per interval"
        );
        assert!(load.claim_probe(&policy, 3 * SEC + 60 * MS));
        // The probe answers: no longer suspect.
        assert!(load.answered(3 * SEC + 70 * MS));
        assert!(!load.is_suspect());
        assert!(!load.answered(3 * SEC + 80 * MS), "cleared once");
        // Slow providers get a proportionally longer threshold.
        let slow = Arc::new(Load::default());
        slow.record(Duration::from_millis(30), SEC);
        assert_eq!(slow.stall_threshold(&policy), 300 * MS);
        // Detection off: never suspect.
        let off = StallDetection::off();
        let (_c, _) = slow.start(SEC);
        assert_eq!(slow.check_stall(&off, 100 * SEC), None);
    }

    #[test]
    fn decay_leaves_the_unknown_unknown() {
        assert_eq!(decayed(0, 0, 100 * SEC), 0);
        assert_eq!(decayed(8, 0, 4 * SEC), 2);
    }
}
