//! What providers tell the registry about their services (methods, signatures as written in
//! Rust, docs), kept once per (service, version) for operators' tools: `services`, `describe`,
//! the console. The first description of a version is kept; a different one registered later
//! for the same version is logged and shown as a conflict, never silently swapped in.

use std::collections::HashMap;

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
    by_version: Mutex<HashMap<(String, String), VersionDescription>>,
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
        let mut map = self.by_version.lock();
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
            .by_version
            .lock()
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
        let snapshot = self.shared.monitor.snapshot(false);
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
