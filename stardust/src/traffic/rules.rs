//! Traffic rules as operators write them and the registry stores and pushes them: routes (which
//! subset of a service's instances a call goes to) and faults (delays and aborts injected into a
//! share of calls), per service, under one revision.
//!
//! The same types are read from TOML (the CLI) and MessagePack (the registry API), so field
//! names are the documented ones. [`Rules::validate`] refuses what cannot be applied, naming the
//! field; a rule for a service nobody provides yet is fine (it may register later).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

/// Every service's rules, and the revision the registry gave this set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Increases with every change the registry accepts.
    #[serde(default)]
    pub revision: u64,
    /// By service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRules>,
}

/// The routes and faults of one service. Routes are tried in order: the first that matches a
/// call decides where it goes. Faults likewise: the first that matches and whose dice roll hits
/// is injected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRules {
    /// The [`Rules::revision`] at which this service's rules last changed (set by the
    /// registry; what a consumer names to ask whether they changed since).
    #[serde(default)]
    pub revision: u64,
    /// Tried in order; the first that matches a call routes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Tried in order; the first that matches a call and whose roll hits is injected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
}

/// Which calls a route or fault applies to: all that match every condition given (none given:
/// every call).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The calling apps (their registry app names); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<String>,
    /// Method names; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Call metadata the call must carry: each key with this value, or with any value for `*`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Sends the calls it matches to subsets of the service's instances, by weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Named in errors and metrics; unique among the service's routes.
    pub name: String,
    /// The calls it applies to.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// Where the calls go: each subset gets `weight` out of the weights' sum.
    pub to: Vec<Weighted>,
    /// What a call does when the subset drawn for it has no instance.
    #[serde(default)]
    pub fallback: Fallback,
}

/// One destination of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighted {
    /// A share, relative to the route's other destinations (at least 1).
    pub weight: u32,
    /// The instances: a version requirement (`^1.4`, `=2.0.1`, `*`), or a tag: `tag:NAME`
    /// (instances that have the tag) or `tag:NAME=VALUE`.
    pub subset: String,
}

/// What a routed call does when its subset is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Go to any instance of the service, as if the route did not exist.
    #[default]
    All,
    /// Fail with `NoProvider`, naming the route.
    Fail,
}

/// Injects a delay or an error into a share of the calls it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Named in errors, metrics and the trace span; unique among the service's faults.
    pub name: String,
    /// The calls it applies to.
    #[serde(default, rename = "match")]
    pub matches: Match,
    /// The share of matching calls it hits, in percent (0 to 100, fractions allowed).
    pub percent: f64,
    /// What it does to them.
    #[serde(flatten)]
    pub action: FaultAction,
}

/// What a fault does to a call it hits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FaultAction {
    /// Hold the call this long before sending it.
    Delay {
        /// Milliseconds (at least 1).
        delay_ms: u64,
    },
    /// Fail the call at once, without sending it, with this error kind (its `ErrorKind` name,
    /// e.g. `Overloaded` or `Internal`).
    Abort {
        /// The `ErrorKind` name.
        error: String,
    },
}

/// Most routes and most faults one service may have.
pub const MAX_RULES_PER_SERVICE: usize = 64;

fn invalid(path: &str, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidArguments, format!("{path}: {why}"))
}

impl Rules {
    /// Checks that every rule can be applied; the error names the first bad field, e.g.
    /// `services."calc.Calculator".faults[0].percent: 120 is over 100`.
    pub fn validate(&self) -> Result<(), Error> {
        for (service, rules) in &self.services {
            if service.is_empty() {
                return Err(invalid("services", "a service name is empty"));
            }
            rules.validate(&format!("services.{service:?}"))?;
        }
        Ok(())
    }
}

impl ServiceRules {
    fn validate(&self, path: &str) -> Result<(), Error> {
        if self.routes.len() > MAX_RULES_PER_SERVICE || self.faults.len() > MAX_RULES_PER_SERVICE {
            return Err(invalid(
                path,
                format!(
                    "at most {MAX_RULES_PER_SERVICE} routes and {MAX_RULES_PER_SERVICE} faults"
                ),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(&format!("{path}.routes[{i}]"))?;
            if self.routes[..i].iter().any(|r| r.name == route.name) {
                return Err(invalid(
                    &format!("{path}.routes[{i}].name"),
                    format!("another route is named `{}`", route.name),
                ));
            }
        }
        for (i, fault) in self.faults.iter().enumerate() {
            fault.validate(&format!("{path}.faults[{i}]"))?;
            if self.faults[..i].iter().any(|f| f.name == fault.name) {
                return Err(invalid(
                    &format!("{path}.faults[{i}].name"),
                    format!("another fault is named `{}`", fault.name),
                ));
            }
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self, path: &str) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(invalid(&format!("{path}.name"), "a route needs a name"));
        }
        if self.to.is_empty() {
            return Err(invalid(
                &format!("{path}.to"),
                "a route needs at least one destination (`to = [{ weight = 100, subset = \"^1\" }]`)",
            ));
        }
        for (i, w) in self.to.iter().enumerate() {
            if w.weight == 0 {
                return Err(invalid(
                    &format!("{path}.to[{i}].weight"),
                    "a weight is at least 1",
                ));
            }
            if let Err(why) = super::Subset::parse(&w.subset) {
                return Err(invalid(&format!("{path}.to[{i}].subset"), why));
            }
        }
        if self.to.iter().map(|w| u64::from(w.weight)).sum::<u64>() > u64::from(u32::MAX) {
            return Err(invalid(
                &format!("{path}.to"),
                "the weights add up to more than 2^32",
            ));
        }
        Ok(())
    }
}

impl Fault {
    fn validate(&self, path: &str) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(invalid(&format!("{path}.name"), "a fault needs a name"));
        }
        if !(0.0..=100.0).contains(&self.percent) {
            return Err(invalid(
                &format!("{path}.percent"),
                format!("{} is not a percentage from 0 to 100", self.percent),
            ));
        }
        match &self.action {
            FaultAction::Delay { delay_ms: 0 } => Err(invalid(
                &format!("{path}.delay_ms"),
                "a delay is at least 1 ms",
            )),
            FaultAction::Delay { .. } => Ok(()),
            FaultAction::Abort { error } => super::error_kind(error)
                .map(|_| ())
                .map_err(|why| invalid(&format!("{path}.error"), why)),
        }
    }
}
