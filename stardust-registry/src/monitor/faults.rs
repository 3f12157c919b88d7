//! Faults the consumers injected, as their status reports count them (`Status.faults`, each
//! report the window since the previous one): totals per service, fault and kind since the
//! registry started, for `/metrics` and `/api`.
//!
//! Bounded like the other tables: at most [`MAX_FAULT_SERIES`] (service, fault, kind) series
//! (figures for further ones are dropped), at most [`MAX_REPORT_FAULTS`] entries read from one
//! report, names at most [`MAX_NAME_LEN`] bytes. A report costs a lookup per entry it carries,
//! never a walk over the table.

use std::collections::BTreeMap;

use stardust::discovery::api::FaultCount;

/// (service, fault, kind) series tracked; figures for further series are dropped.
pub(crate) const MAX_FAULT_SERIES: usize = 1024;
/// Fault entries read from one report; the rest are ignored. (A consumer reports each fault it
/// applied once per window, and a service has at most `MAX_RULES_PER_SERVICE` faults.)
pub(crate) const MAX_REPORT_FAULTS: usize = MAX_FAULT_SERIES;
/// Longest service or fault name accepted from a report.
const MAX_NAME_LEN: usize = 256;

/// What a fault did to the calls it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    Delay,
    Abort,
}

impl FaultKind {
    pub(crate) const ALL: [FaultKind; 2] = [FaultKind::Delay, FaultKind::Abort];

    fn parse(kind: &str) -> Option<FaultKind> {
        match kind {
            "delay" => Some(FaultKind::Delay),
            "abort" => Some(FaultKind::Abort),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Abort => "abort",
        }
    }
}

/// Calls one fault hit, by kind (a fault's kind may change when an admin edits it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FaultCounts([u64; 2]);

impl FaultCounts {
    pub(crate) fn get(&self, kind: FaultKind) -> u64 {
        self.0[kind as usize]
    }

    /// The kinds it counted (a series each), with their counts.
    pub(crate) fn series(&self) -> impl Iterator<Item = (FaultKind, u64)> + '_ {
        FaultKind::ALL
            .into_iter()
            .map(|k| (k, self.get(k)))
            .filter(|(_, n)| *n > 0)
    }

    pub(crate) fn total(&self) -> u64 {
        self.0[0].saturating_add(self.0[1])
    }
}

/// The injected-fault totals since the registry started.
#[derive(Debug, Clone, Default)]
pub(crate) struct FaultTotals {
    /// By service, then fault name.
    pub(crate) by_service: BTreeMap<String, BTreeMap<String, FaultCounts>>,
    /// Series counted (non-zero (service, fault, kind) counts).
    series: usize,
}

impl FaultTotals {
    /// Adds a report's entries (malformed ones, and new series past the bound, are dropped).
    pub(crate) fn add(&mut self, reported: &[FaultCount]) {
        for f in reported.iter().take(MAX_REPORT_FAULTS) {
            let Some(kind) = FaultKind::parse(&f.kind) else {
                continue;
            };
            if f.count == 0
                || f.service.is_empty()
                || f.fault.is_empty()
                || f.service.len() > MAX_NAME_LEN
                || f.fault.len() > MAX_NAME_LEN
            {
                continue;
            }
            // The common case, an existing series: lookups only, no allocation.
            if let Some(counts) = self
                .by_service
                .get_mut(f.service.as_str())
                .and_then(|s| s.get_mut(f.fault.as_str()))
                && counts.get(kind) > 0
            {
                let n = &mut counts.0[kind as usize];
                *n = n.saturating_add(f.count);
                continue;
            }
            if self.series >= MAX_FAULT_SERIES {
                continue;
            }
            self.series += 1;
            let counts = self
                .by_service
                .entry(f.service.clone())
                .or_default()
                .entry(f.fault.clone())
                .or_default();
            counts.0[kind as usize] = f.count;
        }
    }

    /// Every series: (service, fault, kind, count), ordered.
    pub(crate) fn series(&self) -> impl Iterator<Item = (&str, &str, FaultKind, u64)> + '_ {
        self.by_service.iter().flat_map(|(service, faults)| {
            faults.iter().flat_map(move |(fault, counts)| {
                counts
                    .series()
                    .map(move |(kind, n)| (service.as_str(), fault.as_str(), kind, n))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, fault: &str, kind: &str, count: u64) -> FaultCount {
        FaultCount {
            service: service.into(),
            fault: fault.into(),
            kind: kind.into(),
            count,
        }
    }

    #[test]
    fn reports_add_up_per_service_fault_and_kind() {
        let mut t = FaultTotals::default();
        t.add(&[
            entry("calc.C", "slow", "delay", 3),
            entry("calc.C", "boom", "abort", 1),
        ]);
        t.add(&[
            entry("calc.C", "slow", "delay", 4),
            // The fault became an abort after an edit: a series of its own.
            entry("calc.C", "slow", "abort", 2),
            entry("calc.C", "boom", "abort", 0),
            entry("calc.C", "odd", "explode", 9),
            entry("", "x", "delay", 1),
            entry("calc.C", &"f".repeat(MAX_NAME_LEN + 1), "delay", 1),
        ]);
        let all: Vec<_> = t.series().collect();
        assert_eq!(
            all,
            [
                ("calc.C", "boom", FaultKind::Abort, 1),
                ("calc.C", "slow", FaultKind::Delay, 7),
                ("calc.C", "slow", FaultKind::Abort, 2),
            ]
        );
        assert_eq!(t.by_service["calc.C"]["slow"].total(), 9);
        assert_eq!(t.series, 3);
    }

    #[test]
    fn the_table_and_each_report_are_bounded() {
        let mut t = FaultTotals::default();
        let many: Vec<_> = (0..MAX_FAULT_SERIES + 10)
            .map(|i| entry(&format!("s{}", i % 7), &format!("f{i}"), "delay", 1))
            .collect();
        t.add(&many);
        assert_eq!(t.series().count(), MAX_REPORT_FAULTS.min(MAX_FAULT_SERIES));
        // Full: known series still count, new ones are dropped.
        t.add(&[
            entry("s0", "f0", "delay", 5),
            entry("s0", "f0", "abort", 5),
            entry("new", "f", "delay", 5),
        ]);
        assert_eq!(t.by_service["s0"]["f0"].get(FaultKind::Delay), 6);
        assert_eq!(t.by_service["s0"]["f0"].get(FaultKind::Abort), 0);
        assert!(!t.by_service.contains_key("new"));
        assert_eq!(t.series().count(), MAX_FAULT_SERIES);
    }
}
