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
//!
//! This file holds the table itself and its revision log; the subscriber groups and their
//! pushes are in `table_groups.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use semver::{Version, VersionReq};
use stardust::discovery::api::Instance;

use super::wire::{self, Encoded};

#[path = "table_groups.rs"]
mod groups;

use groups::Group;
pub(crate) use groups::{Kind, PushJob};

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
