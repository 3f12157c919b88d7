//! The table of leases: sessions ending, leases expiring, a shared store's changes, and the
//! pushes that tell subscribers.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::SocketAddr;

use semver::{Version, VersionReq};
use stardust::discovery::api::{DISCOVERY_TOPIC, DiscoveryEvent, Instance};
use tokio::time::Instant;

use super::{Lease, REMOTE_SESSION, Shared, State};
use crate::store::{Record, View};

impl Shared {
    /// Ends session `id` of `peer` (if still current): its leases go, its subscriptions die.
    pub(super) fn end_session(&self, state: &mut State, peer: SocketAddr, id: u64, why: &str) {
        state.expired.remove(&id);
        if state.sessions.get(&peer).is_some_and(|s| s.id == id) {
            let s = state.sessions.remove(&peer).expect("checked");
            self.monitor.session_ended(id);
            tracing::info!(app = ?&*s.app, %peer, reason = why, "session ended");
            // Its address stays known for the app: reconnecting is not held back by others'
            // failed logins.
            self.throttle
                .lock()
                .session_ended(&s.app, peer.ip(), std::time::Instant::now());
        }
        if self.store.is_shared() {
            // Revoking the session's lease removes its entries; every node's watch (this one's
            // included) then takes them out of its table and tells its subscribers.
            self.store.release(id);
            return;
        }
        let mut changed = BTreeSet::new();
        let now = std::time::Instant::now();
        state.leases.retain(|(service, endpoint), lease| {
            if lease.session == id {
                tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, reason = why, "registration removed");
                self.monitor.removed(service, endpoint, now);
                changed.insert(service.clone());
                false
            } else {
                true
            }
        });
        publish(state, &changed);
    }

    /// Removes leases expired at `now`; returns when the next one expires.
    pub(super) fn sweep(&self, now: Instant) -> Option<Instant> {
        let mut state = self.state.lock();
        let mut changed = BTreeSet::new();
        let mut next: Option<Instant> = None;
        let wall = std::time::Instant::now();
        let mut expired = Vec::new();
        state.leases.retain(|(service, endpoint), lease| {
            let Some(expires) = lease.expires else {
                return true; // a shared store's lease: it expires there
            };
            if expires <= now {
                tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, "registration expired (no heartbeat within the lease TTL)");
                self.monitor.removed(service, endpoint, wall);
                changed.insert(service.clone());
                expired.push(lease.session);
                false
            } else {
                next = Some(next.map_or(expires, |n| n.min(expires)));
                true
            }
        });
        // Only sessions still connected need telling (an ended one is gone for good).
        let live: HashSet<u64> = state.sessions.values().map(|s| s.id).collect();
        state
            .expired
            .extend(expired.into_iter().filter(|id| live.contains(id)));
        publish(&mut state, &changed);
        next
    }
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // the View is fed by the etcd store
impl Shared {
    /// A shared store's record as a lease of the table; `None` if its version is malformed
    /// (another node wrote it; it validated versions the same way).
    fn lease_of(&self, record: Record) -> Option<Lease> {
        let version = match Version::parse(&record.instance.version) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(service = ?record.instance.service, endpoint = ?record.instance.endpoint, error = %e, "ignoring a stored registration with a malformed version");
                return None;
            }
        };
        let session = if record.node == self.node_id {
            record.session
        } else {
            REMOTE_SESSION
        };
        Some(Lease {
            instance: record.instance,
            version,
            session,
            expires: None,
            revision: record.revision,
            node: Some(record.node),
        })
    }
}

/// A shared store's watch keeps the table: every change reaches this node's subscribers.
impl View for Shared {
    fn reset(&self, records: Vec<Record>) {
        let mut fresh = BTreeMap::new();
        for record in records {
            let key = (
                record.instance.service.clone(),
                record.instance.endpoint.clone(),
            );
            if let Some(lease) = self.lease_of(record) {
                fresh.insert(key, lease);
            }
        }
        let now = std::time::Instant::now();
        let mut state = self.state.lock();
        let mut changed = BTreeSet::new();
        for (key, old) in &state.leases {
            if fresh.get(key).is_none_or(|l| l.instance != old.instance) {
                changed.insert(key.0.clone());
            }
            if !fresh.contains_key(key) {
                self.monitor.removed(&key.0, &key.1, now);
            }
        }
        for (key, lease) in &fresh {
            if state
                .leases
                .get(key)
                .is_none_or(|l| l.instance != lease.instance)
            {
                changed.insert(key.0.clone());
            }
            self.monitor.registered(&lease.instance, lease.session, now);
        }
        state.leases = fresh;
        publish(&mut state, &changed);
    }

    fn put(&self, record: Record) {
        let Some(lease) = self.lease_of(record) else {
            return;
        };
        let key = (
            lease.instance.service.clone(),
            lease.instance.endpoint.clone(),
        );
        let mut state = self.state.lock();
        self.monitor
            .registered(&lease.instance, lease.session, std::time::Instant::now());
        let changed = state
            .leases
            .get(&key)
            .is_none_or(|l| l.instance != lease.instance);
        if lease.session == REMOTE_SESSION && changed {
            tracing::debug!(service = ?key.0, endpoint = ?key.1, app = ?lease.instance.app, "registered through another registry node");
        }
        state.leases.insert(key.clone(), lease);
        if changed {
            publish(&mut state, &BTreeSet::from([key.0]));
        }
    }

    fn delete(&self, service: &str, endpoint: &str) {
        let key = (service.to_owned(), endpoint.to_owned());
        let mut state = self.state.lock();
        if let Some(lease) = state.leases.remove(&key) {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, "registration removed");
            self.monitor
                .removed(service, endpoint, std::time::Instant::now());
            publish(&mut state, &BTreeSet::from([key.0]));
        }
    }
}

/// The live instances of `service` matching `req`, ordered by endpoint.
pub(super) fn matching<'a>(
    state: &'a State,
    service: &'a str,
    req: &'a VersionReq,
) -> impl Iterator<Item = &'a Instance> + 'a {
    state
        .leases
        .range((service.to_owned(), String::new())..)
        .take_while(move |((s, _), _)| s == service)
        .filter(move |(_, l)| req.matches(&l.version))
        .map(|(_, l)| &l.instance)
}

/// A fingerprint of an instance list, which is what a subscription keeps of the list it last
/// got. Keyed randomly per process, so no one can aim a collision at it; a chance collision
/// (one in 2^64) would skip one push, which the subscriber's periodic pull repairs.
pub(super) fn fingerprint<'a>(keys: &RandomState, list: impl Iterator<Item = &'a Instance>) -> u64 {
    let mut hasher = keys.build_hasher();
    for i in list {
        let Instance {
            app,
            service,
            version,
            endpoint,
            weight,
            tags,
            tls,
        } = i;
        (app, service, version, endpoint, weight, tags, tls).hash(&mut hasher);
    }
    hasher.finish()
}

/// Pushes the new instance list to every subscription of a `changed` service whose list differs
/// from what it last saw.
pub(super) fn publish(state: &mut State, changed: &BTreeSet<String>) {
    if changed.is_empty() {
        return;
    }
    let mut sessions = std::mem::take(&mut state.sessions);
    for session in sessions.values_mut() {
        for sub in &mut session.subscriptions {
            if !changed.contains(&sub.service) {
                continue;
            }
            let now = fingerprint(&state.fingerprints, matching(state, &sub.service, &sub.req));
            if now == sub.last {
                continue;
            }
            let event = DiscoveryEvent {
                service: sub.service.clone(),
                version_req: sub.version_req.clone(),
                instances: matching(state, &sub.service, &sub.req).cloned().collect(),
            };
            sub.last = now;
            if let Err(e) = session.notifier.notify(DISCOVERY_TOPIC, &event) {
                tracing::debug!(peer = %session.notifier.peer_addr(), error = %e, "discovery push not delivered");
            }
        }
    }
    state.sessions = sessions;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_every_change_of_a_list() {
        let keys = RandomState::new();
        let fp = |list: &[&Instance]| fingerprint(&keys, list.iter().copied());
        let one = Instance {
            app: "calc".into(),
            service: "calc.Calculator".into(),
            version: "1.2.0".into(),
            endpoint: "127.0.0.1:9001".into(),
            weight: 100,
            tags: Default::default(),
            tls: false,
        };
        let two = Instance {
            endpoint: "127.0.0.1:9002".into(),
            ..one.clone()
        };
        assert_eq!(fp(&[&one, &two]), fp(&[&one.clone(), &two.clone()]));
        assert_ne!(fp(&[&one, &two]), fp(&[&two, &one]));
        assert_ne!(fp(&[&one, &two]), fp(&[&one]));
        assert_ne!(fp(&[]), fp(&[&one]));
        let changed = [
            Instance {
                app: "other".into(),
                ..one.clone()
            },
            Instance {
                version: "1.2.1".into(),
                ..one.clone()
            },
            Instance {
                weight: 50,
                ..one.clone()
            },
            Instance {
                tls: true,
                ..one.clone()
            },
            Instance {
                tags: [("zone".into(), "a".into())].into(),
                ..one.clone()
            },
        ];
        for c in &changed {
            assert_ne!(fp(&[&one]), fp(&[c]), "{c:?}");
        }
    }
}
