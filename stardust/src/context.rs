//! The call context a handler can read: who is calling, until when, and under which trace.
//!
//! The context is not a parameter of the service's methods (the trait stays what the user wrote);
//! the server installs it for the duration of every poll of the handler's future, and
//! [`Context::current`] reads it. Calls made from inside a handler inherit its deadline and trace
//! automatically (the same W3C trace, under a span of their own whose parent is the served
//! call's: see [`Context::trace_context`]). A task the handler spawns itself does not see the
//! context: clone it and move it there if needed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::{ConnAuth, Identity};
use crate::metadata::Metadata;
use crate::trace_context::{Served, TRACESTATE, TraceContext};
use crate::transport::Notifier;

thread_local! {
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Per-call information available to handlers and interceptors.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) received_at: Instant,
    pub(crate) deadline: Option<Instant>,
    /// The call's W3C trace: continued from the request's `traceparent` (or its 64-bit trace
    /// id), or new.
    pub(crate) trace: Served,
    pub(crate) metadata: Metadata,
    /// What is the same for every call on the connection (including who is calling): shared, so
    /// building a context costs one reference count, not one per field.
    pub(crate) conn: Option<Arc<ConnInfo>>,
}

/// Per-connection facts every call's context refers to.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    /// Handshake metadata, without the token (which never leaves the handshake).
    pub(crate) meta: Metadata,
    /// The optional capabilities the client announced in its `Hello`.
    pub(crate) features: crate::Features,
    pub(crate) notifier: Notifier,
    /// Who the connection belongs to; replaced when the client presents a renewed token.
    pub(crate) auth: ConnAuth,
}

static NO_METADATA: Metadata = Metadata::new();

impl Context {
    /// A context with no caller, no deadline and no trace, for tests of handler code.
    pub fn detached(service: &'static str, method: &'static str) -> Context {
        Context {
            service,
            method,
            received_at: Instant::now(),
            deadline: None,
            trace: Served::default(),
            metadata: Metadata::new(),
            conn: None,
        }
    }

    /// The context of the call being handled on this thread, or `None` outside a handler.
    pub fn current() -> Option<Context> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Runs `f` with a reference to the current context without cloning it.
    pub fn with_current<R>(f: impl FnOnce(Option<&Context>) -> R) -> R {
        CURRENT.with(|c| f(c.borrow().as_ref()))
    }

    /// Service name of the call.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Method name of the call.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// When the provider received the call.
    pub fn received_at(&self) -> Instant {
        self.received_at
    }

    /// The instant after which nobody waits for the result, if the caller set one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`Some(ZERO)` once it has passed), or `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The 64-bit trace id the call belongs to: the low 64 bits of its W3C trace id
    /// ([`trace_context`](Self::trace_context)), what the request's `trace_id` field carries. A
    /// call that arrived without a trace starts a new one; 0 only for a
    /// [`detached`](Self::detached) context.
    pub fn trace_id(&self) -> u64 {
        self.trace.trace_id as u64
    }

    /// The call's W3C trace context: the 128-bit trace id, this call's span id, the caller's
    /// span id and sampled flag from the request's `traceparent`, and its `tracestate`. A
    /// request without a valid `traceparent` continues the 64-bit trace id an older peer sent
    /// (as the trace id with zero high bits), or starts a new trace. Calls the handler makes
    /// carry the same trace id, each with a new span id whose parent is
    /// [`span_id`](TraceContext::span_id), and the `tracestate`.
    ///
    /// A valid `traceparent` is taken out of [`metadata`](Self::metadata) (a malformed one is
    /// dropped); `tracestate` stays there. `None` for a [`detached`](Self::detached) context.
    pub fn trace_context(&self) -> Option<TraceContext> {
        (self.trace.trace_id != 0)
            .then(|| TraceContext::of(&self.trace, self.metadata.get(TRACESTATE)))
    }

    /// The application id of the caller, proven by the token its connection presented; `None`
    /// for an anonymous connection (a server built with
    /// [`allow_anonymous`](crate::ServerBuilder::allow_anonymous)).
    ///
    /// Costs no locking: a connection belongs to one app for its whole life.
    pub fn caller(&self) -> Option<&str> {
        self.conn.as_ref().and_then(|c| c.auth.app())
    }

    /// The caller's full identity (app, token expiry, services it may call), if its connection
    /// authenticated. It reflects the latest token the connection presented.
    pub fn identity(&self) -> Option<Identity> {
        self.conn.as_ref().and_then(|c| c.auth.identity())
    }

    /// The Ed25519 public key the calling client proved it holds in its handshake (proof of
    /// possession), if it proved one: the key its token is bound to, or the key a client
    /// without a token announced (how the registry binds the tokens it issues).
    pub fn proof_key(&self) -> Option<[u8; 32]> {
        self.conn.as_ref().and_then(|c| c.auth.proven_key())
    }

    /// The network address of the calling connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.peer)
    }

    /// Metadata the caller attached to the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Metadata the client sent when it connected (see
    /// [`ClientBuilder::handshake_metadata`](crate::ClientBuilder::handshake_metadata)), without
    /// the access token: use [`Context::caller`] for who is calling.
    pub fn connection_metadata(&self) -> &Metadata {
        self.conn.as_ref().map_or(&NO_METADATA, |c| &c.meta)
    }

    /// The optional protocol capabilities the calling client announced in its handshake (none
    /// for an older client, or outside a connection).
    pub fn peer_features(&self) -> crate::Features {
        self.conn
            .as_ref()
            .map_or_else(crate::Features::none, |c| c.features.clone())
    }

    /// A handle that sends one-way notifications to the calling connection, usable after the
    /// call returns (for subscriptions).
    pub fn notifier(&self) -> Option<Notifier> {
        self.conn.as_ref().map(|c| c.notifier.clone())
    }

    /// Sets the deadline (builder style, mostly for tests of handler code).
    pub fn with_deadline(mut self, deadline: Instant) -> Context {
        self.deadline = Some(deadline);
        self
    }

    /// Runs `f` with `slot`'s context installed as the current one, then puts it back.
    ///
    /// Swapping (rather than cloning) keeps this allocation-free; nesting restores the outer
    /// context correctly because each level swaps its own value in and out.
    pub(crate) fn scope<R>(slot: &mut Option<Context>, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a mut Option<Context>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), self.0));
            }
        }
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), slot));
        let _restore = Restore(slot);
        f()
    }
}

/// What a call made from inside a handler inherits: the deadline, and the served call's trace
/// with its `tracestate` (copied only when there is one).
pub(crate) type Inherited = (Option<Instant>, Option<(Served, Option<String>)>);

/// The deadline and trace inherited by a call made from inside a handler.
pub(crate) fn inherited() -> Inherited {
    CURRENT.with(|c| {
        c.borrow().as_ref().map_or((None, None), |c| {
            let state = c.metadata.get(TRACESTATE).map(str::to_owned);
            (c.deadline, Some((c.trace, state)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_installs_and_restores() {
        assert!(Context::current().is_none());
        let mut outer = Some(Context::detached("s", "outer"));
        Context::scope(&mut outer, || {
            assert_eq!(Context::current().unwrap().method(), "outer");
            let mut inner = Some(Context::detached("s", "inner"));
            Context::scope(&mut inner, || {
                assert_eq!(Context::current().unwrap().method(), "inner");
            });
            assert_eq!(inner.unwrap().method(), "inner");
            assert_eq!(Context::current().unwrap().method(), "outer");
        });
        assert!(Context::current().is_none());
        assert_eq!(outer.unwrap().method(), "outer");
    }

    #[test]
    fn scope_restores_on_panic() {
        let mut slot = Some(Context::detached("s", "m"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Context::scope(&mut slot, || panic!("boom"))
        }));
        assert!(r.is_err());
        assert!(Context::current().is_none());
        assert!(slot.is_some());
    }
}
