//! A subscriber that follows one service the way a revisioned client must (`docs/PROTOCOL.md`
//! §17): a `watch` answer (snapshot or delta), then the [`DiscoveryPush`]es on [`DELTA_TOPIC`],
//! each applied only when it starts from the revision held. A delta that does not, or a resync
//! demand, is repaired by calling `watch` again with the revision held.
//!
//! Kept apart from the framework's own follower (`stardust::discovery::watch`) on purpose: the
//! tests judge the registry's pushes against these rules, not against the code under test. It
//! counts what happened, so tests can tell a view built from deltas from one rebuilt by resyncs.

use std::collections::BTreeMap;
use std::sync::Arc;

use stardust::discovery::api::{
    DELTA_TOPIC, DISCOVERY_TOPIC, DiscoveryDelta, DiscoveryPush, FEATURE_DELTA, Instance,
    RegistryClient, Revision, WatchReply,
};
use stardust::{Client, Notifications};
use tokio::sync::watch;

use super::within;

/// A fresh connection to `addr` announcing [`FEATURE_DELTA`] (a client that applies deltas).
pub async fn connect_delta(addr: std::net::SocketAddr) -> RegistryClient {
    let client = within(
        "connecting with deltas",
        Client::builder().features([FEATURE_DELTA]).connect(addr),
    )
    .await
    .expect("connect");
    RegistryClient::new(client)
}

/// What a [`Follower`] did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Snapshots taken (the first answer, and every repair the registry answered whole).
    pub snapshots: u64,
    /// Deltas applied, pushed or answered.
    pub deltas: u64,
    /// Pushes the view was already past (sent before a `watch` answer that covered them).
    pub stale: u64,
    /// Deltas that did not continue the view.
    pub gaps: u64,
    /// Resync demands received.
    pub resyncs: u64,
    /// Whole lists received on [`DISCOVERY_TOPIC`] (a delta subscriber must get none).
    pub full_lists: u64,
}

/// What one push did to the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The delta continued the view and was applied.
    Applied(DiscoveryDelta),
    /// The view was already past it.
    Stale,
    /// It did not continue the view: the view was repaired with `watch`.
    Gap,
    /// The registry demanded a resync: the view was repaired with `watch`.
    Resync,
}

/// One connection following one service (see the [module docs](self)).
pub struct Follower {
    client: RegistryClient,
    notes: Notifications,
    service: String,
    version_req: String,
    at: Option<Revision>,
    list: BTreeMap<String, Instance>,
    stats: FollowStats,
}

impl Follower {
    /// Starts following `service` on `client` (logged in already): listens for pushes, then
    /// calls `watch` without a revision.
    pub async fn start(client: RegistryClient, service: &str, version_req: &str) -> Follower {
        // Before the call: a push may be sent before its answer.
        let notes = client.client().notifications();
        let mut follower = Follower {
            client,
            notes,
            service: service.to_owned(),
            version_req: version_req.to_owned(),
            at: None,
            list: BTreeMap::new(),
            stats: FollowStats::default(),
        };
        follower.ask().await;
        follower
    }

    /// The revision the view is at.
    pub fn at(&self) -> Revision {
        self.at.expect("watched: the view has a revision")
    }

    /// The view, ordered by endpoint (as `discover` orders it).
    pub fn instances(&self) -> Vec<Instance> {
        self.list.values().cloned().collect()
    }

    /// What happened so far.
    pub fn stats(&self) -> FollowStats {
        self.stats
    }

    /// The connection.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Calls `watch` with the revision held and applies the answer. The answer must be
    /// consistent with what was asked: `Unchanged` at the revision held, a delta from it.
    pub async fn ask(&mut self) {
        let known = self.at;
        let reply = within(
            "a watch answer",
            self.client
                .watch(self.service.clone(), self.version_req.clone(), known),
        )
        .await
        .expect("watch call")
        .unwrap_or_else(|e| panic!("watch of {} refused: {e}", self.service));
        match reply {
            WatchReply::Unchanged { at } => {
                assert_eq!(Some(at), known, "`Unchanged` names the revision asked with")
            }
            WatchReply::Delta(d) => {
                assert!(
                    self.continues(&d),
                    "a delta answer starts from the revision asked with ({known:?}): {d:?}"
                );
                self.apply_delta(d);
            }
            WatchReply::Snapshot { at, instances } => {
                let list = instances.decode().expect("a well-formed snapshot");
                self.list = list.into_iter().map(|i| (i.endpoint.clone(), i)).collect();
                self.at = Some(at);
                self.stats.snapshots += 1;
            }
        }
    }

    /// The next push on [`DELTA_TOPIC`] (whole lists are counted and skipped); `None` once the
    /// connection is gone. Unbounded: callers bound it.
    pub async fn recv(&mut self) -> Option<DiscoveryPush> {
        loop {
            let note = self.notes.recv().await?;
            match note.topic() {
                DELTA_TOPIC => return Some(note.decode().expect("a DiscoveryPush")),
                DISCOVERY_TOPIC => self.stats.full_lists += 1,
                _ => {}
            }
        }
    }

    /// Applies `push`, repairing the view with `watch` on a gap or a resync demand.
    pub async fn apply(&mut self, push: DiscoveryPush) -> Step {
        let step = match push {
            DiscoveryPush::Delta(d) => {
                assert_eq!(
                    (d.service.as_str(), d.version_req.as_str()),
                    (self.service.as_str(), self.version_req.as_str()),
                    "a push for another subscription"
                );
                let at = self.at();
                if self.continues(&d) {
                    self.apply_delta(d.clone());
                    Step::Applied(d)
                } else if d.epoch == at.epoch && d.to <= at.rev {
                    self.stats.stale += 1;
                    Step::Stale
                } else {
                    self.stats.gaps += 1;
                    Step::Gap
                }
            }
            DiscoveryPush::Resync { .. } => {
                self.stats.resyncs += 1;
                Step::Resync
            }
        };
        if matches!(step, Step::Gap | Step::Resync) {
            self.ask().await;
        }
        step
    }

    /// The next push, applied (bounded by [`super::BOUND`]).
    pub async fn step(&mut self) -> Step {
        let push = within("a discovery push", self.recv())
            .await
            .expect("the connection is gone");
        self.apply(push).await
    }

    /// Applies pushes as they come until the view equals the list `target` holds (once it
    /// holds one; `discover`'s order). Unbounded: the caller bounds it.
    pub async fn follow_until(&mut self, target: &mut watch::Receiver<Option<Arc<Vec<Instance>>>>) {
        loop {
            let expected = target.borrow_and_update().clone();
            if expected.is_some_and(|e| self.equals(&e)) {
                return;
            }
            let push = tokio::select! {
                push = self.recv() => push.expect("the connection is gone"),
                changed = target.changed() => {
                    changed.expect("the target outlives its followers");
                    continue;
                }
            };
            self.apply(push).await;
        }
    }

    /// Whether the view is `expected`; lengths first, and in place: a copy or a whole
    /// comparison of thousands of instances per push would cost far more than the push.
    fn equals(&self, expected: &[Instance]) -> bool {
        self.list.len() == expected.len() && self.list.values().eq(expected.iter())
    }

    fn continues(&self, d: &DiscoveryDelta) -> bool {
        self.at
            .is_some_and(|at| d.epoch == at.epoch && d.from == at.rev)
            && d.to > d.from
    }

    fn apply_delta(&mut self, d: DiscoveryDelta) {
        for endpoint in &d.removed {
            self.list.remove(endpoint);
        }
        for i in d.upserted {
            self.list.insert(i.endpoint.clone(), i);
        }
        self.at = Some(Revision {
            epoch: d.epoch,
            rev: d.to,
        });
        self.stats.deltas += 1;
    }
}
