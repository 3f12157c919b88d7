//! The pool's watchdog: one task per `Stardust` handle that, every 5 ms while balanced calls are
//! in flight, looks for providers that stopped answering (a stall), wakes the calls whose hedge
//! is due, and (every second while idle) looks for keepalive pings left unanswered.
//!
//! Why a watchdog and not a timer per call: arming and dropping a tokio timer costs more than
//! the rest of a call's client side (measured at about 650 ns here), and a stall must be noticed
//! even when every caller is stuck on the stalled provider and nobody picks again. One task
//! scanning the busy connections costs the same however many calls there are, and nothing on
//! the call path: a call only writes its hedge time into the pending-call slot it takes anyway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Pool, Slot};
use crate::balance::{Load, clock_ns};

/// How often the watchdog looks while calls are in flight (the resolution of hedging delays
/// and stall detection).
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// How often it looks while nothing is in flight (for unanswered pings).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// A ping unanswered this long (or for the stall threshold, if that is longer) makes the
/// provider suspect: a pong needs no handler, so a second is already very late.
const PING_SUSPECT: Duration = Duration::from_secs(1);

/// The watchdog's state in the pool.
#[derive(Default)]
pub(super) struct Handle {
    started: AtomicBool,
    /// The watchdog rests (nothing was in flight): a call starting on an idle provider wakes it.
    resting: AtomicBool,
    wake: Arc<Notify>,
}

/// Why a provider became suspect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Suspicion {
    /// It held calls and answered none for this long.
    Stall(Duration),
    /// Its connection left a ping unanswered for this long.
    Ping(Duration),
}

impl Pool {
    /// A balanced call is about to start (`was_idle`: its provider had nothing in flight):
    /// starts the watchdog on first use, and wakes it if it rests.
    pub(crate) fn watch(self: &Arc<Self>, was_idle: bool) {
        let w = &self.watchdog;
        if !w.started.load(Ordering::Relaxed) {
            if !w.started.swap(true, Ordering::SeqCst) {
                tokio::spawn(run(Arc::downgrade(self), w.wake.clone()));
            }
        } else if was_idle && w.resting.load(Ordering::SeqCst) {
            w.wake.notify_one();
        }
    }

    /// Logs that `endpoint` became suspect and counts it as a fault for outlier ejection.
    pub(crate) fn suspected(&self, endpoint: &str, load: &Load, why: Suspicion, now_ns: u64) {
        let (reason, silent) = match why {
            Suspicion::Stall(d) => ("held calls without answering", d),
            Suspicion::Ping(d) => ("left a keepalive ping unanswered", d),
        };
        tracing::warn!(
            endpoint,
            silent_ms = silent.as_millis() as u64,
            probe_interval_ms = self.policy.stalls.probe_interval.as_millis() as u64,
            "provider {reason}: suspected hung; only probe calls go there until it answers"
        );
        load.failed(&self.policy.outliers, now_ns);
    }

    /// One look at every provider; returns whether any has calls in flight.
    fn round(&self, slots: &mut Vec<Arc<Slot>>, wakers: &mut Vec<Waker>, pings: bool) -> bool {
        slots.clear();
        // Only providers with something to look at: calls in flight, a suspicion (its probe
        // time), or, once a second, a connection whose ping may be unanswered. A fleet of idle
        // providers costs a few loads each per round, not a reference count.
        slots.extend(
            self.slots
                .lock()
                .values()
                .filter(|s| pings || s.load.in_flight() > 0 || s.load.is_suspect())
                .cloned(),
        );
        let now = Instant::now();
        let now_ns = clock_ns(now.into());
        let stalls = &self.policy.stalls;
        let ejection = self.policy.outliers.ejection.as_nanos() as u64;
        let mut busy = false;
        let (mut due_retryable, mut due_any) = (u64::MAX, u64::MAX);
        for slot in slots.drain(..) {
            let load = &slot.load;
            let conn = slot.conn.lock().clone();
            if load.in_flight() > 0 {
                busy = true;
                if let Some(silent) = load.check_stall(stalls, now_ns) {
                    let silent = Duration::from_nanos(silent);
                    self.suspected(&slot.endpoint, load, Suspicion::Stall(silent), now_ns);
                }
                if let Some(conn) = &conn {
                    conn.wake_due_hedges(now, wakers);
                }
            }
            if pings
                && stalls.enabled
                && !load.is_suspect()
                && let Some(waited) = conn.as_ref().and_then(|c| c.live.unanswered_ping())
                && waited > Duration::from_nanos(load.stall_threshold(stalls)).max(PING_SUSPECT)
                && load.suspect(stalls, now_ns)
            {
                self.suspected(&slot.endpoint, load, Suspicion::Ping(waited), now_ns);
            }
            if let Some(for_ns) = load.suspect_for(now_ns) {
                let next = load.next_probe_ns();
                due_retryable = due_retryable.min(next);
                // Calls that may not run twice probe only a provider suspect for longer than
                // the ejection time.
                let since = now_ns - for_ns;
                due_any = due_any.min(next.max(since.saturating_add(ejection)));
            }
        }
        self.set_probe_due(due_retryable, due_any);
        busy
    }
}

async fn run(pool: Weak<Pool>, wake: Arc<Notify>) {
    let mut slots = Vec::new();
    let mut wakers = Vec::new();
    let mut pinged = Instant::now();
    loop {
        let Some(p) = pool.upgrade() else { return };
        let pings = pinged.elapsed() >= IDLE_TICK;
        if pings {
            pinged = Instant::now();
        }
        let busy = p.round(&mut slots, &mut wakers, pings);
        if busy {
            drop(p);
            tokio::time::sleep(TICK).await;
            continue;
        }
        // Rest until a call starts on an idle provider. Announce it first, then look once
        // more, so a call that started meanwhile is seen (or its nudge leaves a permit).
        p.watchdog.resting.store(true, Ordering::SeqCst);
        if p.round(&mut slots, &mut wakers, false) {
            p.watchdog.resting.store(false, Ordering::SeqCst);
            continue;
        }
        drop(p);
        let _ = tokio::time::timeout(IDLE_TICK, wake.notified()).await;
        if let Some(p) = pool.upgrade() {
            p.watchdog.resting.store(false, Ordering::SeqCst);
        }
    }
}
