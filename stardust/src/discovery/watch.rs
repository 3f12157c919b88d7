//! The consumer's live view of one service: the instances the registry reported last.
//!
//! A registry that speaks revisioned discovery (`discovery.delta`) answers a `watch` with a
//! snapshot and pushes deltas after it; an older one sends the whole list every time. Either
//! way the view ends as one list, turned into balancing targets once per change.
//!
//! A delta applies only to the revision it names as `from`. Pushes that arrive while a `watch`
//! call is in flight (they can overtake its answer) wait in a small stash and are replayed on
//! the answer. A delta that does not continue the view is a gap: the caller asks again with the
//! revision it holds and gets the missing changes (or a snapshot).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use super::api::{DiscoveryDelta, Instance, Revision, WatchReply};
use super::session::Session;
use crate::auth::BoxFuture;
use crate::balance::Target;
use crate::client::EndpointSource;
use crate::error::{Error, ErrorKind};
use crate::traffic::{Routed, ServiceRules};

/// Pushes kept while a `watch` call is in flight; beyond it the view simply asks again.
const MAX_STASH: usize = 64;

/// What a push did to the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied, kept for the answer in flight, or already known.
    Fine,
    /// It does not continue the view: ask the registry again.
    Gap,
}

#[derive(Default)]
struct State {
    /// `None` until the first answer from the registry.
    list: Option<BTreeMap<String, Instance>>,
    /// The revision `list` is at (revisioned discovery only).
    at: Option<Revision>,
    /// A `watch` call is in flight.
    asking: bool,
    /// Pushes that arrived while asking.
    stash: Vec<DiscoveryDelta>,
    /// The stash overflowed, or a push showed a gap while asking: ask again after the answer.
    again: bool,
    /// The service's traffic rules, applied to the list on every change.
    rules: Option<ServiceRules>,
}

/// Instances of `service` matching `version_req`, kept fresh by registry pushes and periodic pulls.
pub(crate) struct ServiceWatch {
    pub(crate) service: String,
    pub(crate) version_req: String,
    state: Mutex<State>,
    /// The same instances as balancing targets, handed to calls without copying.
    targets: RwLock<Option<Arc<[Target]>>>,
    /// The traffic rules over those targets (`None`: no rule applies to this process's calls).
    routed: RwLock<Option<Arc<Routed>>>,
    /// Whether `routed` is set: calls of a service without rules check this alone.
    has_rules: AtomicBool,
    session: std::sync::Weak<Session>,
}

impl ServiceWatch {
    pub(crate) fn new(
        service: String,
        version_req: String,
        session: &Arc<Session>,
    ) -> ServiceWatch {
        ServiceWatch {
            service,
            version_req,
            state: Mutex::new(State::default()),
            targets: RwLock::new(None),
            routed: RwLock::new(None),
            has_rules: AtomicBool::new(false),
            session: Arc::downgrade(session),
        }
    }

    /// Replaces the known instances with a whole list (a registry without revisions, or a
    /// first pull).
    pub(crate) fn update(&self, instances: Vec<Instance>) {
        let list: BTreeMap<String, Instance> = instances
            .into_iter()
            .map(|i| (i.endpoint.clone(), i))
            .collect();
        let mut st = self.state.lock();
        st.at = None;
        if st.list.as_ref() == Some(&list) {
            return;
        }
        st.list = Some(list);
        self.publish(&st);
    }

    /// A `watch` call is about to be made: the revision to name in it.
    pub(crate) fn begin_ask(&self) -> Option<Revision> {
        let mut st = self.state.lock();
        st.asking = true;
        st.again = false;
        st.at
    }

    /// The `watch` call answered (`None`: it failed). Returns whether to ask again.
    pub(crate) fn end_ask(&self, reply: Option<WatchReply>) -> bool {
        let mut st = self.state.lock();
        st.asking = false;
        let stash = std::mem::take(&mut st.stash);
        let Some(reply) = reply else {
            return false; // asked again on the next pull or reconnect
        };
        let mut changed = false;
        let mut gap = std::mem::take(&mut st.again);
        match reply {
            WatchReply::Unchanged { at } => gap |= st.at != Some(at),
            WatchReply::Delta(d) => match continue_with(&mut st, d) {
                Some(c) => changed |= c,
                None => gap = true,
            },
            WatchReply::Snapshot { at, instances } => match instances.decode() {
                Ok(list) => {
                    st.list = Some(list.into_iter().map(|i| (i.endpoint.clone(), i)).collect());
                    st.at = Some(at);
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(service = %self.service, error = %e, "malformed discovery snapshot");
                    gap = true;
                }
            },
        }
        for d in stash {
            match continue_with(&mut st, d) {
                Some(c) => changed |= c,
                None => gap = true,
            }
        }
        if changed {
            self.publish(&st);
        }
        gap
    }

    /// A delta pushed by the registry.
    pub(crate) fn push(&self, delta: DiscoveryDelta) -> Applied {
        let mut st = self.state.lock();
        if st.asking {
            if st.stash.len() < MAX_STASH {
                st.stash.push(delta);
            } else {
                st.again = true;
            }
            return Applied::Fine;
        }
        match continue_with(&mut st, delta) {
            Some(true) => {
                self.publish(&st);
                Applied::Fine
            }
            Some(false) => Applied::Fine,
            None => Applied::Gap,
        }
    }

    /// Sets the service's traffic rules (`None`: none) and applies them to the list.
    pub(crate) fn set_rules(&self, rules: Option<ServiceRules>) {
        let mut st = self.state.lock();
        st.rules = rules;
        self.route(&st);
    }

    /// Applies the rules to the list's targets, for the calls started from now on.
    fn route(&self, st: &State) {
        let routed = match (&st.rules, &st.list, self.session.upgrade()) {
            (Some(rules), Some(list), Some(session)) => {
                let targets = self.targets.read().clone().unwrap_or_else(|| Arc::from([]));
                Routed::new(
                    &self.service,
                    rules,
                    session.traffic_context(),
                    list.values().map(|i| (i.version.as_str(), &i.tags)),
                    &targets,
                )
                .map(Arc::new)
            }
            _ => None,
        };
        let mut slot = self.routed.write();
        self.has_rules.store(routed.is_some(), Ordering::Release);
        *slot = routed;
    }

    /// Rebuilds the balancing targets from the list.
    fn publish(&self, st: &State) {
        let Some(list) = &st.list else { return };
        tracing::debug!(
            service = %self.service,
            count = list.len(),
            "discovery: instances changed"
        );
        let session = self.session.upgrade();
        let targets: Arc<[Target]> = list
            .values()
            .map(|i| {
                let endpoint: Arc<str> = Arc::from(i.endpoint.as_str());
                let mut target = match &session {
                    Some(s) => {
                        let figures = s.pool.call_figures(&endpoint, &self.service);
                        let mut t = s.pool.target(endpoint, i.weight);
                        t.figures = Some(figures);
                        t
                    }
                    None => Target::new(endpoint, i.weight),
                };
                target.tls = i.tls;
                target
            })
            .collect();
        *self.targets.write() = Some(targets);
        if st.rules.is_some() {
            self.route(st);
        }
    }

    /// Whether the registry currently lists a provider at `endpoint`.
    pub(crate) fn lists(&self, endpoint: &str) -> bool {
        self.state
            .lock()
            .list
            .as_ref()
            .is_some_and(|list| list.contains_key(endpoint))
    }

    /// The instances known now (for tests and tools).
    #[cfg(test)]
    pub(crate) fn instances(&self) -> Option<Vec<Instance>> {
        let st = self.state.lock();
        st.list.as_ref().map(|l| l.values().cloned().collect())
    }
}

/// Applies `d` if it continues the list: `Some(changed)`, or `None` for a gap. A delta the
/// list is already past is ignored.
fn continue_with(st: &mut State, d: DiscoveryDelta) -> Option<bool> {
    let at = st.at?;
    if d.epoch != at.epoch {
        return None;
    }
    if d.from != at.rev {
        return if d.to <= at.rev { Some(false) } else { None };
    }
    let list = st.list.get_or_insert_with(BTreeMap::new);
    for endpoint in &d.removed {
        list.remove(endpoint);
    }
    for i in d.upserted {
        list.insert(i.endpoint.clone(), i);
    }
    st.at = Some(Revision {
        epoch: d.epoch,
        rev: d.to,
    });
    Some(true)
}

impl EndpointSource for ServiceWatch {
    fn known(&self) -> Option<Arc<[Target]>> {
        self.targets.read().clone()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Arc<[Target]>, Error>> {
        Box::pin(async move {
            if let Some(targets) = self.known() {
                return Ok(targets);
            }
            // First use before the subscription answered: ask the registry now.
            let session = self
                .session
                .upgrade()
                .ok_or_else(|| Error::connection_closed("the Stardust handle was dropped"))?;
            let list = session.discover(&self.service, &self.version_req).await?;
            if self.known().is_none() {
                self.update(list);
            }
            Ok(self.known().unwrap_or_else(|| Arc::from(Vec::new())))
        })
    }

    fn no_provider(&self, detail: &str) -> Error {
        let mut message = format!(
            "no live provider of service `{}` matching `{}`",
            self.service, self.version_req
        );
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Error::new(ErrorKind::NoProvider, message)
    }

    fn describe(&self) -> String {
        format!("service {} {}", self.service, self.version_req)
    }

    fn routing(&self) -> Option<Arc<Routed>> {
        if !self.has_rules.load(Ordering::Acquire) {
            return None;
        }
        self.routed.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::api::InstanceList;
    use crate::discovery::session::{Secret, SessionConfig};

    fn instance(port: u16) -> Instance {
        Instance {
            app: "calc".into(),
            service: "calc.C".into(),
            version: "1.0.0".into(),
            endpoint: format!("127.0.0.1:{port}"),
            weight: 100,
            tags: Default::default(),
            tls: false,
        }
    }

    fn delta(from: u64, to: u64, up: &[u16], gone: &[u16]) -> DiscoveryDelta {
        DiscoveryDelta {
            service: "calc.C".into(),
            version_req: "*".into(),
            epoch: 1,
            from,
            to,
            upserted: up.iter().map(|p| instance(*p)).collect(),
            removed: gone.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        }
    }

    fn ports(w: &ServiceWatch) -> Vec<u16> {
        w.instances()
            .unwrap_or_default()
            .iter()
            .map(|i| i.endpoint.rsplit(':').next().unwrap().parse().unwrap())
            .collect()
    }

    fn watch() -> (ServiceWatch, Arc<Session>) {
        let session = Session::new(
            vec!["127.0.0.1:1".into()],
            "web".into(),
            Secret("pw".into()),
            crate::auth::ProofKey::from_seed([1; 32]),
            SessionConfig::default(),
            Default::default(),
        );
        (
            ServiceWatch::new("calc.C".into(), "*".into(), &session),
            session,
        )
    }

    fn snapshot(rev: u64, list: &[u16]) -> WatchReply {
        let list: Vec<Instance> = list.iter().map(|p| instance(*p)).collect();
        WatchReply::Snapshot {
            at: Revision { epoch: 1, rev },
            instances: InstanceList::new(&list),
        }
    }

    #[test]
    fn deltas_continue_the_snapshot_and_gaps_are_noticed() {
        let (w, _session) = watch();
        assert_eq!(w.begin_ask(), None);
        assert!(!w.end_ask(Some(snapshot(5, &[1, 2]))));
        assert_eq!(ports(&w), [1, 2]);
        assert_eq!(w.known().unwrap().len(), 2, "targets follow the list");
        assert_eq!(w.push(delta(5, 8, &[3], &[1])), Applied::Fine);
        assert_eq!(ports(&w), [2, 3]);
        // Old news is ignored; a delta from a revision not held is a gap.
        assert_eq!(w.push(delta(5, 8, &[9], &[])), Applied::Fine);
        assert_eq!(w.push(delta(9, 12, &[9], &[])), Applied::Gap);
        assert_eq!(ports(&w), [2, 3]);
        // Another epoch (a restarted registry) is a gap too.
        let mut other = delta(8, 9, &[4], &[]);
        other.epoch = 2;
        assert_eq!(w.push(other), Applied::Gap);
        assert_eq!(w.begin_ask(), Some(Revision { epoch: 1, rev: 8 }));
    }

    #[test]
    fn pushes_that_overtake_the_answer_are_replayed_on_it() {
        let (w, _session) = watch();
        w.begin_ask();
        // The registry's push went out before its answer to `watch` was read.
        assert_eq!(w.push(delta(5, 6, &[3], &[])), Applied::Fine);
        assert_eq!(w.instances(), None, "kept until the answer arrives");
        assert!(!w.end_ask(Some(snapshot(5, &[1]))));
        assert_eq!(ports(&w), [1, 3]);
        // A stashed push that does not continue the answer means asking again.
        w.begin_ask();
        w.push(delta(7, 9, &[4], &[]));
        assert!(w.end_ask(Some(WatchReply::Unchanged {
            at: Revision { epoch: 1, rev: 6 }
        })));
        // A whole list from an older registry replaces everything and forgets the revision.
        w.update(vec![instance(7)]);
        assert_eq!(ports(&w), [7]);
        assert_eq!(w.begin_ask(), None);
        w.end_ask(None);
    }
}
