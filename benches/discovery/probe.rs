//! Push latency: a [`Probe`] describes a change the bench is making (instances that must appear
//! in, or vanish from, the views of their service's subscribers) and records, per subscriber,
//! when its view first showed it. The clock starts when the probe is made, right before the
//! register/deregister call or the close that causes the change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::shape::Shape;
use crate::view::{EndpointKey, View};

const UNSEEN: u64 = u64::MAX;

/// One change, and who has seen it.
pub struct Probe {
    start: Instant,
    /// The changing endpoints, by service.
    wants: HashMap<usize, Vec<EndpointKey>>,
    /// `true`: they must appear; `false`: vanish.
    present: bool,
    /// Per subscriber: nanoseconds from `start` to its view showing the change.
    seen: Vec<AtomicU64>,
    /// Per subscriber: how many of its service's endpoints its view already showed changed, in
    /// order. A burst of 1,000 registrations is checked after each of up to 1,000 pushes per
    /// subscriber; resuming where the last check stopped keeps that linear.
    cursors: Vec<AtomicUsize>,
    /// Subscribers of the changing services that have not seen it yet.
    remaining: AtomicUsize,
    all_seen: Notify,
}

impl Probe {
    /// Starts the clock on a change of `endpoints` (each with its service).
    pub fn start(
        shape: &Shape,
        endpoints: impl IntoIterator<Item = (usize, EndpointKey)>,
        present: bool,
    ) -> Arc<Probe> {
        let mut wants: HashMap<usize, Vec<EndpointKey>> = HashMap::new();
        for (service, key) in endpoints {
            wants.entry(service).or_default().push(key);
        }
        let watchers = wants.keys().map(|&s| shape.watchers_of(s)).sum();
        Arc::new(Probe {
            start: Instant::now(),
            wants,
            present,
            seen: (0..shape.subscribers)
                .map(|_| AtomicU64::new(UNSEEN))
                .collect(),
            cursors: (0..shape.subscribers)
                .map(|_| AtomicUsize::new(0))
                .collect(),
            remaining: AtomicUsize::new(watchers),
            all_seen: Notify::new(),
        })
    }

    /// When the clock started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Subscriber `subscriber` (watching `service`) now has `view`: records the time if that
    /// shows the change for the first time.
    fn check(&self, subscriber: usize, service: usize, view: &View) {
        let Some(keys) = self.wants.get(&service) else {
            return;
        };
        let slot = &self.seen[subscriber];
        if slot.load(Ordering::Relaxed) != UNSEEN {
            return;
        }
        // Only this subscriber's task touches its cursor.
        let cursor = &self.cursors[subscriber];
        let shows = |k: &EndpointKey| view.contains(*k) == self.present;
        let mut i = cursor.load(Ordering::Relaxed);
        while i < keys.len() && shows(&keys[i]) {
            i += 1;
        }
        cursor.store(i, Ordering::Relaxed);
        if i < keys.len() {
            return;
        }
        // Every endpoint passed once; one may have changed back since (an expiry): check all.
        if let Some(back) = keys.iter().position(|k| !shows(k)) {
            cursor.store(back, Ordering::Relaxed);
            return;
        }
        let ns = self.start.elapsed().as_nanos() as u64;
        if slot
            .compare_exchange(UNSEEN, ns, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        {
            self.all_seen.notify_one();
        }
    }

    /// Waits until every subscriber of the changing services saw it (`true`), or `deadline`
    /// passes, or `stop` resolves (`false`).
    pub async fn wait(
        &self,
        deadline: tokio::time::Instant,
        stop: impl Future<Output = ()>,
    ) -> bool {
        tokio::pin!(stop);
        loop {
            if self.remaining.load(Ordering::Acquire) == 0 {
                return true;
            }
            tokio::select! {
                _ = self.all_seen.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.remaining.load(Ordering::Acquire) == 0;
                }
                _ = &mut stop => return false,
            }
        }
    }

    /// The latencies seen, and how many subscribers of the changing services never saw it.
    pub fn outcome(&self) -> (Vec<Duration>, usize) {
        let seen: Vec<Duration> = self
            .seen
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&ns| ns != UNSEEN)
            .map(Duration::from_nanos)
            .collect();
        (seen, self.remaining.load(Ordering::Acquire))
    }
}

/// Where subscribers find the probe under way (one at a time).
#[derive(Default)]
pub struct Probes {
    current: Mutex<Option<Arc<Probe>>>,
}

impl Probes {
    pub fn install(&self, probe: Arc<Probe>) {
        *self.current.lock() = Some(probe);
    }

    pub fn clear(&self) {
        self.current.lock().take();
    }

    /// Called by a subscriber after every change of its view.
    pub fn check(&self, subscriber: usize, service: usize, view: &View) {
        let probe = self.current.lock().clone();
        if let Some(p) = probe {
            p.check(subscriber, service, view);
        }
    }
}
