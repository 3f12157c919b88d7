//! The `tracing` spans of calls: `stardust.call` on the client, `stardust.serve` on the
//! provider. With the `otel` feature they carry OpenTelemetry's RPC conventions (span kind,
//! `rpc.system`, `rpc.service`, `rpc.method`, peer address, status and `error.type` on failure)
//! and are tied to the `traceparent` of calls: a served call's span continues the trace the
//! request names, and an outgoing call sends its own span's OpenTelemetry context.

use std::net::SocketAddr;

use tracing::Span;

use super::{CallTrace, Served, TraceParent};
use crate::error::Error;

/// A trace id as logs show it: 16 hex digits (the low half of the W3C trace id, the request's
/// `trace_id`), the same in every process the request crosses.
struct Hex64(u64);

impl std::fmt::Display for Hex64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The span of an outgoing call of `method` of `service` with `trace` (taking its
/// OpenTelemetry ids, with `otel`, so the `traceparent` it sends names this span). Its
/// `span_id` is the parent id of the `traceparent` the call sends, `parent_span_id` the span of
/// the served call it is made from.
pub(crate) fn call_span(service: &str, method: &str, trace: &mut CallTrace) -> Span {
    #[cfg(not(feature = "otel"))]
    let span = tracing::debug_span!(
        "stardust.call",
        service,
        method,
        trace_id = %Hex64(trace.trace_id()),
        fault = tracing::field::Empty,
        span_id = %Hex64(trace.parent.parent_id),
        parent_span_id = %Hex64(trace.parent_span_id),
    );
    #[cfg(feature = "otel")]
    let span = tracing::debug_span!(
        "stardust.call",
        service,
        method,
        trace_id = tracing::field::Empty,
        fault = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        otel.kind = "client",
        rpc.system = "stardust",
        rpc.service = service,
        rpc.method = method,
        server.address = tracing::field::Empty,
        server.port = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    {
        if !trace.send {
            // The caller's own `traceparent` (sent as it is) is this span's parent too.
            otel::set_parent(&span, &trace.parent, None);
        }
        if let Some((trace_id, span_id, flags)) = otel::ids(&span)
            && trace.send
        {
            trace.parent = TraceParent {
                trace_id,
                parent_id: span_id,
                flags,
            };
        }
        span.record("trace_id", tracing::field::display(Hex64(trace.trace_id())));
        span.record(
            "span_id",
            tracing::field::display(Hex64(trace.parent.parent_id)),
        );
        let parent = Hex64(trace.parent_span_id);
        span.record("parent_span_id", tracing::field::display(parent));
    }
    span
}

/// The span of a call being served, from `peer` (if known): with `otel`, its parent is the
/// span the request's `traceparent` names (`parent`; a call from an older peer names its 64-bit
/// trace id), and `served` takes its OpenTelemetry ids.
pub(crate) fn serve_span(
    service: &str,
    method: &str,
    peer: Option<SocketAddr>,
    served: &mut Served,
    parent: Option<(TraceParent, Option<&str>)>,
) -> Span {
    #[cfg(not(feature = "otel"))]
    {
        let _ = parent;
        tracing::debug_span!(
            "stardust.serve",
            service,
            method,
            peer = ?peer,
            trace_id = %Hex64(served.trace_id as u64),
        )
    }
    #[cfg(feature = "otel")]
    {
        let span = tracing::debug_span!(
            "stardust.serve",
            service,
            method,
            peer = ?peer,
            trace_id = tracing::field::Empty,
            otel.kind = "server",
            rpc.system = "stardust",
            rpc.service = service,
            rpc.method = method,
            network.peer.address = peer.map(|p| tracing::field::display(p.ip())),
            network.peer.port = peer.map(|p| p.port()),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if let Some((p, state)) = parent {
            otel::set_parent(&span, &p, state);
        }
        if let Some((trace_id, span_id, flags)) = otel::ids(&span) {
            served.trace_id = trace_id;
            served.span_id = span_id;
            served.flags = flags;
        }
        span.record(
            "trace_id",
            tracing::field::display(Hex64(served.trace_id as u64)),
        );
        span
    }
}

/// Marks `span` (a call's) failed with `e`: OpenTelemetry status `ERROR`, `error.type` the
/// error's kind. Nothing without `otel` (the caller logs errors as it always did).
pub(crate) fn failed(span: &Span, e: &Error) {
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", tracing::field::debug(e.kind()));
        span.record("otel.status_description", e.message());
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, e);
}

/// Records the provider a call is sent to on the current span (the call's), with `otel`.
#[inline]
pub(crate) fn sending_to(peer: SocketAddr) {
    #[cfg(feature = "otel")]
    if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG {
        let span = Span::current();
        if !span.is_disabled() {
            span.record("server.address", tracing::field::display(peer.ip()));
            span.record("server.port", peer.port());
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = peer;
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    /// Makes the remote span `p` names (with its `tracestate`) the parent of `span`.
    pub(super) fn set_parent(span: &Span, p: &TraceParent, state: Option<&str>) {
        if span.is_disabled() {
            return;
        }
        let state = state
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from(p.trace_id),
            SpanId::from(p.parent_id),
            TraceFlags::new(p.flags & 1),
            true,
            state,
        );
        // Without an OpenTelemetry layer there is nothing to tie: not an error.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }

    /// The OpenTelemetry trace id, span id and flags of `span`, if an OpenTelemetry layer
    /// records it.
    pub(super) fn ids(span: &Span) -> Option<(u128, u64, u8)> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| {
            (
                u128::from_be_bytes(sc.trace_id().to_bytes()),
                u64::from_be_bytes(sc.span_id().to_bytes()),
                sc.trace_flags().to_u8() & 1,
            )
        })
    }
}
