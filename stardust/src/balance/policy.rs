//! How a `Stardust` handle's balanced calls retry, eject, suspect and hedge: the settings, and
//! the retry budget they all draw from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::clock_ns;

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
    /// How long the floor takes to earn a thousandth of a token (rounded down): a refill asked
    /// for sooner than that after the last one has nothing to add, and says so without
    /// arithmetic (the common case: every call deposits).
    ns_per_milli: u64,
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
            ns_per_milli: 1_000_000_000u64
                .checked_div(floor_milli)
                .unwrap_or(u64::MAX),
            // Starts with one second of the floor.
            tokens: AtomicU64::new(floor_milli),
            refilled_ns: AtomicU64::new(clock_ns(std::time::Instant::now())),
        }
    }

    fn add(&self, milli: u64) {
        // Full (the steady state while nothing fails): a load, and no write to a counter every
        // call of every task would otherwise fight over.
        if milli > 0 && self.tokens.load(Ordering::Relaxed) < self.cap_milli {
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
        if now_ns.saturating_sub(last) < self.ns_per_milli {
            return;
        }
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
    /// `now_ns` is [`clock_ns`]'s time (the call's start, which the caller has at hand).
    pub(crate) fn deposit(&self, now_ns: u64) {
        self.add(self.share_milli);
        self.refill(now_ns);
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

/// Hung-provider detection of a `Stardust` handle's balanced calls
/// ([`StardustBuilder::stall_detection`](crate::StardustBuilder::stall_detection)).
///
/// A provider that holds calls and answers none of them for longer than
/// `max(latency_multiple × its latency average, min_stall)` (default `max(10 × average, 50 ms)`),
/// or leaves a keepalive ping unanswered for as long (and at least a second), is *suspect* at
/// once: every strategy stops choosing it, and one probe call per `probe_interval` (default
/// 1 s) tests it. Nothing else goes there until a probe (or any late answer) comes back.
///
/// Probes are calls that may be sent twice (idempotent methods, or
/// [`Client::retry_lost_calls`](crate::Client::retry_lost_calls)), so a probe that finds the
/// provider still stuck is hedged or retried elsewhere. A provider suspect for longer than the
/// outlier ejection time (10 s by default) is also probed with other calls, one per interval, so
/// a service whose calls may never be repeated gets a provider back that recovered; such a probe
/// fails if the provider is still stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallDetection {
    pub(crate) enabled: bool,
    pub(crate) latency_multiple: u32,
    pub(crate) min_stall: Duration,
    pub(crate) probe_interval: Duration,
}

impl Default for StallDetection {
    fn default() -> StallDetection {
        StallDetection {
            enabled: true,
            latency_multiple: 10,
            min_stall: Duration::from_millis(50),
            probe_interval: Duration::from_secs(1),
        }
    }
}

impl StallDetection {
    /// No hung-provider detection: providers that stop answering are only avoided by the load
    /// they accumulate, and only dropped when the registry drops them.
    pub fn off() -> StallDetection {
        StallDetection {
            enabled: false,
            ..StallDetection::default()
        }
    }

    /// A provider is suspect after `multiple ×` its latency average without an answer (default
    /// 10; at least [`min_stall`](Self::min_stall)).
    pub fn latency_multiple(self, multiple: u32) -> StallDetection {
        StallDetection {
            latency_multiple: multiple.max(1),
            ..self
        }
    }

    /// The shortest silence that makes a provider suspect (default 50 ms).
    pub fn min_stall(self, min: Duration) -> StallDetection {
        StallDetection {
            min_stall: min,
            ..self
        }
    }

    /// How often a suspect provider gets one probe call (default 1 s).
    pub fn probe_interval(self, every: Duration) -> StallDetection {
        StallDetection {
            probe_interval: every.max(Duration::from_millis(1)),
            ..self
        }
    }
}

/// Hedging of calls that may be sent twice ([`StardustBuilder::hedging`],
/// [`StardustBuilder::method_hedging`], [`Client::with_hedging`]): a try that has not answered
/// within the hedging delay gets a second try on another provider; the first answer wins and the
/// other try is cancelled (the provider is told to stop). Each extra try spends a token of the
/// retry budget, so a cluster that is slow everywhere is not sent twice the traffic.
///
/// Only calls that may safely run twice are hedged: methods marked `#[stardust(idempotent)]`,
/// and every call of a [`Client::retry_lost_calls`] handle. The default is
/// [`Hedging::adaptive`]. A hedge is sent within about 5 ms after its delay (a watchdog checks
/// waiting calls every 5 ms instead of arming a timer per call, which would cost more than the
/// call), and only to a provider this process already has a connection to.
///
/// [`StardustBuilder::hedging`]: crate::StardustBuilder::hedging
/// [`StardustBuilder::method_hedging`]: crate::StardustBuilder::method_hedging
/// [`Client::with_hedging`]: crate::Client::with_hedging
/// [`Client::retry_lost_calls`]: crate::Client::retry_lost_calls
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hedging {
    pub(crate) delay: HedgeDelay,
    pub(crate) max_extra: u8,
}

/// When a try gets a hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HedgeDelay {
    Off,
    Fixed(Duration),
    /// The method's recent 99th percentile, at least `min`; `initial` until enough answers
    /// were seen to know it.
    Adaptive {
        min: Duration,
        initial: Duration,
    },
}

/// Answers a method needs before its percentile is trusted for the hedging delay.
pub(crate) const HEDGE_MIN_SAMPLES: u64 = 100;

impl Default for Hedging {
    fn default() -> Hedging {
        Hedging::adaptive()
    }
}

impl Hedging {
    /// No hedging: a try waits for its answer or the call's deadline.
    pub fn off() -> Hedging {
        Hedging {
            delay: HedgeDelay::Off,
            max_extra: 0,
        }
    }

    /// A fixed per-try timeout: a try unanswered after `delay` gets a hedge.
    pub fn after(delay: Duration) -> Hedging {
        Hedging {
            delay: HedgeDelay::Fixed(delay),
            max_extra: 1,
        }
    }

    /// The default: a try gets a hedge once it has waited longer than the method's 99th
    /// percentile latency as this handle saw it over the last 10 to 20 seconds, and at least
    /// 5 ms; until a method has 100 answers, after 50 ms. About one call in a hundred is
    /// hedged while all is well.
    pub fn adaptive() -> Hedging {
        Hedging {
            delay: HedgeDelay::Adaptive {
                min: Duration::from_millis(5),
                initial: Duration::from_millis(50),
            },
            max_extra: 1,
        }
    }

    /// The shortest adaptive delay (default 5 ms); for [`Hedging::after`], the delay.
    pub fn at_least(self, min: Duration) -> Hedging {
        let delay = match self.delay {
            HedgeDelay::Off => HedgeDelay::Off,
            HedgeDelay::Fixed(d) => HedgeDelay::Fixed(d.max(min)),
            HedgeDelay::Adaptive { initial, .. } => HedgeDelay::Adaptive {
                min,
                initial: initial.max(min),
            },
        };
        Hedging { delay, ..self }
    }

    /// How many extra tries one call may have in flight (default 1, at most 3); each waits
    /// another delay after the previous one.
    pub fn max_extra_tries(self, n: u8) -> Hedging {
        Hedging {
            max_extra: n.min(3),
            ..self
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        self.delay == HedgeDelay::Off || self.max_extra == 0
    }
}

/// How a `Stardust` handle's balanced clients retry, eject, suspect and hedge: shared by all
/// its proxies.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    pub(crate) budget: RetryBudget,
    pub(crate) outliers: Outliers,
    /// The hedging of calls that may be sent twice, unless set for their method.
    pub(crate) hedging: Hedging,
    /// Per (service, method) hedging (a handful at most: looked up by a scan).
    pub(crate) method_hedging: Vec<(Box<str>, Box<str>, Hedging)>,
    /// Hung-provider detection.
    pub(crate) stalls: StallDetection,
}

impl Policy {
    /// The hedging of `service.method` under this policy.
    pub(crate) fn hedging_of(&self, service: &str, method: &str) -> Hedging {
        if self.method_hedging.is_empty() {
            return self.hedging;
        }
        self.method_hedging
            .iter()
            .find(|(s, m, _)| **s == *service && **m == *method)
            .map_or(self.hedging, |(_, _, h)| *h)
    }
}

/// Whether an error counts against the provider for outlier ejection: it could not be reached,
/// lost the connection, refused the call, failed inside, or let the call's deadline pass (a
/// provider that stops answering is as much at fault as one that fails).
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
            | DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            budget.deposit(clock_ns(t0));
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
        none.deposit(clock_ns(t2));
        assert!(!none.withdraw(t2 + Duration::from_secs(60)));
    }
}
