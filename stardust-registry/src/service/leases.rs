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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Session, Shared};

/// What the heap needs of a session: the deadline its heartbeats move, and whether it is queued.
pub(super) trait Leased {
    /// When its leases expire without a heartbeat, in milliseconds of the lease clock.
    fn expires(&self) -> &AtomicU64;
    /// Whether it has an entry in the heap.
    fn tracked(&self) -> &AtomicBool;
}

impl Leased for Session {
    fn expires(&self) -> &AtomicU64 {
        &self.expires
    }
    fn tracked(&self) -> &AtomicBool {
        &self.tracked
    }
}

struct Entry<S> {
    at: u64,
    session: Weak<S>,
}

impl<S> PartialEq for Entry<S> {
    fn eq(&self, other: &Entry<S>) -> bool {
        self.at == other.at
    }
}
impl<S> Eq for Entry<S> {}
impl<S> PartialOrd for Entry<S> {
    fn partial_cmp(&self, other: &Entry<S>) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for Entry<S> {
    fn cmp(&self, other: &Entry<S>) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// The deadlines of sessions holding leases (generic over the session so the unit tests can
/// queue plain values).
pub(super) struct Deadlines<S = Session> {
    /// The lease clock's zero.
    base: Instant,
    heap: Mutex<BinaryHeap<Reverse<Entry<S>>>>,
    /// Wakes the sweeper when an entry is pushed (it may be sleeping with nothing to expire).
    wake: Notify,
}

impl<S: Leased> Deadlines<S> {
    pub(super) fn new() -> Deadlines<S> {
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
    pub(super) fn renew(&self, session: &S, ttl: Duration) {
        let at = self.ms(Instant::now() + ttl);
        session.expires().fetch_max(at, Ordering::Relaxed);
    }

    /// Renews `session` and makes sure the sweeper watches it (it holds a lease now).
    pub(super) fn track(&self, session: &Arc<S>, ttl: Duration) {
        self.renew(session, ttl);
        if !session.tracked().swap(true, Ordering::AcqRel) {
            let at = session.expires().load(Ordering::Relaxed);
            self.heap.lock().push(Reverse(Entry {
                at,
                session: Arc::downgrade(session),
            }));
            self.wake.notify_one();
        }
    }

    /// Pops the sessions whose deadline passed at `now` (re-queueing those renewed meanwhile);
    /// returns them and when the next deadline is.
    fn due(&self, now: Instant) -> (Vec<Arc<S>>, Option<Instant>) {
        let now_ms = self.ms(now);
        let mut due = Vec::new();
        let mut heap = self.heap.lock();
        while heap.peek().is_some_and(|e| e.0.at <= now_ms) {
            let Reverse(entry) = heap.pop().expect("peeked");
            let Some(session) = entry.session.upgrade() else {
                continue; // ended: nothing left to expire
            };
            let at = session.expires().load(Ordering::Relaxed);
            if at > now_ms {
                heap.push(Reverse(Entry {
                    at,
                    session: entry.session,
                }));
            } else {
                session.tracked().store(false, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A session as the heap sees it.
    #[derive(Default)]
    struct Fake {
        expires: AtomicU64,
        tracked: AtomicBool,
    }

    impl Leased for Fake {
        fn expires(&self) -> &AtomicU64 {
            &self.expires
        }
        fn tracked(&self) -> &AtomicBool {
            &self.tracked
        }
    }

    // Lease TTLs of hours, judged at whole hours: the few real milliseconds the test itself
    // takes between calls never decide anything.
    const HOUR: Duration = Duration::from_secs(3600);

    fn heap_len(d: &Deadlines<Fake>) -> usize {
        d.heap.lock().len()
    }

    #[test]
    fn a_renewed_session_is_queued_again_at_its_new_deadline() {
        let d = Deadlines::<Fake>::new();
        let s = Arc::new(Fake::default());
        d.track(&s, HOUR);
        assert!(s.tracked.load(Ordering::Relaxed));
        // A heartbeat: one atomic store, the heap keeps the old deadline.
        d.renew(&s, 2 * HOUR);
        assert_eq!(heap_len(&d), 1);

        // Past the first deadline: not due, queued again at the renewed one.
        let (due, next) = d.due(d.base + 3 * HOUR / 2);
        assert!(due.is_empty());
        assert_eq!(heap_len(&d), 1);
        let renewed = d.base + Duration::from_millis(s.expires.load(Ordering::Relaxed));
        assert_eq!(next, Some(renewed));
        assert!(renewed >= d.base + 2 * HOUR);
        assert!(s.tracked.load(Ordering::Relaxed), "still watched");

        // Past that one: due, and off the heap until it holds a lease again.
        let (due, next) = d.due(d.base + 3 * HOUR);
        assert_eq!(due.len(), 1);
        assert!(Arc::ptr_eq(&due[0], &s));
        assert_eq!(next, None);
        assert!(!s.tracked.load(Ordering::Relaxed));
        d.track(&s, 4 * HOUR);
        assert_eq!(heap_len(&d), 1, "tracked again by its next registration");
    }

    #[test]
    fn a_session_is_queued_once_however_often_it_registers() {
        let d = Deadlines::<Fake>::new();
        let s = Arc::new(Fake::default());
        for _ in 0..5 {
            d.track(&s, HOUR);
        }
        assert_eq!(heap_len(&d), 1);
        let (due, _) = d.due(d.base + 2 * HOUR);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn renewing_never_moves_a_deadline_earlier() {
        let d = Deadlines::<Fake>::new();
        let s = Arc::new(Fake::default());
        d.track(&s, HOUR);
        d.renew(&s, 3 * HOUR);
        // A renewal computed earlier that lands later (two heartbeats racing) changes nothing.
        d.renew(&s, 2 * HOUR);
        let (due, next) = d.due(d.base + 5 * HOUR / 2);
        assert!(due.is_empty(), "the later deadline holds");
        assert!(next.is_some_and(|at| at >= d.base + 3 * HOUR));
    }

    #[test]
    fn ended_sessions_are_dropped_without_being_expired() {
        let d = Deadlines::<Fake>::new();
        let ended = Arc::new(Fake::default());
        let live = Arc::new(Fake::default());
        d.track(&ended, HOUR);
        d.track(&live, 3 * HOUR);
        drop(ended);
        // The ended session's entry goes; the live one is still queued, not yet due.
        let (due, next) = d.due(d.base + 2 * HOUR);
        assert!(due.is_empty());
        assert_eq!(heap_len(&d), 1);
        assert!(next.is_some_and(|at| at >= d.base + 3 * HOUR));
    }
}
