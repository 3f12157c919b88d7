//! Applying one service's rules to its instances, per call.
//!
//! A [`Routed`] is built when the rules or the instance list change (rarely): it holds, for
//! every destination of every route, the instances in that subset. A call then only matches,
//! rolls and takes a list that is already there: no allocation, no lock beyond the one that
//! hands out the `Routed`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::rules::{Fallback, FaultAction, ServiceRules};
use super::{CallFacts, Dice, ServiceTraffic};
use crate::balance::Target;
use crate::error::{Error, ErrorKind};
use crate::metadata::Metadata;

/// What a process's rules have in common: who calls, whether it takes faults, its dice, and
/// the count of faults injected (for status reports).
#[derive(Debug)]
pub(crate) struct TrafficContext {
    /// The app this process calls as (rules naming other callers do not apply).
    pub(crate) caller: String,
    /// Faults are injected (the default); `false`: the consumer opted out.
    pub(crate) faults: bool,
    seed: u64,
    calls: AtomicU64,
    /// Faults injected since the last report: (service, fault, kind) → count.
    injected: Mutex<BTreeMap<(String, String, &'static str), u64>>,
}

impl TrafficContext {
    /// A context whose dice start from `seed` (one roll sequence per process: calls made one
    /// after another get the same decisions in every run with the same seed).
    pub(crate) fn new(caller: String, faults: bool, seed: u64) -> TrafficContext {
        TrafficContext {
            caller,
            faults,
            seed,
            calls: AtomicU64::new(0),
            injected: Mutex::new(BTreeMap::new()),
        }
    }

    /// Dice for one call: the seed's sequence at the next position, mixed (splitmix64), so
    /// concurrent calls draw independent numbers without sharing a lock.
    fn dice(&self) -> Dice {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Dice::seeded(z ^ (z >> 31))
    }

    fn count(&self, service: &str, fault: &str, kind: &'static str) {
        *self
            .injected
            .lock()
            .entry((service.to_owned(), fault.to_owned(), kind))
            .or_default() += 1;
    }

    /// The faults injected since the last call: (service, fault, kind, count).
    pub(crate) fn take_injected(&self) -> Vec<(String, String, &'static str, u64)> {
        std::mem::take(&mut *self.injected.lock())
            .into_iter()
            .map(|((service, fault, kind), n)| (service, fault, kind, n))
            .collect()
    }
}

/// A fault a call carries.
#[derive(Debug, Clone)]
pub(crate) enum Injected {
    /// Hold the call this long before sending it.
    Delay(Duration),
    /// Fail it with this error, unsent.
    Abort(Error),
}

/// What the rules decided for one call.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The instances the call may go to (a route's subset, or every instance).
    pub(crate) targets: Arc<[Target]>,
    /// The fault it carries, with the fault's name.
    pub(crate) fault: Option<(Arc<str>, Injected)>,
}

/// One service's rules over its current instances.
#[derive(Debug)]
pub(crate) struct Routed {
    service: Arc<str>,
    traffic: ServiceTraffic,
    /// Per route, per destination: the instances in the subset.
    subsets: Vec<Vec<Arc<[Target]>>>,
    /// The faults' names, shared by the calls that carry them.
    fault_names: Vec<Arc<str>>,
    context: Arc<TrafficContext>,
}

impl Routed {
    /// `rules` applied to the `instances` (version and tags) behind `targets` (same order);
    /// `None` when nothing applies to this process's calls.
    pub(crate) fn new<'a>(
        service: &str,
        rules: &ServiceRules,
        context: &Arc<TrafficContext>,
        instances: impl Iterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
        targets: &[Target],
    ) -> Option<Routed> {
        let traffic = ServiceTraffic::new(rules, Some(&context.caller), context.faults);
        if traffic.is_empty() {
            return None;
        }
        let instances: Vec<_> = instances.collect();
        let subsets = traffic
            .routes()
            .iter()
            .map(|route| {
                route
                    .to
                    .iter()
                    .map(|(_, subset)| {
                        instances
                            .iter()
                            .zip(targets)
                            .filter(|((version, tags), _)| subset.admits(version, tags))
                            .map(|(_, t)| t.clone())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let fault_names = traffic.faults.iter().map(|f| Arc::from(&*f.name)).collect();
        Some(Routed {
            service: Arc::from(service),
            traffic,
            subsets,
            fault_names,
            context: context.clone(),
        })
    }

    /// Decides where a call of `method` with `meta` goes among `all` (every instance), and
    /// whether it carries a fault (only when `faults`: a stream opened again takes none).
    /// `Err`: its route's subset is empty and the route says to fail (`NoProvider`, naming the
    /// route).
    pub(crate) fn decide(
        &self,
        method: &str,
        meta: &Metadata,
        all: &Arc<[Target]>,
        faults: bool,
    ) -> Result<Decision, Error> {
        let call = CallFacts {
            caller: &self.context.caller,
            method,
            meta,
        };
        let mut dice = self.context.dice();
        let targets = match self.traffic.route(&call, &mut dice) {
            None => all.clone(),
            Some(choice) => {
                let (i, j) = choice.index;
                let subset = &self.subsets[i][j];
                match (subset.is_empty(), choice.fallback) {
                    (false, _) => subset.clone(),
                    (true, Fallback::All) => all.clone(),
                    (true, Fallback::Fail) => {
                        let spec = &self.traffic.routes()[i].to[j].1;
                        return Err(Error::new(
                            ErrorKind::NoProvider,
                            format!(
                                "route `{}` of service `{}` sends this call to `{}`, which has \
                                 no live instance (the route's fallback is `fail`)",
                                choice.route,
                                self.service,
                                spec.describe()
                            ),
                        ));
                    }
                }
            }
        };
        let hit = if faults {
            self.traffic.fault(&call, &mut dice)
        } else {
            None
        };
        let fault = hit.map(|f| {
            let index = self
                .traffic
                .faults
                .iter()
                .position(|x| std::ptr::eq(x, f))
                .unwrap_or(0);
            let name = self.fault_names[index].clone();
            let injected = match &f.action {
                FaultAction::Delay { delay_ms } => {
                    self.context.count(&self.service, &f.name, "delay");
                    Injected::Delay(Duration::from_millis(*delay_ms))
                }
                FaultAction::Abort { error } => {
                    self.context.count(&self.service, &f.name, "abort");
                    let kind = super::error_kind(error).unwrap_or(ErrorKind::Internal);
                    Injected::Abort(Error::new(
                        kind,
                        format!(
                            "fault `{}` injected into this call of {}.{method} by the \
                             registry's traffic rules (a drill, not an outage)",
                            f.name, self.service
                        ),
                    ))
                }
            };
            (name, injected)
        });
        Ok(Decision { targets, fault })
    }
}
