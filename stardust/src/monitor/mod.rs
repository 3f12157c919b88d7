//! What providers and consumers measure about their calls, and the status reports that carry
//! it to the registry.
//!
//! - [`figures`]: per-method (or per-provider) call counts, failures by kind and latency,
//!   recorded on the call path without a shared lock, read once per report window.
//! - [`ServiceFigures`]: the figures of every method of one hosted service.
//! - [`process`]: CPU and memory of the process.

pub(crate) mod figures;
pub(crate) mod process;

use crate::protocol::registry::{ErrorCount, Latency, MethodFigures, Status};
use crate::service::ServiceDescriptor;
pub(crate) use figures::Figures;

/// Whether a `tracing` subscriber may want the per-call debug spans: two loads, so the call
/// path builds no span at all (not even a disabled one, which with `tracing`'s `log` feature
/// still records its fields) when nobody listens.
#[inline]
pub(crate) fn spans_enabled() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    STATIC_MAX_LEVEL >= LevelFilter::DEBUG && LevelFilter::current() >= LevelFilter::DEBUG
}

/// The figures of each method of one hosted service, indexed like its descriptor's methods.
pub(crate) struct ServiceFigures {
    descriptor: &'static ServiceDescriptor,
    methods: Box<[Figures]>,
}

impl ServiceFigures {
    pub(crate) fn new(descriptor: &'static ServiceDescriptor) -> ServiceFigures {
        ServiceFigures {
            descriptor,
            methods: descriptor
                .methods
                .iter()
                .map(|_| Figures::default())
                .collect(),
        }
    }

    /// The figures of method number `index`.
    pub(crate) fn method(&self, index: usize) -> &Figures {
        &self.methods[index]
    }

    /// Every method's window (methods with nothing to tell are left out).
    pub(crate) fn take_windows(&self, into: &mut Vec<MethodFigures>) {
        for (m, figures) in self.descriptor.methods.iter().zip(self.methods.iter()) {
            let w = figures.take_window();
            if w.calls == 0 && w.in_flight == 0 && w.errors.is_empty() {
                continue;
            }
            into.push(MethodFigures {
                service: self.descriptor.name.to_owned(),
                method: m.name.to_owned(),
                calls: w.calls,
                errors: w.errors,
                in_flight: w.in_flight,
                latency: w.latency,
                items_in: w.items_in,
                items_out: w.items_out,
                slowest: w.slowest,
                failed: w.failed,
            });
        }
    }
}

/// Folds the figures of a report that could not be sent (`earlier`) into the next one, so no
/// call goes uncounted across a registry outage. Process facts stay the newer report's; the
/// merged percentiles are the larger of the two windows' (an upper bound); of the exemplars, the
/// slower call and the newer failure.
pub(crate) fn carry_over(status: &mut Status, earlier: Status) {
    status.window_ms += earlier.window_ms;
    status.cpu_ms += earlier.cpu_ms;
    for old in earlier.served {
        match status
            .served
            .iter_mut()
            .find(|m| m.service == old.service && m.method == old.method)
        {
            Some(m) => {
                m.calls += old.calls;
                add_errors(&mut m.errors, &old.errors);
                add_latency(&mut m.latency, &old.latency);
                if let Some(e) = old.slowest
                    && m.slowest
                        .as_ref()
                        .is_none_or(|s| s.latency_us < e.latency_us)
                {
                    m.slowest = Some(e);
                }
                m.failed = m.failed.take().or(old.failed);
            }
            None => status.served.push(old),
        }
    }
    for old in earlier.called {
        match status
            .called
            .iter_mut()
            .find(|c| c.endpoint == old.endpoint && c.service == old.service)
        {
            Some(c) => {
                c.calls += old.calls;
                add_errors(&mut c.errors, &old.errors);
                add_latency(&mut c.latency, &old.latency);
            }
            None => status.called.push(old),
        }
    }
}

fn add_errors(into: &mut Vec<ErrorCount>, more: &[ErrorCount]) {
    for e in more {
        match into.iter_mut().find(|x| x.code == e.code) {
            Some(x) => x.count += e.count,
            None => into.push(*e),
        }
    }
}

fn add_latency(into: &mut Latency, more: &Latency) {
    if more.buckets.is_empty() {
        return;
    }
    if into.buckets.is_empty() {
        *into = more.clone();
        return;
    }
    for (a, b) in into.buckets.iter_mut().zip(&more.buckets) {
        *a += b;
    }
    into.sum_us += more.sum_us;
    into.p50_us = into.p50_us.max(more.p50_us);
    into.p90_us = into.p90_us.max(more.p90_us);
    into.p99_us = into.p99_us.max(more.p99_us);
    into.max_us = into.max_us.max(more.max_us);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::registry::Exemplar;

    fn latency(calls: u64, us: u64) -> Latency {
        let mut buckets = vec![0; crate::protocol::registry::LATENCY_BOUNDS_US.len() + 1];
        buckets[3] = calls;
        Latency {
            buckets,
            sum_us: calls * us,
            p50_us: us,
            p90_us: us,
            p99_us: us,
            max_us: us,
        }
    }

    #[test]
    fn an_unsent_report_is_carried_into_the_next() {
        let figures = |method: &str, calls: u64, us: u64| MethodFigures {
            service: "s".into(),
            method: method.into(),
            calls,
            errors: vec![ErrorCount { code: 7, count: 1 }],
            in_flight: 0,
            latency: latency(calls, us),
            items_in: 0,
            items_out: 0,
            slowest: None,
            failed: None,
        };
        let earlier = Status {
            window_ms: 1000,
            cpu_ms: 5,
            served: vec![figures("a", 3, 200), figures("b", 1, 100)],
            ..Status::default()
        };
        let mut next = Status {
            window_ms: 500,
            cpu_ms: 2,
            rss_bytes: 9,
            served: vec![figures("a", 4, 150)],
            ..Status::default()
        };
        let ex = |id: &str, us: u64| Exemplar {
            trace_id: id.repeat(32),
            latency_us: us,
            error: Some(7),
        };
        let mut earlier = earlier;
        earlier.served[0].slowest = Some(ex("a", 900));
        earlier.served[0].failed = Some(ex("b", 5));
        next.served[0].slowest = Some(ex("c", 300));
        carry_over(&mut next, earlier);
        // The slower call of the two windows; the failure of the earlier (the newer had none).
        assert_eq!(next.served[0].slowest, Some(ex("a", 900)));
        assert_eq!(next.served[0].failed, Some(ex("b", 5)));
        assert_eq!((next.window_ms, next.cpu_ms, next.rss_bytes), (1500, 7, 9));
        let a = &next.served[0];
        assert_eq!(a.calls, 7);
        assert_eq!(a.errors, vec![ErrorCount { code: 7, count: 2 }]);
        assert_eq!(a.latency.buckets[3], 7);
        assert_eq!(a.latency.sum_us, 4 * 150 + 3 * 200);
        assert_eq!(a.latency.p99_us, 200);
        assert_eq!(next.served[1].method, "b");
    }
}
