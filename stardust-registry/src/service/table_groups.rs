//! The subscriber side of the [`Table`]: groups of subscribers to one (service, version
//! requirement), and the pushes that bring each group up to the table's latest revision.
//!
//! Subscribers are grouped so that the work of a change is per group, not per subscriber: a
//! group's delta (or full list) is computed and encoded once and the same bytes go to every
//! member, and a snapshot is built once per group revision. A member that stops reading is
//! marked *behind* and skipped rather than queued for; when it reads again it gets one resync
//! (or one full list), not the pushes it missed.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use semver::VersionReq;
use stardust::discovery::api::{DiscoveryDelta, InstanceList, Revision, WatchReply};

use super::wire::{self, DeltaParts, Encoded};
use super::{Lease, ServiceEntry, Table, delta_since};

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

pub(super) struct Group<H> {
    req: VersionReq,
    /// The revision the group's members were last brought to.
    rev: u64,
    members: HashMap<u64, Subscriber<H>>,
    /// The encoded list at `rev`, built by the first snapshot asked for there.
    snapshot: Option<Bytes>,
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

impl<H: Clone> Table<H> {
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
