//! Busy polling: waiting for a reply that is about to arrive without letting the thread sleep.
//!
//! On this kind of machine the expensive part of a small call's round trip is not the network
//! stack (a loopback round trip's syscalls cost ~2 µs) but waking a sleeping thread (~28 µs on a
//! VM, an inter-processor interrupt through the hypervisor), once on each side. A connection
//! that expects bytes within a few tens of microseconds can instead keep its worker thread awake:
//! its read loop yields to the scheduler (other tasks run; the worker polls the I/O driver
//! without blocking between yields) until the bytes are there or a budget runs out, and only
//! then lets the worker sleep.
//!
//! The policy is adaptive so that a slow peer costs nothing: a spin that ends without bytes is a
//! miss, and each miss in a row doubles the number of waits that skip spinning (up to 1023), so a
//! connection whose replies take milliseconds spins on about one wait in a thousand. One caught
//! reply resets it.

use std::time::Duration;

/// Misses in a row after which the skip count stops doubling (2^10 − 1 waits skipped).
const MAX_MISSES: u32 = 10;

/// One connection's busy-poll state: its budget and how it has fared.
#[derive(Debug, Clone)]
pub(crate) struct BusyPoll {
    budget: Duration,
    misses: u32,
    /// Waits left that sleep at once after the last miss.
    skip: u32,
}

impl BusyPoll {
    /// A policy spinning for up to `budget` per wait (`Duration::ZERO`: never).
    pub(crate) fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            misses: 0,
            skip: 0,
        }
    }

    /// How long the next wait may spin, or `None` to sleep at once.
    pub(crate) fn next_spin(&mut self) -> Option<Duration> {
        if self.budget.is_zero() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some(self.budget)
    }

    /// Records how a spin ended: `caught` when the bytes came within the budget.
    pub(crate) fn record(&mut self, caught: bool) {
        if caught {
            self.misses = 0;
        } else {
            self.misses = (self.misses + 1).min(MAX_MISSES);
            self.skip = (1 << self.misses) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_budget_never_spins() {
        let mut p = BusyPoll::new(Duration::ZERO);
        assert_eq!(p.next_spin(), None);
        p.record(true);
        assert_eq!(p.next_spin(), None);
    }

    #[test]
    fn misses_back_off_exponentially_and_a_catch_resets() {
        let budget = Duration::from_micros(50);
        let mut p = BusyPoll::new(budget);
        assert_eq!(p.next_spin(), Some(budget));
        // Count the waits that skip spinning after each miss in a row.
        let mut skipped = Vec::new();
        for _ in 0..12 {
            p.record(false);
            let mut n = 0;
            while p.next_spin().is_none() {
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(
            skipped,
            [1, 3, 7, 15, 31, 63, 127, 255, 511, 1023, 1023, 1023]
        );
        p.record(true);
        assert_eq!(p.next_spin(), Some(budget));
        assert_eq!(p.next_spin(), Some(budget), "a caught reply keeps spinning");
        p.record(false);
        assert_eq!(p.next_spin(), None, "one miss skips one wait");
        assert_eq!(p.next_spin(), Some(budget));
    }
}
