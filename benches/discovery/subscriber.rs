//! A subscriber session: one connection, logged in, subscribed to one service with `*`, keeping
//! a [`View`] of it up to date from the pushes on `DISCOVERY_TOPIC`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stardust::Notifications;
use stardust::discovery::api::{DISCOVERY_TOPIC, RegistryClient};
use tokio::task::JoinHandle;

use crate::ledger::Ledger;
use crate::probe::Probes;
use crate::view::{FullPush, InstanceRef, View};

pub struct Subscriber {
    index: usize,
    /// The service watched (its number in the shape).
    service: usize,
    client: RegistryClient,
    view: Arc<Mutex<View>>,
    /// The task applying pushes, once subscribed.
    follow: Mutex<Option<JoinHandle<()>>>,
}

/// What every subscriber reports to.
#[derive(Clone)]
pub struct Sinks {
    pub ledger: Arc<Ledger>,
    pub probes: Arc<Probes>,
}

impl Subscriber {
    pub fn new(index: usize, service: usize, client: RegistryClient) -> Subscriber {
        Subscriber {
            index,
            service,
            client,
            view: Arc::default(),
            follow: Mutex::new(None),
        }
    }

    pub fn service(&self) -> usize {
        self.service
    }

    /// Subscribes to `name` (this subscriber's service) and follows its pushes from then on;
    /// returns how long the subscribe call took.
    pub async fn subscribe(&self, name: String, sinks: Sinks) -> Result<Duration, String> {
        // Before the call: a push sent right after the reply must not be missed. Pushes that
        // arrive before the reply is read are newer than it and applied after it.
        let notifications = self.client.client().notifications();
        let start = Instant::now();
        let list = match self.client.subscribe(name.clone(), "*".into()).await {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => return Err(format!("subscribe {name}: {e}")),
            Err(e) => return Err(format!("subscribe {name}: {e}")),
        };
        let took = start.elapsed();
        {
            let mut view = self.view.lock();
            view.apply_full(list.iter().map(InstanceRef::from), |k| {
                sinks.ledger.left_a_view(k)
            });
        }
        *self.follow.lock() = Some(tokio::spawn(follow(
            self.index,
            self.service,
            name,
            notifications,
            self.view.clone(),
            sinks,
        )));
        Ok(took)
    }

    /// Whether this subscriber's view is `expected`.
    pub fn shows(&self, expected: &View) -> bool {
        *self.view.lock() == *expected
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(f) = self.follow.get_mut().take() {
            f.abort();
        }
    }
}

/// Applies every push for `name` to `view`, then lets the probe under way look at it.
async fn follow(
    index: usize,
    service: usize,
    name: String,
    mut notifications: Notifications,
    view: Arc<Mutex<View>>,
    sinks: Sinks,
) {
    while let Some(n) = notifications.recv().await {
        if n.topic() != DISCOVERY_TOPIC {
            continue;
        }
        let push = match FullPush::decode(n.payload()) {
            Ok(push) => push,
            Err(e) => {
                Ledger::count(&sinks.ledger.bad_pushes);
                sinks.ledger.error(e);
                continue;
            }
        };
        if push.service != name {
            continue;
        }
        let mut view = view.lock();
        view.apply_full(push.instances, |k| sinks.ledger.left_a_view(k));
        sinks.probes.check(index, service, &view);
    }
}
