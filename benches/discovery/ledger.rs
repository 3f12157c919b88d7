//! What the bench believes is registered, and everything that went wrong against it: the
//! counters of correctness that must stay at zero (lease expiries of live providers, instances
//! vanishing from views without the bench removing them), and heartbeat latencies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::view::EndpointKey;

/// Shared by every session of one shape.
#[derive(Default)]
pub struct Ledger {
    /// Instances registered by the bench and not yet deregistered or crashed.
    live: Mutex<HashSet<EndpointKey>>,
    /// Live instances some subscriber saw leave its view (each counted once).
    vanished: Mutex<HashSet<EndpointKey>>,
    /// Heartbeats refused because the session's registrations expired.
    pub expiries: AtomicU64,
    /// Heartbeats refused because the connection was no longer logged in (the registry closed
    /// it, the client reconnected anonymously).
    pub sessions_lost: AtomicU64,
    /// Heartbeats that failed otherwise (deadline, connection closed).
    pub heartbeat_errors: AtomicU64,
    /// Instances registered again after an expiry or a lost session, as a real provider does.
    pub reregistered: AtomicU64,
    /// Pushes that could not be decoded.
    pub bad_pushes: AtomicU64,
    /// Gaps in a subscriber's deltas, or resync demands, repaired by asking again.
    pub resyncs: AtomicU64,
    /// Heartbeat round trips, in microseconds.
    heartbeats_us: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Ledger {
    /// The bench is about to register this instance.
    pub fn registering(&self, key: EndpointKey) {
        self.live.lock().insert(key);
    }

    /// The bench is about to deregister this instance, or to close its session.
    pub fn removing(&self, key: EndpointKey) {
        self.live.lock().remove(&key);
    }

    /// A subscriber's view lost this instance: fine if the bench removed it, a vanished instance
    /// (its lease expired, or its session was lost) if not.
    pub fn left_a_view(&self, key: EndpointKey) {
        if self.live.lock().contains(&key) {
            self.vanished.lock().insert(key);
        }
    }

    /// Instances the bench has registered and not removed.
    pub fn live(&self) -> usize {
        self.live.lock().len()
    }

    pub fn vanished(&self) -> usize {
        self.vanished.lock().len()
    }

    pub fn heartbeat_took(&self, took: Duration) {
        self.heartbeats_us.lock().push(took.as_micros() as u64);
    }

    /// Heartbeat round trips so far, in microseconds.
    pub fn heartbeats_us(&self) -> Vec<u64> {
        self.heartbeats_us.lock().clone()
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Keeps the first unexpected error of the shape, for the report.
    pub fn error(&self, what: String) {
        let mut first = self.first_error.lock();
        if first.is_none() {
            eprintln!("discovery bench: first error: {what}");
            *first = Some(what);
        }
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().clone()
    }
}
