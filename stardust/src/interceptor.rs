//! Interceptors: hooks that run before and after every call, on either side.
//!
//! They are the seam through which cross-cutting concerns (authentication, metrics, tracing) plug
//! into the call path without touching it. Hooks are synchronous on purpose: they run inline on
//! the hot path, so they must be cheap, and a check that needs I/O belongs in the connection
//! handshake, not in every call.

use tokio::time::Instant;

use crate::context::Context;
use crate::error::Error;
use crate::metadata::Metadata;
use crate::service::{MethodDescriptor, ServiceDescriptor};

/// A provider-side hook around every call.
///
/// `before_call` runs after the request is decoded and before the handler starts; returning an
/// error rejects the call, and the caller receives that error. `after_call` runs once for every
/// call that `before_call` let through, when its outcome is known (including cancellation and
/// deadline expiry).
pub trait Interceptor: Send + Sync + 'static {
    /// Inspects a call before its handler runs; an `Err` rejects it.
    fn before_call(&self, ctx: &Context) -> Result<(), Error> {
        let _ = ctx;
        Ok(())
    }

    /// Observes a call's outcome.
    fn after_call(&self, ctx: &Context, outcome: Result<(), &Error>) {
        let _ = (ctx, outcome);
    }
}

/// A call about to leave a consumer, as client interceptors see it.
#[derive(Debug)]
pub struct OutgoingCall<'a> {
    /// The service called.
    pub service: &'static ServiceDescriptor,
    /// The method called.
    pub method: &'static MethodDescriptor,
    /// Metadata sent with the call; interceptors may add to it.
    pub metadata: &'a mut Metadata,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// The call's trace id.
    pub trace_id: u64,
}

/// A consumer-side hook around every call.
pub trait ClientInterceptor: Send + Sync + 'static {
    /// Inspects (and may add metadata to) a call before it is sent; an `Err` fails the call
    /// without sending it.
    fn before_call(&self, call: &mut OutgoingCall<'_>) -> Result<(), Error> {
        let _ = call;
        Ok(())
    }

    /// Observes a call's outcome (only for calls `before_call` let through).
    fn after_call(&self, call: &OutgoingCall<'_>, outcome: Result<(), &Error>) {
        let _ = (call, outcome);
    }
}
