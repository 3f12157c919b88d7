//! Percentiles and the way figures are written in the report.

use std::time::Duration;

/// p50 / p99 / max of a set of durations (nearest rank), in milliseconds; `None` when empty.
pub fn percentiles_ms(samples: &[Duration]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = |p: f64| {
        let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        ms(sorted[i])
    };
    Some((rank(0.50), rank(0.99), ms(sorted[sorted.len() - 1])))
}

/// `p50 **12.3** / p99 **45.6** / max 78.9 ms`, or `none`.
pub fn latency_cell(samples: &[Duration]) -> String {
    match percentiles_ms(samples) {
        None => "none".to_owned(),
        Some((p50, p99, max)) => format!(
            "p50 **{}** / p99 **{}** / max {} ms",
            round(p50),
            round(p99),
            round(max)
        ),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Three significant digits at most, no trailing zeros that mean nothing.
pub fn round(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn secs(d: Duration) -> String {
    round(d.as_secs_f64())
}

pub fn mb(bytes: u64) -> String {
    format!("{} MB", bytes / (1024 * 1024))
}
