//! A shared store's watch keeps the table: every change reaches this node's subscribers, as
//! deltas like any other change.

use std::collections::BTreeMap;

use semver::Version;

use super::table::Lease;
use super::{REMOTE_SESSION, Shared};
use crate::store::{Record, View};

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
        let mut lease = Lease::new(record.instance, version, session);
        lease.revision = record.revision;
        lease.node = Some(record.node);
        Some(lease)
    }
}

impl View for Shared {
    fn rules(&self, rules: stardust::traffic::Rules) {
        self.rules_reported(rules);
    }

    fn description(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: &stardust::discovery::api::ServiceDescription,
    ) {
        self.descriptions.stored(service, version, app, description);
    }

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
        let mut table = self.table.lock();
        let gone: Vec<(String, String)> = table
            .leases()
            .map(|l| (l.instance.service.clone(), l.instance.endpoint.clone()))
            .filter(|key| !fresh.contains_key(key))
            .collect();
        for (service, endpoint) in gone {
            table.remove(&service, &endpoint);
            self.monitor.removed(&service, &endpoint, now);
        }
        for (_, lease) in fresh {
            self.monitor.registered(&lease.instance, lease.session, now);
            table.put(lease);
        }
        drop(table);
        self.fanout.wake();
    }

    fn put(&self, record: Record) {
        let Some(lease) = self.lease_of(record) else {
            return;
        };
        let mut table = self.table.lock();
        self.monitor
            .registered(&lease.instance, lease.session, std::time::Instant::now());
        let remote = lease.session == REMOTE_SESSION;
        let (service, endpoint, app) = (
            lease.instance.service.clone(),
            lease.instance.endpoint.clone(),
            lease.instance.app.clone(),
        );
        if table.put(lease) {
            if remote {
                tracing::debug!(service = ?service, endpoint = ?endpoint, app = ?app, "registered through another registry node");
            }
            drop(table);
            self.fanout.wake();
        }
    }

    fn delete(&self, service: &str, endpoint: &str) {
        let mut table = self.table.lock();
        if let Some(lease) = table.remove(service, endpoint) {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?lease.instance.app, "registration removed");
            self.monitor
                .removed(service, endpoint, std::time::Instant::now());
            drop(table);
            self.fanout.wake();
        }
    }
}
