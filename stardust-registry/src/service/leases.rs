//! Lease expiry (memory store): a heartbeat is one atomic store, and expiry comes from a heap of
//! deadlines, never from a scan of every lease.
//!
//! A session's leases share one deadline (every heartbeat renews them all), kept in the session
//! itself as milliseconds on the node's lease clock. The heap holds at most one entry per
//! session with leases, keyed by the deadline that entry was pushed with. When the sweeper pops
//! an entry whose session was renewed meanwhile, it pushes it again with the new deadline: so a
//! heartbeat never touches the heap (or any lock but the session lookup), and the sweeper does
//! O(log n) work per session per lease TTL.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Session, Shared};

struct Entry {
    at: u64,
    session: Weak<Session>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// The deadlines of sessions holding leases.
pub(super) struct Deadlines {
    /// The lease clock's zero.
    base: Instant,
    heap: Mutex<BinaryHeap<Reverse<Entry>>>,
    /// Wakes the sweeper when an entry is pushed (it may be sleeping with nothing to expire).
    wake: Notify,
}

impl Deadlines {
    pub(super) fn new() -> Deadlines {
        Deadlines {
            base: Instant::now(),
            heap: Mutex::new(BinaryHeap::new()),
            wake: Notify::new(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }

    /// Renews `session`'s leases for `ttl` from now: one atomic store.
    pub(super) fn renew(&self, session: &Session, ttl: Duration) {
        let at = self.ms(Instant::now() + ttl);
        session.expires.fetch_max(at, Ordering::Relaxed);
    }

    /// Renews `session` and makes sure the sweeper watches it (it holds a lease now).
    pub(super) fn track(&self, session: &Arc<Session>, ttl: Duration) {
        self.renew(session, ttl);
        if !session.tracked.swap(true, Ordering::AcqRel) {
            let at = session.expires.load(Ordering::Relaxed);
            self.heap.lock().push(Reverse(Entry {
                at,
                session: Arc::downgrade(session),
            }));
            self.wake.notify_one();
        }
    }

    /// Pops the sessions whose deadline passed at `now` (re-queueing those renewed meanwhile);
    /// returns them and when the next deadline is.
    fn due(&self, now: Instant) -> (Vec<Arc<Session>>, Option<Instant>) {
        let now_ms = self.ms(now);
        let mut due = Vec::new();
        let mut heap = self.heap.lock();
        while heap.peek().is_some_and(|e| e.0.at <= now_ms) {
            let Reverse(entry) = heap.pop().expect("peeked");
            let Some(session) = entry.session.upgrade() else {
                continue; // ended: nothing left to expire
            };
            let at = session.expires.load(Ordering::Relaxed);
            if at > now_ms {
                heap.push(Reverse(Entry {
                    at,
                    session: entry.session,
                }));
            } else {
                session.tracked.store(false, Ordering::Release);
                due.push(session);
            }
        }
        let next = heap
            .peek()
            .map(|e| self.base + Duration::from_millis(e.0.at));
        (due, next)
    }
}

/// Expires leases whose session stopped heartbeating, until the node stops.
pub(super) async fn run_sweeper(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    loop {
        let wake = shared.deadlines.wake.notified();
        let (due, next) = shared.deadlines.due(Instant::now());
        for session in due {
            shared.expire(&session);
        }
        tokio::select! {
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = wake => {}
            // Shutdown, or the node was dropped (the sender with it).
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

impl Shared {
    /// `session` missed its lease TTL: its leases go, and its next heartbeat is refused.
    fn expire(&self, session: &Session) {
        let now = std::time::Instant::now();
        let removed = {
            let mut table = self.table.lock();
            let removed = table.remove_leases_of(session.id);
            for lease in &removed {
                let i = &lease.instance;
                tracing::info!(service = ?i.service, endpoint = ?i.endpoint, app = ?i.app, "registration expired (no heartbeat within the lease TTL)");
                self.monitor.removed(&i.service, &i.endpoint, now);
            }
            removed.len()
        };
        if removed > 0 {
            self.fanout.expired(removed);
            if !session.ended.load(Ordering::SeqCst) {
                session.lease_expired.store(true, Ordering::SeqCst);
            }
            self.fanout.wake();
        }
    }
}
