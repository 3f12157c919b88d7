//! In-process calls ([`crate::local`]) as a [`Client`] makes them: the client's deadline,
//! trace, metadata and interceptors, and in full mode what the hosting server applies (its
//! interceptors and figures) around the implementation's future, polled under its [`Context`].

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;

use futures::FutureExt;
use tokio::time::Instant;

use super::{Client, EMPTY_METADATA};
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::interceptor::OutgoingCall;
use crate::local::{LocalMode, LocalService};
use crate::metadata::Metadata;
use crate::monitor::figures::Completed;
use crate::service::{MethodDescriptor, ServiceDescriptor};
use crate::trace_context::{Served, TraceParent};

impl Client {
    /// An in-process call of `method` starting at `start`: its deadline, the trace it carries
    /// (a new span in the handler's trace, or a new trace) and its metadata, after this
    /// handle's interceptors saw it (one may refuse it).
    pub(crate) fn prepare_local(
        &self,
        service: &'static ServiceDescriptor,
        method: &'static MethodDescriptor,
        start: Instant,
    ) -> Result<(Option<Instant>, TraceParent, Metadata), Error> {
        let (deadline, trace) = self.deadline_and_call_trace(start);
        let mut meta = self.metadata.as_deref().unwrap_or(&EMPTY_METADATA).clone();
        if !self.inner.interceptors.is_empty() {
            self.before_call(service, method, &mut meta, deadline, trace.trace_id())?;
        }
        let trace = trace.with_metadata(&meta);
        Ok((deadline, trace.parent, meta))
    }

    /// Tells this handle's interceptors how an in-process call ended.
    pub(crate) fn after_local(
        &self,
        service: &'static ServiceDescriptor,
        method: &'static MethodDescriptor,
        ctx: &Context,
        outcome: Result<(), &Error>,
    ) {
        if self.inner.interceptors.is_empty() {
            return;
        }
        let mut meta = ctx.metadata.clone();
        let call = OutgoingCall {
            service,
            method,
            metadata: &mut meta,
            deadline: ctx.deadline,
            trace_id: ctx.trace_id(),
        };
        for i in &self.inner.interceptors {
            i.after_call(&call, outcome);
        }
    }
}

/// A call of method `method` of `local`, whose implementation future is `call`, made through
/// `client` (its timeout, metadata and interceptors): what a generated client's method runs
/// when it holds a [`LocalService`].
pub(crate) async fn call_local<R>(
    client: &crate::Client,
    local: &LocalService,
    method: usize,
    call: impl Future<Output = R>,
) -> Result<R, Error> {
    if local.mode() == LocalMode::Lean {
        return AssertUnwindSafe(call)
            .catch_unwind()
            .await
            .map_err(panicked);
    }
    let service = local.descriptor();
    let m = service
        .methods
        .get(method)
        .ok_or_else(|| crate::service::unknown_method(service, method))?;
    let start = Instant::now();
    let (deadline, trace, meta) = client.prepare_local(service, m, start)?;
    let host = local.host();
    let mut ctx = Some(Context {
        service: service.name,
        method: m.name,
        received_at: start,
        deadline,
        trace: Served::received(Some(trace), trace.trace_id as u64),
        metadata: meta,
        conn: host.and_then(|h| h.caller.clone()),
    });
    let interceptors = host.map_or(&[][..], |h| &h.interceptors[..]);
    let figures = host
        .and_then(|h| h.figures.as_deref())
        .map(|f| f.method(method));
    let before = interceptors
        .iter()
        .try_for_each(|i| i.before_call(ctx.as_ref().expect("installed")));
    let outcome = match before {
        Err(e) => Err(e),
        Ok(()) => {
            // Counted as in flight only once it waits (as a server counts its calls): most
            // in-process calls finish in their first poll, and the shared counter would cost
            // more than they do.
            let mut waited = false;
            let mut call = pin!(AssertUnwindSafe(call).catch_unwind());
            // The deadline's timer is set only once the call waits: most in-process calls
            // finish in their first poll, and a timer costs more than such a call.
            let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            let result = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = Context::scope(&mut ctx, || call.as_mut().poll(cx)) {
                    return Poll::Ready(r.map_err(panicked));
                }
                if !waited {
                    waited = true;
                    if let Some(f) = figures {
                        f.running();
                    }
                }
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                let timer =
                    timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                timer.as_mut().poll(cx).map(|()| {
                    Err(Error::new(
                        ErrorKind::DeadlineExceeded,
                        format!(
                            "{}.{} (in-process) did not finish within its deadline",
                            service.name, m.name
                        ),
                    ))
                })
            })
            .await;
            if let Some(f) = figures {
                let ctx = ctx.as_ref().expect("installed");
                let done = Completed {
                    elapsed: ctx.received_at.elapsed(),
                    error: result.as_ref().err().map(Error::kind),
                    trace_id: ctx.trace.exemplar_id(),
                };
                if waited {
                    f.finished(done);
                } else {
                    f.completed_many(std::iter::once(done));
                }
            }
            result
        }
    };
    let ctx = ctx.as_ref().expect("installed");
    for i in interceptors {
        i.after_call(ctx, outcome.as_ref().map(|_| ()));
    }
    client.after_local(service, m, ctx, outcome.as_ref().map(|_| ()));
    outcome
}

fn panicked(panic: Box<dyn Any + Send>) -> Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    Error::new(
        ErrorKind::Panicked,
        format!("the handler panicked (in-process): {message}"),
    )
}
