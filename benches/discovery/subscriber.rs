//! A subscriber session: one connection, logged in, subscribed to one service with `*`, keeping
//! a [`View`] of it up to date from the registry's pushes: revisioned deltas on `DELTA_TOPIC`
//! (`watch`) when the registry announces them, whole lists on `DISCOVERY_TOPIC` (`subscribe`)
//! otherwise or with `STARDUST_DISCOVERY_PROTOCOL=full`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stardust::Notifications;
use stardust::discovery::api::{
    DELTA_TOPIC, DISCOVERY_TOPIC, FEATURE_DELTA, RegistryClient, Revision, WatchReply,
};
use tokio::task::JoinHandle;

use crate::ledger::Ledger;
use crate::probe::Probes;
use crate::session::Session;
use crate::view::{DeltaPush, FullPush, InstanceRef, View, decode_list};

/// Whether this run follows revisioned deltas where the registry offers them.
fn deltas_wanted() -> bool {
    std::env::var("STARDUST_DISCOVERY_PROTOCOL").as_deref() != Ok("full")
}

pub struct Subscriber {
    index: usize,
    /// The service watched (its number in the shape).
    service: usize,
    client: RegistryClient,
    /// The access token of its login, to resume with after a registry restart.
    token: String,
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
    pub fn new(index: usize, service: usize, session: Session) -> Subscriber {
        Subscriber {
            index,
            service,
            client: session.client,
            token: session.token,
            view: Arc::default(),
            follow: Mutex::new(None),
        }
    }

    /// The protocol this subscriber follows.
    pub fn protocol(&self) -> &'static str {
        if deltas_wanted() && self.client.client().peer_features().has(FEATURE_DELTA) {
            "revisioned deltas (watch)"
        } else {
            "whole lists (subscribe)"
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn service(&self) -> usize {
        self.service
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Stops following pushes and forgets the view, without counting anything as having left
    /// it: the registry is about to die, and the view will be rebuilt (by a new subscriber
    /// session) from the restarted registry, which knows nothing of the old one's revisions.
    pub async fn halt(&self) {
        let follow = self.follow.lock().take();
        if let Some(f) = follow {
            f.abort();
            let _ = f.await;
        }
        *self.view.lock() = View::default();
    }

    /// Subscribes to `name` (this subscriber's service) and follows its pushes from then on;
    /// returns how long the subscribe call took.
    pub async fn subscribe(&self, name: String, sinks: Sinks) -> Result<Duration, String> {
        if self.protocol().starts_with("revisioned") {
            return self.watch(name, sinks).await;
        }
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
            // The answer may complete a change under way (a restart's rebuilt views do).
            sinks.probes.check(self.index, self.service, &view);
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

    /// Subscribes with `watch`: a snapshot, then deltas.
    async fn watch(&self, name: String, sinks: Sinks) -> Result<Duration, String> {
        let notifications = self.client.client().notifications();
        let start = Instant::now();
        let at = Arc::new(Mutex::new(None));
        ask(&self.client, &name, &self.view, &at, &sinks).await?;
        let took = start.elapsed();
        // The snapshot may complete a change under way (a restart's rebuilt views do).
        sinks
            .probes
            .check(self.index, self.service, &self.view.lock());
        *self.follow.lock() = Some(tokio::spawn(follow_deltas(
            (self.index, self.service),
            self.client.clone(),
            name,
            notifications,
            (self.view.clone(), at),
            sinks,
        )));
        Ok(took)
    }

    /// How this subscriber's view differs from `expected` (missing, extra, changed).
    pub fn diff(&self, expected: &View) -> (usize, usize, usize) {
        self.view.lock().diff(expected)
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

/// Brings `view` up to date with a `watch` call naming the revision held (`at`).
async fn ask(
    client: &RegistryClient,
    name: &str,
    view: &Mutex<View>,
    at: &Mutex<Option<Revision>>,
    sinks: &Sinks,
) -> Result<(), String> {
    let known = *at.lock();
    let reply = match client.watch(name.to_owned(), "*".into(), known).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(format!("watch {name}: {e}")),
        Err(e) => return Err(format!("watch {name}: {e}")),
    };
    let mut view = view.lock();
    let mut at = at.lock();
    match reply {
        WatchReply::Unchanged { .. } => {}
        WatchReply::Delta(d) => {
            view.apply_delta(
                d.upserted.iter().map(InstanceRef::from),
                &d.removed.iter().map(String::as_str).collect::<Vec<_>>(),
                |k| sinks.ledger.left_a_view(k),
            );
            *at = Some(Revision {
                epoch: d.epoch,
                rev: d.to,
            });
        }
        WatchReply::Snapshot { at: now, instances } => {
            let list = decode_list(instances.encoded())?;
            view.apply_full(list, |k| sinks.ledger.left_a_view(k));
            *at = Some(now);
        }
    }
    Ok(())
}

/// Applies every delta for `name` to `view`, asking again on a gap or a resync demand.
async fn follow_deltas(
    (index, service): (usize, usize),
    client: RegistryClient,
    name: String,
    mut notifications: Notifications,
    (view, at): (Arc<Mutex<View>>, Arc<Mutex<Option<Revision>>>),
    sinks: Sinks,
) {
    while let Some(n) = notifications.recv().await {
        if n.topic() != DELTA_TOPIC {
            continue;
        }
        let push = match DeltaPush::decode(n.payload()) {
            Ok(push) => push,
            Err(e) => {
                Ledger::count(&sinks.ledger.bad_pushes);
                sinks.ledger.error(e);
                continue;
            }
        };
        if push.service() != name {
            continue;
        }
        let gap = {
            let mut view = view.lock();
            let mut at = at.lock();
            match (push, *at) {
                (DeltaPush::Delta(d), Some(held))
                    if d.epoch == held.epoch && d.from == held.rev =>
                {
                    view.apply_delta(d.upserted, &d.removed, |k| sinks.ledger.left_a_view(k));
                    *at = Some(Revision {
                        epoch: d.epoch,
                        rev: d.to,
                    });
                    sinks.probes.check(index, service, &view);
                    false
                }
                // Old news: the view is past it already.
                (DeltaPush::Delta(d), Some(held)) if d.epoch == held.epoch && d.to <= held.rev => {
                    false
                }
                _ => true,
            }
        };
        if gap {
            Ledger::count(&sinks.ledger.resyncs);
            if let Err(e) = ask(&client, &name, &view, &at, &sinks).await {
                sinks.ledger.error(e);
            }
            sinks.probes.check(index, service, &view.lock());
        }
    }
}
