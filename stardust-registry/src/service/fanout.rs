//! Sending the table's changes to subscribers: one publisher task, outside every lock.
//!
//! Registrations and removals only change the table and wake the publisher; they return without
//! waiting for anyone to be told. The publisher takes what changed since its last round
//! ([`Table::collect`](super::table::Table::collect): one job per subscriber group, payloads
//! already encoded once), releases the lock, and copies each payload into its subscribers'
//! write queues. Rounds are at least [`ROUND_GAP`] apart, so a burst of changes is coalesced: a
//! thousand registrations in a second cost each subscriber a few dozen pushes, not a thousand.
//! While rounds keep carrying many changes (a storm: a registry restart's re-registrations, a
//! fleet deploying) the gap doubles up to [`STORM_GAP`]; a round with few changes (single
//! events, however close together) brings it back to [`ROUND_GAP`].
//!
//! A subscriber whose queue already holds more than the bound (`subscriber_queue_bytes`) is
//! not pushed to: it is marked behind and skipped until it has read its queue down to half the
//! bound. Then it is told to resync (or, speaking the first protocol revision, sent the whole
//! list again), once. Nothing is dropped silently, and nobody's backlog grows without bound.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use stardust::discovery::api::{DELTA_TOPIC, DISCOVERY_TOPIC};
use stardust::{EncodedNotification, ErrorKind, Notifier};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use super::table::{Kind, PushJob};
use crate::monitor::FanoutStats;

/// The shortest time between two publishing rounds.
const ROUND_GAP: Duration = Duration::from_millis(10);
/// The longest, reached while rounds keep carrying many changes.
const STORM_GAP: Duration = Duration::from_millis(80);
/// Changes in one round that make it part of a storm.
const STORM_CHANGES: u64 = 64;

pub(super) struct Fanout {
    wake: Notify,
    /// Queued bytes above which a subscriber gets no more pushes until it catches up.
    bound: usize,
    /// Sessions with a task waiting for them to catch up.
    waiting: Mutex<HashSet<u64>>,
    pushes: AtomicU64,
    dropped: AtomicU64,
    resyncs: AtomicU64,
    rounds: AtomicU64,
    expired: AtomicU64,
    peak: AtomicU64,
}

impl Fanout {
    pub(super) fn new(bound: usize) -> Fanout {
        Fanout {
            wake: Notify::new(),
            bound,
            waiting: Mutex::new(HashSet::new()),
            pushes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// The table changed: the publisher looks soon.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn expired(&self, leases: usize) {
        self.expired.fetch_add(leases as u64, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> FanoutStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FanoutStats {
            pushes: get(&self.pushes),
            dropped: get(&self.dropped),
            resyncs: get(&self.resyncs),
            rounds: get(&self.rounds),
            expired: get(&self.expired),
            queue_bound: self.bound as u64,
            queue_peak: get(&self.peak),
        }
    }
}

/// Publishes the table's changes until the node stops.
pub(super) async fn run_publisher(shared: Arc<Shared>) {
    let mut stopping = shared.stopping.clone();
    let mut last = Instant::now() - ROUND_GAP;
    let mut gap = ROUND_GAP;
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = shared.fanout.wake.notified() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        // Coalesce: whatever else changes until the gap has passed rides along.
        tokio::time::sleep_until(last + gap).await;
        last = Instant::now();
        let (jobs, revision) = {
            let mut table = shared.table.lock();
            (table.collect(), table.revision())
        };
        let changes = revision.saturating_sub(seen);
        seen = revision;
        gap = if changes >= STORM_CHANGES {
            (gap * 2).min(STORM_GAP)
        } else {
            ROUND_GAP
        };
        shared.fanout.rounds.fetch_add(1, Ordering::Relaxed);
        send(&shared, jobs, false);
    }
}

/// Sends `jobs` in order; subscribers over their bound are marked behind and watched until
/// they catch up. `resync`: the jobs answer a catch-up (counted as resyncs).
fn send(shared: &Arc<Shared>, jobs: Vec<PushJob<Notifier>>, resync: bool) {
    let fanout = &shared.fanout;
    let mut behind: Vec<(String, String, u64, Notifier)> = Vec::new();
    for job in jobs {
        let delta = job
            .delta
            .map(|p| EncodedNotification::from_payload(DELTA_TOPIC, &p));
        let full = job
            .full
            .map(|p| EncodedNotification::from_payload(DISCOVERY_TOPIC, &p));
        for (session, notifier, kind) in job.to {
            let note = match kind {
                Kind::Delta => delta.as_ref(),
                Kind::Full => full.as_ref(),
            };
            let Some(note) = note else { continue };
            // A catch-up always goes out: it is what ends the subscriber's being behind. So does
            // a push to an empty queue, however large (one push is never "falling behind").
            let queued = notifier.queued_bytes();
            let over = !resync && queued > 0 && queued + note.len() > fanout.bound;
            let result = if over {
                Err(ErrorKind::Overloaded)
            } else {
                notifier.notify_encoded(note).map_err(|e| e.kind())
            };
            match result {
                Ok(()) => {
                    fanout
                        .peak
                        .fetch_max(notifier.queued_bytes() as u64, Ordering::Relaxed);
                    let counter = if resync {
                        &fanout.resyncs
                    } else {
                        &fanout.pushes
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(ErrorKind::Overloaded) => {
                    fanout.dropped.fetch_add(1, Ordering::Relaxed);
                    behind.push((
                        job.service.clone(),
                        job.version_req.clone(),
                        session,
                        notifier.clone(),
                    ));
                }
                // Gone: its session ends (and its subscriptions with it) on its own.
                Err(_) => {}
            }
        }
    }
    if behind.is_empty() {
        return;
    }
    {
        let mut table = shared.table.lock();
        for (service, req, session, _) in &behind {
            table.mark_behind(service, req, *session);
        }
    }
    for (_, _, session, notifier) in behind {
        if fanout.waiting.lock().insert(session) {
            tracing::debug!(peer = %notifier.peer_addr(), "subscriber fell behind; pushes paused until it catches up");
            tokio::spawn(catch_up(shared.clone(), session, notifier));
        }
    }
}

/// Waits for a subscriber that fell behind to read its queue down to half the bound, then
/// tells it to resync.
async fn catch_up(shared: Arc<Shared>, session: u64, notifier: Notifier) {
    let mut stopping = shared.stopping.clone();
    let caught_up = tokio::select! {
        r = notifier.drained(shared.fanout.bound / 2) => r.is_ok(),
        _ = stopping.wait_for(|s| *s) => false,
    };
    shared.fanout.waiting.lock().remove(&session);
    if !caught_up {
        return; // gone: its session ends on its own
    }
    let jobs = shared.table.lock().catch_up(session);
    send(&shared, jobs, true);
}
