//! What providers tell the registry about their services (methods, signatures as written in
//! Rust, docs), kept once per (service, version) for operators' tools: `services`, `describe`,
//! the console. The first description of a version is kept; a different one registered later
//! for the same version is logged and shown as a conflict, never silently swapped in.
//!
//! With a shared store (etcd) the first description of a version is also kept there, so every
//! node shows the same one: the node records what its own providers register at once, and what
//! the store reports ([`Descriptions::stored`]) with the same rules.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use stardust::discovery::api::{
    RegistryError, ServiceDescription, ServiceSummary, VersionDescription, VersionSummary,
};

use super::RegistryImpl;
use crate::monitor::render::health_by_service;

/// Most (service, version) descriptions kept; beyond it new versions are described as unknown
/// (registrations still work).
const MAX_DESCRIPTIONS: usize = 4096;

/// Most methods, and bytes of doc text per item, a description may carry.
pub(super) const MAX_METHODS: usize = 512;
pub(super) const MAX_DOCS_LEN: usize = 16 * 1024;
pub(super) const MAX_TYPE_LEN: usize = 1024;

#[derive(Default)]
pub(crate) struct Descriptions {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_version: HashMap<(String, String), VersionDescription>,
    /// The (service, version) pairs a shared store reported a description of: it holds one
    /// already, so writing another there is pointless (at most [`MAX_DESCRIPTIONS`]).
    in_store: HashSet<(String, String)>,
}

impl Descriptions {
    /// Records what `app` registered for `service` `version`.
    pub(super) fn record(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: Option<&ServiceDescription>,
    ) {
        let mut held = self.held.lock();
        Self::record_in(&mut held.by_version, service, version, app, description);
    }

    /// Records the description a shared store holds for `service` `version` (registered by
    /// `app` through some node), with the same first-wins rule as [`record`](Self::record).
    pub(super) fn stored(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: &ServiceDescription,
    ) {
        let mut held = self.held.lock();
        Self::record_in(
            &mut held.by_version,
            service,
            version,
            app,
            Some(description),
        );
        let key = (service.to_owned(), version.to_owned());
        if held.by_version.contains_key(&key) {
            held.in_store.insert(key);
        }
    }

    /// Whether the shared store is known to hold a description of `service` `version` already.
    pub(super) fn in_store(&self, service: &str, version: &str) -> bool {
        self.held
            .lock()
            .in_store
            .contains(&(service.to_owned(), version.to_owned()))
    }

    fn record_in(
        map: &mut HashMap<(String, String), VersionDescription>,
        service: &str,
        version: &str,
        app: &str,
        description: Option<&ServiceDescription>,
    ) {
        let key = (service.to_owned(), version.to_owned());
        let full = map.len() >= MAX_DESCRIPTIONS;
        match map.get_mut(&key) {
            None if full => {}
            None => {
                map.insert(
                    key,
                    VersionDescription {
                        version: version.to_owned(),
                        description: description.cloned(),
                        app: app.to_owned(),
                        conflict: None,
                    },
                );
            }
            // An older provider described nothing: a later description fills the gap.
            Some(known) if known.description.is_none() && description.is_some() => {
                known.description = description.cloned();
                known.app = app.to_owned();
            }
            Some(known) if description.is_some() && known.description.as_ref() != description => {
                if known.conflict.is_none() {
                    tracing::warn!(service = ?service, version = ?version, first = ?known.app, app = ?app,
                        "a provider registered a different description for the same service version; the first is kept");
                }
                known.conflict = Some(format!(
                    "app `{app}` registered a different description of {service} {version}; \
                     the first one (from app `{}`) is shown",
                    known.app
                ));
            }
            Some(_) => {}
        }
    }

    /// Every version of `service` described, lowest first.
    pub(super) fn of(&self, service: &str) -> Vec<VersionDescription> {
        let mut found: Vec<VersionDescription> = self
            .held
            .lock()
            .by_version
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|(_, d)| d.clone())
            .collect();
        found.sort_by(|a, b| by_semver(&a.version, &b.version));
        found
    }
}

fn by_semver(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

impl RegistryImpl {
    /// `services`: the services with live instances this app may call.
    pub(super) fn list_services(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        let session = self.session()?;
        // Shared with other callers of the last second: an app calling this in a loop must not
        // make the registry copy its figures each time.
        let snapshot = self
            .shared
            .monitor
            .shared_snapshot(std::time::Instant::now());
        let mut out = Vec::new();
        for (name, instances) in health_by_service(&snapshot) {
            if instances.is_empty() || self.check_consume(&session.app, &name).is_err() {
                continue;
            }
            let mut versions: Vec<VersionSummary> = Vec::new();
            let mut health: Vec<(String, u32)> = Vec::new();
            for (version, h) in &instances {
                match versions.iter_mut().find(|v| &v.version == version) {
                    Some(v) => v.instances += 1,
                    None => versions.push(VersionSummary {
                        version: version.clone(),
                        instances: 1,
                    }),
                }
                match health.iter_mut().find(|(name, _)| name == h.as_str()) {
                    Some((_, n)) => *n += 1,
                    None => health.push((h.as_str().to_owned(), 1)),
                }
            }
            versions.sort_by(|a, b| by_semver(&a.version, &b.version));
            out.push(ServiceSummary {
                name,
                versions,
                health,
            });
        }
        Ok(out)
    }

    /// `describe`: what providers said about `service`.
    pub(super) fn describe_service(
        &self,
        service: &str,
    ) -> Result<Vec<VersionDescription>, RegistryError> {
        let session = self.session()?;
        super::checks::service_arg(&self.shared.config.limits, service)?;
        self.check_consume(&session.app, service)?;
        Ok(self.shared.descriptions.of(service))
    }
}
