//! What providers and consumers measure about their calls, and the status reports that carry
//! it to the registry.
//!
//! - [`figures`]: per-method (or per-provider) call counts, failures by kind and latency,
//!   recorded on the call path without a shared lock, read once per report window.
//! - [`ServiceFigures`]: the figures of every method of one hosted service.
//! - [`process`]: CPU and memory of the process.

pub(crate) mod figures;
pub(crate) mod process;

use crate::discovery::api::MethodFigures;
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
            });
        }
    }
}
