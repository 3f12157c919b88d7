//! The JSON of the console's chart (`/api/history`): calls/s and errors/s per service, one
//! sample per history slot.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ms, round3};
use crate::monitor::{HISTORY_SLOT, HISTORY_SLOTS, Snapshot};

#[derive(Serialize)]
pub(crate) struct HistoryView {
    /// Width of one sample.
    slot_ms: u64,
    now_ms: u64,
    services: BTreeMap<String, SeriesView>,
}

#[derive(Serialize)]
struct SeriesView {
    /// Start of the last sample's slot (Unix epoch ms); sample `i` of `n` starts
    /// `(n - 1 - i) * slot_ms` before it.
    end_ms: u64,
    calls_per_s: Vec<Option<f64>>,
    errors_per_s: Vec<Option<f64>>,
}

/// `/api/history[?minutes=M]`: calls/s and errors/s per service, one sample per slot.
pub(crate) fn history(snap: &Snapshot, minutes: Option<u64>) -> HistoryView {
    let slot_ms = ms(HISTORY_SLOT);
    let keep = minutes.map_or(HISTORY_SLOTS, |m| {
        ((m.saturating_mul(60_000) / slot_ms) as usize).clamp(1, HISTORY_SLOTS)
    });
    let services = snap
        .services
        .iter()
        .map(|(name, e)| {
            let h = &e.history;
            let skip = h.samples.len().saturating_sub(keep);
            let samples = h.samples.iter().skip(skip);
            (
                name.clone(),
                SeriesView {
                    end_ms: h.last_slot * slot_ms,
                    calls_per_s: samples.clone().map(|s| s.map(|s| round3(s.0))).collect(),
                    errors_per_s: samples.map(|s| s.map(|s| round3(s.1))).collect(),
                },
            )
        })
        .collect();
    HistoryView {
        slot_ms,
        now_ms: snap.now_ms,
        services,
    }
}
