//! The trace of a client's calls: what a call inherits from the handler it is made in (its
//! deadline, its W3C trace) and how its span learns the outcome.

use tokio::time::Instant;

use super::Client;
use crate::context;
use crate::error::Error;
use crate::trace_context::{CallTrace, spans};

impl Client {
    /// A call started at `start`: its deadline (this handle's timeout, or the handler's
    /// deadline it is made from, whichever comes first) and trace (a new span in the handler's
    /// trace, or a new trace).
    pub(super) fn deadline_and_call_trace(&self, start: Instant) -> (Option<Instant>, CallTrace) {
        let (inherited_deadline, served) = context::inherited();
        let deadline = match (self.timeout.map(|t| start + t), inherited_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (deadline, CallTrace::child(served))
    }

    /// The trace of a call without a deadline (a one-way call).
    pub(super) fn call_trace(&self) -> CallTrace {
        CallTrace::child(context::inherited().1)
    }
}

/// Hands a call's outcome back, marking its span failed on an error.
pub(super) fn ended<T>(span: &tracing::Span, outcome: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &outcome {
        spans::failed(span, e);
    }
    outcome
}
