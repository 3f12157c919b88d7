//! The table of live registrations, revisioned, and the subscriber groups that follow it.
//!
//! Every change to the table (an instance added, changed or removed) gets the next *revision*
//! and is logged per service: which endpoint changed, and the version it had before. From that
//! log a delta between any two revisions still in it is computed exactly, for any version
//! requirement, without keeping anyone's list: an endpoint belongs to a delta's `upserted` if
//! it matches now, to `removed` if it matched before the first logged change and does not now.
//!
//! Subscribers are grouped by (service, version requirement). A group sits at one revision: the
//! one its pushes brought its members to. [`Table::collect`] advances the groups of changed
//! services and returns one [`PushJob`] per group with something to say, its payloads encoded
//! once (see `wire`); the caller sends them outside the lock. Nothing here is proportional to
//! the number of instances except a snapshot, which is built from bytes encoded at registration
//! and cached per group until the group moves.
//!
//! The table does not know what a subscriber is: `H` is whatever handle the caller pushes to
//! (a connection's notifier in the registry, a plain value in the tests).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use semver::{Version, VersionReq};
use stardust::discovery::api::{DiscoveryDelta, Instance, InstanceList, Revision, WatchReply};

use super::wire::{self, DeltaParts, Encoded};

/// A service's change log keeps at least this many entries (more for a large service: a delta
/// spanning more changes than the service has instances is no cheaper than a snapshot).
const MIN_LOG: usize = 1024;

/// One live registration.
pub(crate) struct Lease {
    pub(crate) instance: Instance,
    pub(crate) version: Version,
    /// The instance as the wire carries it, encoded once.
    pub(crate) encoded: Encoded,
    /// The session of this node that registered it (`REMOTE_SESSION`: another node's).
    pub(crate) session: u64,
    /// The shared store's revision of this entry (0 in memory).
    pub(crate) revision: i64,
    /// The node holding it in a shared store (`None` in memory: this one).
    pub(crate) node: Option<String>,
}

impl Lease {
    pub(crate) fn new(instance: Instance, version: Version, session: u64) -> Lease {
        Lease {
            encoded: wire::encode_instance(&instance),
            instance,
            version,
            session,
            revision: 0,
            node: None,
        }
    }
}

/// How a subscriber hears about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Revisioned deltas (`watch`).
    Delta,
    /// The whole list on every change (`subscribe`, the first protocol revision).
    Full,
}

struct Subscriber<H> {
    handle: H,
    kind: Kind,
    /// Pushes were dropped for it (it was not reading): it gets none until it resyncs.
    behind: bool,
}

struct Group<H> {
    req: VersionReq,
    /// The revision the group's members were last brought to.
    rev: u64,
    members: HashMap<u64, Subscriber<H>>,
    /// The encoded list at `rev`, built by the first snapshot asked for there.
    snapshot: Option<Bytes>,
}

/// One logged change: `endpoint` changed at `rev`; `before` is the version it had (`None`: it
/// was not registered).
struct Change {
    rev: u64,
    endpoint: String,
    before: Option<Version>,
}

struct ServiceEntry<H> {
    instances: BTreeMap<String, Lease>,
    log: VecDeque<Change>,
    /// Deltas can start from any revision at or after this one.
    floor: u64,
    groups: HashMap<String, Group<H>>,
}

impl<H> ServiceEntry<H> {
    fn new(floor: u64) -> ServiceEntry<H> {
        ServiceEntry {
            instances: BTreeMap::new(),
            log: VecDeque::new(),
            floor,
            groups: HashMap::new(),
        }
    }
}

/// What one session of this node holds (so ending it costs what it holds, not the table).
#[derive(Default)]
struct Holdings {
    leases: BTreeSet<(String, String)>,
    subscriptions: BTreeSet<(String, String)>,
}

/// Pushes for one group, to send outside the lock: each payload goes to every member of its
/// kind.
pub(crate) struct PushJob<H> {
    pub(crate) service: String,
    pub(crate) version_req: String,
    /// `DiscoveryPush` payload for [`Kind::Delta`] members (a delta, or a resync demand).
    pub(crate) delta: Option<Bytes>,
    /// `DiscoveryEvent` payload for [`Kind::Full`] members.
    pub(crate) full: Option<Bytes>,
    pub(crate) to: Vec<(u64, H, Kind)>,
}

/// See the [module docs](self).
pub(crate) struct Table<H> {
    epoch: u64,
    /// The revision of the last change (0: none yet).
    rev: u64,
    services: HashMap<String, ServiceEntry<H>>,
    /// Services changed since [`Table::collect`] last ran.
    dirty: HashSet<String>,
    /// Pushes made by bringing a group up to date outside `collect` (a subscriber joining): sent
    /// first, so every group's pushes leave in revision order.
    outbox: Vec<PushJob<H>>,
    holdings: HashMap<u64, Holdings>,
}

impl<H: Clone> Table<H> {
    pub(crate) fn new(epoch: u64) -> Table<H> {
        Table {
            epoch,
            rev: 0,
            services: HashMap::new(),
            dirty: HashSet::new(),
            outbox: Vec::new(),
            holdings: HashMap::new(),
        }
    }

    /// The revision of the latest change.
    pub(crate) fn revision(&self) -> u64 {
        self.rev
    }

    pub(crate) fn get(&self, service: &str, endpoint: &str) -> Option<&Lease> {
        self.services.get(service)?.instances.get(endpoint)
    }

    /// Every lease, by service and endpoint.
    pub(crate) fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.services.values().flat_map(|s| s.instances.values())
    }

    /// The live instances of `service` matching `req`, ordered by endpoint.
    pub(crate) fn matching<'a>(
        &'a self,
        service: &str,
        req: &'a VersionReq,
    ) -> impl Iterator<Item = &'a Lease> + 'a {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|s| s.instances.values())
            .filter(move |l| req.matches(&l.version))
    }

    /// Leases held by `session`.
    pub(crate) fn leases_of(&self, session: u64) -> usize {
        self.holdings.get(&session).map_or(0, |h| h.leases.len())
    }

    /// Subscriptions held by `session`, and whether it holds this one.
    pub(crate) fn subscriptions_of(&self, session: u64, service: &str, req: &str) -> (usize, bool) {
        self.holdings.get(&session).map_or((0, false), |h| {
            let key = (service.to_owned(), req.to_owned());
            (h.subscriptions.len(), h.subscriptions.contains(&key))
        })
    }

    /// Every subscription, over every session.
    pub(crate) fn subscription_count(&self) -> usize {
        self.holdings.values().map(|h| h.subscriptions.len()).sum()
    }

    fn log(&mut self, service: &str, endpoint: &str, before: Option<Version>) {
        self.rev += 1;
        let rev = self.rev;
        // A new entry's log starts with this change: deltas from just before it are exact.
        let entry = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| ServiceEntry::new(rev - 1));
        entry.log.push_back(Change {
            rev,
            endpoint: endpoint.to_owned(),
            before,
        });
        let keep = MIN_LOG.max(entry.instances.len() + 1);
        while entry.log.len() > keep {
            let dropped = entry.log.pop_front().expect("longer than keep");
            entry.floor = dropped.rev;
        }
        if !self.dirty.contains(service) {
            self.dirty.insert(service.to_owned());
        }
    }

    /// Adds or replaces a lease; `false` if nothing a subscriber sees changed.
    pub(crate) fn put(&mut self, lease: Lease) -> bool {
        let service = lease.instance.service.clone();
        let endpoint = lease.instance.endpoint.clone();
        let key = (service.clone(), endpoint.clone());
        let previous = self
            .services
            .get(&service)
            .and_then(|s| s.instances.get(&endpoint));
        let before = previous.map(|p| (p.version.clone(), p.session));
        let changed = previous.is_none_or(|p| p.instance != lease.instance);
        if let Some((_, old_session)) = &before
            && *old_session != lease.session
            && let Some(h) = self.holdings.get_mut(old_session)
        {
            h.leases.remove(&key);
        }
        if lease.session != super::REMOTE_SESSION {
            self.holdings
                .entry(lease.session)
                .or_default()
                .leases
                .insert(key);
        }
        if changed {
            self.log(&service, &endpoint, before.map(|b| b.0));
        }
        let entry = self.services.get_mut(&service).expect("logged or present");
        entry.instances.insert(endpoint, lease);
        changed
    }

    /// Removes a lease.
    pub(crate) fn remove(&mut self, service: &str, endpoint: &str) -> Option<Lease> {
        let lease = self.services.get_mut(service)?.instances.remove(endpoint)?;
        if let Some(h) = self.holdings.get_mut(&lease.session) {
            h.leases.remove(&(service.to_owned(), endpoint.to_owned()));
            // A shared store's watch may bring back a lease of a session that ended: its
            // holdings must not outlive the lease.
            if h.leases.is_empty() && h.subscriptions.is_empty() {
                self.holdings.remove(&lease.session);
            }
        }
        self.log(service, endpoint, Some(lease.version.clone()));
        Some(lease)
    }

    /// Removes every lease `session` holds, returning them.
    pub(crate) fn remove_leases_of(&mut self, session: u64) -> Vec<Lease> {
        let keys = match self.holdings.get_mut(&session) {
            Some(h) => std::mem::take(&mut h.leases),
            None => return Vec::new(),
        };
        keys.into_iter()
            .filter_map(|(s, e)| self.remove(&s, &e))
            .collect()
    }

    /// Forgets `session` entirely: its subscriptions end (its leases must be gone already, or
    /// stay for a shared store to expire).
    pub(crate) fn end_session(&mut self, session: u64) {
        let Some(h) = self.holdings.remove(&session) else {
            return;
        };
        for (service, req) in h.subscriptions {
            self.drop_member(&service, &req, session);
        }
    }

    fn drop_member(&mut self, service: &str, req: &str, session: u64) -> bool {
        let Some(entry) = self.services.get_mut(service) else {
            return false;
        };
        let Some(group) = entry.groups.get_mut(req) else {
            return false;
        };
        let was = group.members.remove(&session).is_some();
        if group.members.is_empty() {
            entry.groups.remove(req);
        }
        if entry.groups.is_empty() && entry.instances.is_empty() {
            self.services.remove(service);
        }
        was
    }

    /// Subscribes `session` (reached through `handle`) to `service` with `version_req`,
    /// replacing its earlier subscription to the same. Brings the group up to date first (its
    /// pending push goes to the outbox), so the newcomer starts at the group's revision.
    pub(crate) fn join(
        &mut self,
        service: &str,
        version_req: &str,
        req: VersionReq,
        session: u64,
        handle: H,
        kind: Kind,
    ) {
        let rev = self.rev;
        let entry = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| ServiceEntry::new(rev));
        entry
            .groups
            .entry(version_req.to_owned())
            .or_insert_with(|| Group {
                req,
                // Everything the log holds is already in the table the newcomer sees.
                rev,
                members: HashMap::new(),
                snapshot: None,
            });
        if let Some(job) = self.advance(service, version_req) {
            self.outbox.push(job);
        }
        let group = self
            .services
            .get_mut(service)
            .and_then(|e| e.groups.get_mut(version_req))
            .expect("created above");
        group.members.insert(
            session,
            Subscriber {
                handle,
                kind,
                behind: false,
            },
        );
        self.holdings
            .entry(session)
            .or_default()
            .subscriptions
            .insert((service.to_owned(), version_req.to_owned()));
    }

    /// Ends `session`'s subscription to `service` with `version_req`; `false` if it had none.
    pub(crate) fn leave(&mut self, service: &str, version_req: &str, session: u64) -> bool {
        if let Some(h) = self.holdings.get_mut(&session) {
            h.subscriptions
                .remove(&(service.to_owned(), version_req.to_owned()));
        }
        self.drop_member(service, version_req, session)
    }

    /// What a member of the group needs, given the revision it holds (`known`). Call after
    /// [`join`](Self::join), which brought the group up to date.
    pub(crate) fn answer(
        &mut self,
        service: &str,
        version_req: &str,
        known: Option<Revision>,
    ) -> WatchReply {
        let epoch = self.epoch;
        let Some(entry) = self.services.get_mut(service) else {
            return WatchReply::Snapshot {
                at: Revision { epoch, rev: 0 },
                instances: InstanceList::from_encoded(wire::instance_array(std::iter::empty())),
            };
        };
        let ServiceEntry {
            instances,
            log,
            floor,
            groups,
        } = entry;
        let group = groups.get_mut(version_req).expect("joined first");
        let at = Revision {
            epoch,
            rev: group.rev,
        };
        match known {
            Some(k) if k == at => return WatchReply::Unchanged { at },
            Some(k) if k.epoch == epoch && k.rev >= *floor && k.rev < group.rev => {
                let (upserted, removed) = delta_since(log, instances, &group.req, k.rev, group.rev);
                return WatchReply::Delta(DiscoveryDelta {
                    service: service.to_owned(),
                    version_req: version_req.to_owned(),
                    epoch,
                    from: k.rev,
                    to: group.rev,
                    upserted: upserted.into_iter().map(|l| l.instance.clone()).collect(),
                    removed,
                });
            }
            _ => {}
        }
        let snapshot = match &group.snapshot {
            Some(s) => s.clone(),
            None => {
                let list: Vec<&Encoded> = instances
                    .values()
                    .filter(|l| group.req.matches(&l.version))
                    .map(|l| &l.encoded)
                    .collect();
                let s = wire::instance_array(list.into_iter());
                group.snapshot = Some(s.clone());
                s
            }
        };
        WatchReply::Snapshot {
            at,
            instances: InstanceList::from_encoded(snapshot),
        }
    }

    /// Brings one group up to its service's latest change: the push that says so, if the
    /// group's list changed.
    fn advance(&mut self, service: &str, version_req: &str) -> Option<PushJob<H>> {
        let (epoch, now) = (self.epoch, self.rev);
        let entry = self.services.get_mut(service)?;
        let group = entry.groups.get(version_req)?;
        if group.rev >= now {
            return None;
        }
        let members: Vec<(u64, H, Kind)> = group
            .members
            .iter()
            .filter(|(_, m)| !m.behind)
            .map(|(id, m)| (*id, m.handle.clone(), m.kind))
            .collect();
        let wants = |kind| members.iter().any(|m| m.2 == kind);
        let (delta, full) = if group.rev < entry.floor {
            // The log no longer reaches back to the group's revision: members start over.
            let full = wants(Kind::Full)
                .then(|| full_list(&entry.instances, &group.req, service, version_req));
            (Some(wire::resync_push(service, version_req)), full)
        } else {
            let (upserted, removed) =
                delta_since(&entry.log, &entry.instances, &group.req, group.rev, now);
            if upserted.is_empty() && removed.is_empty() {
                // Nothing this group lists changed: it stays where it is.
                return None;
            }
            let parts = DeltaParts {
                service,
                version_req,
                epoch,
                from: group.rev,
                to: now,
            };
            let delta = wants(Kind::Delta)
                .then(|| wire::delta_push(&parts, upserted.iter().map(|l| &l.encoded), &removed));
            let full = wants(Kind::Full)
                .then(|| full_list(&entry.instances, &group.req, service, version_req));
            (delta, full)
        };
        let group = entry.groups.get_mut(version_req).expect("found above");
        group.rev = now;
        group.snapshot = None;
        Some(PushJob {
            service: service.to_owned(),
            version_req: version_req.to_owned(),
            delta,
            full,
            to: members,
        })
    }

    /// The pushes due since the last call: those made by joins first, then one per group of
    /// each changed service whose list changed.
    pub(crate) fn collect(&mut self) -> Vec<PushJob<H>> {
        let mut jobs = std::mem::take(&mut self.outbox);
        let dirty = std::mem::take(&mut self.dirty);
        for service in dirty {
            let groups: Vec<String> = match self.services.get(&service) {
                Some(e) => e.groups.keys().cloned().collect(),
                None => continue,
            };
            jobs.extend(groups.iter().filter_map(|g| self.advance(&service, g)));
            if let Some(e) = self.services.get(&service)
                && e.groups.is_empty()
                && e.instances.is_empty()
            {
                self.services.remove(&service);
            }
        }
        jobs
    }

    /// Whether changes are waiting for [`collect`](Self::collect).
    pub(crate) fn has_pending(&self) -> bool {
        !self.dirty.is_empty() || !self.outbox.is_empty()
    }

    /// Marks `session`'s subscription as behind: it gets no pushes until
    /// [`catch_up`](Self::catch_up).
    pub(crate) fn mark_behind(&mut self, service: &str, version_req: &str, session: u64) {
        if let Some(m) = self
            .services
            .get_mut(service)
            .and_then(|e| e.groups.get_mut(version_req))
            .and_then(|g| g.members.get_mut(&session))
        {
            m.behind = true;
        }
    }

    /// Clears every "behind" mark of `session` and returns what each of those subscriptions
    /// needs now: a resync demand (delta members) or the whole list (full members).
    pub(crate) fn catch_up(&mut self, session: u64) -> Vec<PushJob<H>> {
        let Some(h) = self.holdings.get(&session) else {
            return Vec::new();
        };
        let mut jobs = Vec::new();
        for (service, req) in &h.subscriptions {
            let Some(entry) = self.services.get_mut(service) else {
                continue;
            };
            let Some(group) = entry.groups.get_mut(req) else {
                continue;
            };
            let instances = &entry.instances;
            let Some(m) = group.members.get_mut(&session).filter(|m| m.behind) else {
                continue;
            };
            m.behind = false;
            let (kind, handle) = (m.kind, m.handle.clone());
            let (delta, full) = match kind {
                Kind::Delta => (Some(wire::resync_push(service, req)), None),
                Kind::Full => (None, Some(full_list(instances, &group.req, service, req))),
            };
            jobs.push(PushJob {
                service: service.clone(),
                version_req: req.clone(),
                delta,
                full,
                to: vec![(session, handle, kind)],
            });
        }
        jobs
    }
}

fn full_list(
    instances: &BTreeMap<String, Lease>,
    req: &VersionReq,
    service: &str,
    version_req: &str,
) -> Bytes {
    let list: Vec<&Encoded> = instances
        .values()
        .filter(|l| req.matches(&l.version))
        .map(|l| &l.encoded)
        .collect();
    wire::full_event(service, version_req, list.into_iter())
}

/// The changes to `req`'s list between revisions `from` (at or after the log's floor) and `to`:
/// instances that match now, and endpoints that matched at `from` and no longer do.
fn delta_since<'a>(
    log: &VecDeque<Change>,
    instances: &'a BTreeMap<String, Lease>,
    req: &VersionReq,
    from: u64,
    to: u64,
) -> (Vec<&'a Lease>, Vec<String>) {
    let start = log.partition_point(|c| c.rev <= from);
    // The first change of each endpoint after `from` tells how it stood at `from`.
    let mut first: BTreeMap<&str, Option<&Version>> = BTreeMap::new();
    for c in log.range(start..) {
        if c.rev > to {
            break;
        }
        first
            .entry(c.endpoint.as_str())
            .or_insert(c.before.as_ref());
    }
    let mut upserted = Vec::new();
    let mut removed = Vec::new();
    for (endpoint, before) in first {
        match instances.get(endpoint).filter(|l| req.matches(&l.version)) {
            Some(lease) => upserted.push(lease),
            None if before.is_some_and(|v| req.matches(v)) => removed.push(endpoint.to_owned()),
            None => {}
        }
    }
    (upserted, removed)
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
