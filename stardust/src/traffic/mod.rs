//! Traffic management and fault injection: which subset of a service's instances a call may go
//! to ([`Route`]), and whether it is delayed or failed on purpose ([`Fault`]).
//!
//! Operators set the rules centrally, in the registry (`stardust-registry route|fault set`, as
//! an app with the `admin` role); the registry pushes each service's rules to the consumers and
//! sidecar agents that call it, which apply them to every call started after they arrived. A
//! consumer evaluates them itself: the first matching route draws a subset by weight, the
//! balancer picks within it; the first matching fault whose roll hits delays the call before
//! it is sent, or fails it without sending it. Injected faults never count against a provider
//! (no ejection, no retry budget, no hedging, no retry), are counted in the registry's
//! `stardust_faults_injected_total` and are marked in the call's trace span (field `fault`).
//! A consumer can refuse faults altogether:
//! [`StardustBuilder::faults`](crate::StardustBuilder::faults).
//!
//! ```
//! use stardust::traffic::{Fallback, Match, Route, Rules, RulesEdit, Weighted};
//!
//! // 95% of calls to the versions `^1.4`, 5% to instances tagged `canary`.
//! let route = Route {
//!     name: "canary".into(),
//!     matches: Match::default(),
//!     to: vec![
//!         Weighted { weight: 95, subset: "^1.4".into() },
//!         Weighted { weight: 5, subset: "tag:canary".into() },
//!     ],
//!     fallback: Fallback::All,
//! };
//! let edit = RulesEdit::SetRoute { service: "calc.Calculator".into(), route };
//! let rules = Rules::default().edited(&edit).unwrap();
//! assert_eq!(rules.revision, 1);
//! ```

mod apply;
mod rules;
mod wire;

use std::collections::BTreeMap;

use crate::error::ErrorKind;
use crate::metadata::Metadata;
pub(crate) use apply::{Injected, Routed, TrafficContext};
pub use rules::{
    Fallback, Fault, FaultAction, MAX_RULES_PER_SERVICE, Match, Route, Rules, ServiceRules,
    Weighted,
};
pub use wire::{FEATURE_TRAFFIC, RulesEdit, TRAFFIC_TOPIC, TrafficPush};

/// A set of a service's instances a route may send calls to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Subset {
    /// Instances whose version meets the requirement (`*`: all).
    Version(semver::VersionReq),
    /// Instances carrying the tag, with this value if one is given.
    Tag { name: String, value: Option<String> },
}

impl Subset {
    /// Parses a subset as rules write it: `tag:NAME`, `tag:NAME=VALUE`, or a version
    /// requirement.
    pub(crate) fn parse(spec: &str) -> Result<Subset, String> {
        if let Some(tag) = spec.strip_prefix("tag:") {
            let (name, value) = match tag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (tag, None),
            };
            if name.is_empty() {
                return Err(format!(
                    "`{spec}` names no tag: write `tag:NAME` or `tag:NAME=VALUE`"
                ));
            }
            return Ok(Subset::Tag {
                name: name.to_owned(),
                value,
            });
        }
        semver::VersionReq::parse(spec).map(Subset::Version).map_err(|e| {
            format!(
                "`{spec}` is neither a version requirement (e.g. `^1.4`, `=2.0.1`, `*`: {e}) nor \
                 a tag (`tag:NAME` or `tag:NAME=VALUE`)"
            )
        })
    }

    /// The subset as rules write it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Subset::Version(req) => req.to_string(),
            Subset::Tag { name, value: None } => format!("tag:{name}"),
            Subset::Tag {
                name,
                value: Some(v),
            } => format!("tag:{name}={v}"),
        }
    }

    /// Whether an instance of `version` with `tags` belongs to the subset. An instance whose
    /// version does not parse belongs to no version subset.
    pub(crate) fn admits(&self, version: &str, tags: &BTreeMap<String, String>) -> bool {
        match self {
            Subset::Version(req) => semver::Version::parse(version).is_ok_and(|v| req.matches(&v)),
            Subset::Tag { name, value } => match (tags.get(name), value) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            },
        }
    }
}

/// The `ErrorKind` a fault's `error` names.
pub(crate) fn error_kind(name: &str) -> Result<ErrorKind, String> {
    // Every kind has a code below 64; unknown codes map to `Internal` (code 1, found first).
    (1..64u16)
        .map(ErrorKind::from_code)
        .find(|k| format!("{k:?}") == name)
        .ok_or_else(|| {
            format!(
                "`{name}` is not an error kind (e.g. `Overloaded`, `Internal`, `DeadlineExceeded`)"
            )
        })
}

/// What the rules look at in a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallFacts<'a> {
    /// The calling app (empty when unknown).
    pub(crate) caller: &'a str,
    pub(crate) method: &'a str,
    pub(crate) meta: &'a Metadata,
}

impl Match {
    /// Whether `call` meets every condition.
    pub(crate) fn matches(&self, call: &CallFacts<'_>) -> bool {
        (self.callers.is_empty() || self.callers.iter().any(|c| c == call.caller))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == call.method))
            && self.metadata.iter().all(|(key, want)| {
                call.meta
                    .get(key)
                    .is_some_and(|have| want == "*" || have == want)
            })
    }
}

/// A source of uniform random numbers for routing and fault decisions: xorshift64*, seeded.
#[derive(Debug, Clone)]
pub(crate) struct Dice(u64);

impl Dice {
    /// Dice starting from `seed` (any value; 0 is replaced).
    pub(crate) fn seeded(seed: u64) -> Dice {
        Dice(seed.max(1))
    }

    /// The next number.
    pub(crate) fn roll(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0), without the modulo bias that matters at these sizes.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.roll()) * u128::from(n)) >> 64) as u64
    }
}

/// One service's rules, ready to apply.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceTraffic {
    routes: Vec<CompiledRoute>,
    faults: Vec<Fault>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRoute {
    pub(crate) name: String,
    matches: Match,
    pub(crate) to: Vec<(u32, Subset)>,
    total: u64,
    pub(crate) fallback: Fallback,
}

/// Where a route sends a call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteChoice<'a> {
    /// The route's place among the compiled routes, and the destination's among its own.
    pub(crate) index: (usize, usize),
    /// The route's name.
    pub(crate) route: &'a str,
    #[cfg_attr(not(test), allow(dead_code))] // the call path uses `index`
    pub(crate) subset: &'a Subset,
    pub(crate) fallback: Fallback,
}

impl ServiceTraffic {
    /// Prepares validated rules (see [`Rules::validate`]) for the calls of `caller` (`None`:
    /// any caller; rules naming other callers are left out now rather than checked per call),
    /// with or without the faults. A subset that does not parse is left out.
    pub(crate) fn new(rules: &ServiceRules, caller: Option<&str>, faults: bool) -> ServiceTraffic {
        // Whether the rule applies to this caller; it then needs no caller check per call.
        let for_caller = |m: &Match| -> Option<Match> {
            match caller {
                Some(c) if !m.callers.is_empty() && !m.callers.iter().any(|x| x == c) => None,
                Some(_) => Some(Match {
                    callers: Vec::new(),
                    ..m.clone()
                }),
                None => Some(m.clone()),
            }
        };
        let routes = rules
            .routes
            .iter()
            .filter_map(|r| {
                let matches = for_caller(&r.matches)?;
                let to: Vec<(u32, Subset)> =
                    r.to.iter()
                        .filter_map(|w| Subset::parse(&w.subset).ok().map(|s| (w.weight, s)))
                        .collect();
                Some(CompiledRoute {
                    name: r.name.clone(),
                    matches,
                    total: to.iter().map(|(w, _)| u64::from(*w)).sum(),
                    to,
                    fallback: r.fallback,
                })
            })
            .filter(|r| r.total > 0)
            .collect();
        let faults = if faults {
            rules
                .faults
                .iter()
                .filter_map(|f| {
                    Some(Fault {
                        matches: for_caller(&f.matches)?,
                        ..f.clone()
                    })
                })
                .filter(|f| f.percent > 0.0)
                .collect()
        } else {
            Vec::new()
        };
        ServiceTraffic { routes, faults }
    }

    /// Whether there is anything to apply.
    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.faults.is_empty()
    }

    /// The compiled routes, in order.
    pub(crate) fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The subset the first route matching `call` draws for it, by weight; `None` when no
    /// route matches (the call may go to any instance).
    pub(crate) fn route(&self, call: &CallFacts<'_>, dice: &mut Dice) -> Option<RouteChoice<'_>> {
        let (i, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches.matches(call))?;
        let mut point = dice.below(route.total);
        let (j, subset) = route
            .to
            .iter()
            .enumerate()
            .find_map(|(j, (weight, subset))| {
                if point < u64::from(*weight) {
                    Some((j, subset))
                } else {
                    point -= u64::from(*weight);
                    None
                }
            })?;
        Some(RouteChoice {
            index: (i, j),
            route: &route.name,
            subset,
            fallback: route.fallback,
        })
    }

    /// The fault to inject into `call`: the first matching fault whose roll hits (each matching
    /// fault rolls once, in order).
    pub(crate) fn fault(&self, call: &CallFacts<'_>, dice: &mut Dice) -> Option<&Fault> {
        self.faults
            .iter()
            .filter(|f| f.matches.matches(call))
            .find(|f| {
                // Millionths of a percent: 12.5% hits 12,500,000 of 100,000,000.
                let hits = (f.percent * 1_000_000.0).round() as u64;
                dice.below(100_000_000) < hits
            })
    }
}

#[cfg(test)]
mod tests;
