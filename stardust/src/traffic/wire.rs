//! How rules travel: the registry pushes a service's rules to the consumers that follow it
//! ([`TrafficPush`] on [`TRAFFIC_TOPIC`]), and admins change them one rule at a time
//! ([`RulesEdit`]). `docs/PROTOCOL.md` §20 describes both for other-language clients.

use serde::{Deserialize, Serialize};

use super::rules::{Fault, Route, Rules, ServiceRules};
use crate::error::{Error, ErrorKind};

/// Feature a registry announces (in its `HelloAck` and login answers) when it keeps traffic
/// rules and answers `traffic`; consumers follow rules only from such a registry.
pub const FEATURE_TRAFFIC: &str = "traffic.rules";

/// Notification topic of [`TrafficPush`]es (services followed with `traffic`).
pub const TRAFFIC_TOPIC: &str = "stardust.traffic";

/// A followed service's rules changed: here they are, whole (empty when its last rule went).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficPush {
    /// The service.
    pub service: String,
    /// Its rules now; `rules.revision` orders pushes (a consumer ignores one older than what
    /// it holds).
    pub rules: ServiceRules,
}

/// One change to the rules, as an admin makes it (`stardust-registry route|fault set|rm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RulesEdit {
    /// Adds a route to the end of `service`'s routes, or replaces the route of the same name
    /// where it stands.
    SetRoute {
        /// The service.
        service: String,
        /// The route.
        route: Route,
    },
    /// Removes `service`'s route named `name`.
    RemoveRoute {
        /// The service.
        service: String,
        /// The route's name.
        name: String,
    },
    /// Adds a fault to the end of `service`'s faults, or replaces the fault of the same name
    /// where it stands.
    SetFault {
        /// The service.
        service: String,
        /// The fault.
        fault: Fault,
    },
    /// Removes `service`'s fault named `name`.
    RemoveFault {
        /// The service.
        service: String,
        /// The fault's name.
        name: String,
    },
}

impl RulesEdit {
    /// The service the edit changes.
    pub fn service(&self) -> &str {
        match self {
            RulesEdit::SetRoute { service, .. }
            | RulesEdit::RemoveRoute { service, .. }
            | RulesEdit::SetFault { service, .. }
            | RulesEdit::RemoveFault { service, .. } => service,
        }
    }
}

impl Rules {
    /// The rules after `edit`, at the next revision, validated; `self` is unchanged. Removing
    /// a rule that does not exist is an error naming it; a service left without rules is
    /// dropped.
    pub fn edited(&self, edit: &RulesEdit) -> Result<Rules, Error> {
        let mut next = self.clone();
        next.revision = self.revision + 1;
        let service = edit.service();
        let rules = next.services.entry(service.to_owned()).or_default();
        fn set<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
            match list.iter_mut().find(|x| same(x)) {
                Some(slot) => *slot = item,
                None => list.push(item),
            }
        }
        fn remove<T>(list: &mut Vec<T>, same: impl Fn(&T) -> bool) -> bool {
            let before = list.len();
            list.retain(|x| !same(x));
            list.len() < before
        }
        let removed = match edit {
            RulesEdit::SetRoute { route, .. } => {
                set(&mut rules.routes, route.clone(), |r| r.name == route.name);
                true
            }
            RulesEdit::SetFault { fault, .. } => {
                set(&mut rules.faults, fault.clone(), |f| f.name == fault.name);
                true
            }
            RulesEdit::RemoveRoute { name, .. } => remove(&mut rules.routes, |r| &r.name == name),
            RulesEdit::RemoveFault { name, .. } => remove(&mut rules.faults, |f| &f.name == name),
        };
        if !removed {
            let (what, name) = match edit {
                RulesEdit::RemoveRoute { name, .. } => ("route", name),
                RulesEdit::RemoveFault { name, .. } => ("fault", name),
                _ => unreachable!("set always applies"),
            };
            return Err(Error::new(
                ErrorKind::InvalidArguments,
                format!("service `{service}` has no {what} named `{name}`"),
            ));
        }
        rules.revision = next.revision;
        if rules.routes.is_empty() && rules.faults.is_empty() {
            next.services.remove(service);
        }
        next.validate()?;
        Ok(next)
    }

    /// `service`'s rules (empty, at revision 0, when it has none).
    pub fn service(&self, service: &str) -> ServiceRules {
        self.services.get(service).cloned().unwrap_or_default()
    }
}
