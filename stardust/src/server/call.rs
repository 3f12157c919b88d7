//! One call on the server: the handler's future with its context, and how its outcome becomes a
//! response frame.
//!
//! A call is first polled inline by the read loop ([`ServerCall::poll_once`] with borrowed
//! connection state, so the inline path costs no reference counting). Only if the handler waits
//! does it become a [`SpawnedCall`], a task of its own that owns what it needs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio::time::Instant;

use super::ServerShared;
use super::connection::ServerConn;
use crate::stream::flow::Flow;

mod stream;
use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::monitor::figures::Completed;
use crate::protocol::frame::{self, FLAG_ONE_WAY, Kind};
use crate::protocol::{message, zero_copy};
use crate::service::{Call, Service};
use crate::trace_context::{TRACESTATE, TraceParent, spans};
pub(crate) use stream::{ServerInput, StreamOut, end_input};

pub(crate) struct ServerCall {
    /// The context, installed as the current one while the handler is polled. `None` only while
    /// it is installed.
    ctx: Option<Context>,
    /// `None` when starting the call failed (the error is in `failed`) or once it finished.
    call: Option<Call>,
    failed: Option<Error>,
    id: u64,
    flags: u8,
    finished: bool,
    /// Where the call's outcome is counted: (service index, method index) in the server's
    /// figures; `None` for calls not counted (or once counted).
    figures: Option<(u32, u32)>,
    /// The call became a task of its own: it counts itself when it ends. Otherwise the read
    /// loop counts it with the rest of its batch ([`ServerCall::take_done`]).
    spawned: bool,
    /// How an inline call ended, waiting to be counted with its batch.
    done: Option<Done>,
    /// Where the call is counted, kept after its outcome is (a stream's items are counted
    /// when it is dropped).
    counted_at: Option<(u32, u32)>,
    /// The call's `tracing` span (service, method, peer, trace id): events the handler logs
    /// carry them. Disabled, and free, unless a subscriber wants debug spans.
    span: tracing::Span,
}

impl ServerCall {
    /// Starts the handler (decoding its arguments) under the call's context.
    pub(crate) fn start(
        ctx: Context,
        id: u64,
        flags: u8,
        service: &dyn Service,
        method: usize,
        args: &[u8],
    ) -> ServerCall {
        Self::start_polling(ctx, (id, flags), (service, method, args), None).0
    }

    /// Starts the handler and polls it once, under one installation of the call's context
    /// (installing it costs more than the rest of a small call's dispatch). `Ready` is the
    /// outcome to [`finish`](Self::finish) the call with; `Pending`, it waits.
    pub(crate) fn start_polled(
        ctx: Context,
        (id, flags): (u64, u8),
        target: (&dyn Service, usize, &[u8]),
        cx: &mut TaskContext<'_>,
    ) -> (ServerCall, Poll<Result<(), Error>>) {
        Self::start_polling(ctx, (id, flags), target, Some(cx))
    }

    fn start_polling(
        mut ctx: Context,
        (id, flags): (u64, u8),
        (service, method, args): (&dyn Service, usize, &[u8]),
        first_poll: Option<&mut TaskContext<'_>>,
    ) -> (ServerCall, Poll<Result<(), Error>>) {
        let span = if crate::monitor::spans_enabled() {
            let t = ctx.trace;
            let parent = (t.parent_span_id != 0).then_some(TraceParent {
                trace_id: t.trace_id,
                parent_id: t.parent_span_id,
                flags: t.flags,
            });
            let peer = ctx.peer_addr();
            let state = ctx.metadata.get(TRACESTATE);
            let parent = parent.map(|p| (p, state));
            let mut served = ctx.trace;
            let span = spans::serve_span(ctx.service, ctx.method, peer, &mut served, parent);
            ctx.trace = served;
            span
        } else {
            tracing::Span::none()
        };
        let mut slot = Some(ctx);
        // Entering even a disabled span costs a call: only enter live ones.
        let entered = (!span.is_disabled()).then(|| span.enter());
        let polling = first_poll.is_some();
        let started = Context::scope(&mut slot, || {
            catch_unwind(AssertUnwindSafe(|| {
                let mut call = service.call(method, args)?;
                let polled = first_poll.map(|cx| call.poll_call(cx));
                Ok::<_, Error>((call, polled))
            }))
        });
        drop(entered);
        // The call is kept once it is ready: its answer is taken from it when it finishes.
        let (call, outcome) = match started {
            Ok(Ok((call, Some(Poll::Ready(()))))) => (Some(call), Some(Ok(()))),
            Ok(Ok((call, _))) => (Some(call), None),
            Ok(Err(e)) => (None, Some(Err(e))),
            Err(panic) => (None, Some(Err(panicked(panic)))),
        };
        // Without a first poll here, a start that failed is what the first poll reports.
        let (failed, first) = match outcome {
            Some(Err(e)) if !polling => (Some(e), Poll::Pending),
            Some(outcome) => (None, Poll::Ready(outcome)),
            None => (None, Poll::Pending),
        };
        let call = ServerCall {
            ctx: slot,
            call,
            failed,
            id,
            flags,
            finished: false,
            figures: None,
            spawned: false,
            done: None,
            counted_at: None,
            span,
        };
        (call, first)
    }

    /// Counts the call's outcome in the figures of method `method` of service `service` (the
    /// caller counted it as started there).
    pub(crate) fn count_in(&mut self, service: usize, method: usize) {
        self.figures = Some((service as u32, method as u32));
        self.counted_at = self.figures;
    }

    /// The call is about to become a task of its own: it is in flight until it counts itself.
    pub(crate) fn spawning(&mut self, shared: &ServerShared) {
        self.spawned = true;
        if let Some((service, method)) = self.figures {
            shared.figures[service as usize]
                .method(method as usize)
                .running();
        }
    }

    /// How a call that completed inline ended, for its batch to count.
    pub(crate) fn take_done(&mut self) -> Option<Done> {
        self.done.take()
    }

    /// Adds the call's outcome to its method's figures (now, for a task; with its batch, for an
    /// inline call: one clock read and one lock per batch instead of per call).
    fn count(&mut self, shared: &ServerShared, error: Option<ErrorKind>) {
        let (Some((service, method)), Some(ctx)) = (self.figures.take(), self.ctx.as_ref()) else {
            return;
        };
        let trace_id = ctx.trace.exemplar_id();
        if self.spawned {
            shared.figures[service as usize]
                .method(method as usize)
                .finished(Completed {
                    elapsed: ctx.received_at.elapsed(),
                    error,
                    trace_id,
                });
        } else {
            self.done = Some(Done {
                service,
                method,
                received: ctx.received_at,
                error,
                trace_id,
            });
        }
    }

    /// Polls the handler once; on completion the response is queued and `Ready` returned.
    pub(crate) fn poll_once(
        &mut self,
        cx: &mut TaskContext<'_>,
        conn: &ServerConn,
        shared: &ServerShared,
    ) -> Poll<()> {
        let Poll::Ready(outcome) = self.poll_handler(cx) else {
            return Poll::Pending;
        };
        self.finish(outcome, conn, shared);
        Poll::Ready(())
    }

    /// Polls the handler's future once, under the call's context and span, catching a panic.
    fn poll_handler(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let outcome = match (&mut self.call, self.failed.take()) {
            (_, Some(e)) => Err(e),
            (Some(call), None) => {
                let _entered = (!self.span.is_disabled()).then(|| self.span.enter());
                let polled = Context::scope(&mut self.ctx, || {
                    catch_unwind(AssertUnwindSafe(|| call.poll_call(cx)))
                });
                match polled {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(())) => Ok(()),
                    Err(panic) => Err(panicked(panic)),
                }
            }
            (None, None) => Err(Error::new(
                ErrorKind::Internal,
                "call polled after completion",
            )),
        };
        Poll::Ready(outcome)
    }

    /// Sends the response (or the error) and tells the interceptors.
    pub(crate) fn finish(
        &mut self,
        outcome: Result<(), Error>,
        conn: &ServerConn,
        shared: &ServerShared,
    ) {
        if self.finished {
            return;
        }
        self.finished = true;
        let one_way = self.flags & FLAG_ONE_WAY != 0;
        let result = match outcome {
            Ok(()) if one_way => Ok(()),
            Ok(()) => self.send_response(conn),
            Err(e) => {
                conn.reply_error(self.id, self.flags, &e);
                Err(e)
            }
        };
        if let Err(e) = &result {
            spans::failed(&self.span, e);
        }
        if let Err(e) = &result
            && e.kind() == ErrorKind::Panicked
        {
            tracing::warn!(
                parent: &self.span,
                service = self.context().service(),
                method = self.context().method(),
                error = %e,
                "handler panicked"
            );
        }
        self.count(shared, result.as_ref().err().map(Error::kind));
        self.after_call(shared, result.as_ref().map(|_| ()));
        // Release the handler's state now rather than when the task is dropped.
        self.call = None;
    }

    fn send_response(&mut self, conn: &ServerConn) -> Result<(), Error> {
        let Some(call) = self.call.as_mut() else {
            return Err(Error::new(ErrorKind::Internal, "no call to answer"));
        };
        let id = self.id;
        let max = conn.out.peer_max_frame;
        // Queued without waking the writer: the read loop flushes at the end of its batch, and a
        // spawned call wakes the writer itself once it is done.
        let pushed = conn.out.push_quiet(|buf, _| {
            let start = frame::begin(buf, Kind::Response, 0, id);
            // The user's Serialize runs under the buffer lock; a panic there must not leave half a
            // frame behind.
            // Large `Bytes` results are queued as segments rather than copied (`zero_copy`).
            let encoded = catch_unwind(AssertUnwindSafe(|| {
                zero_copy::capture(buf, |buf| call.encode_output(buf))
            }))
            .unwrap_or_else(|p| Err(panicked(p)))
            .and_then(|segments| frame::finish_with(buf, start, segments, max));
            if let Err(e) = encoded {
                zero_copy::discard_from(start);
                buf.truncate(start);
                let e = match e.kind() {
                    ErrorKind::FrameTooLarge => Error::new(
                        ErrorKind::FrameTooLarge,
                        format!("the response {}", e.message()),
                    ),
                    _ => e,
                };
                message::put_error(buf, Kind::Error, id, &e);
                return Ok(Err(e));
            }
            Ok(Ok(()))
        });
        pushed.and_then(|r| r)
    }

    fn context(&self) -> &Context {
        self.ctx
            .as_ref()
            .expect("context is installed only while polling")
    }

    fn after_call(&self, shared: &ServerShared, outcome: Result<(), &Error>) {
        if shared.interceptors.is_empty() {
            return;
        }
        let ctx = self.context();
        for i in &shared.interceptors {
            i.after_call(ctx, outcome);
        }
    }
}

/// How a call that completed inline ended.
pub(crate) struct Done {
    service: u32,
    method: u32,
    received: Instant,
    error: Option<ErrorKind>,
    /// See [`Completed::trace_id`].
    trace_id: u128,
}

/// What one turn of a connection's read loop handles: the time its bytes were read (the
/// calls' receive time) and the calls that completed inline, counted together at its end.
pub(crate) struct Batch {
    pub(crate) now: Instant,
    done: Vec<Done>,
    /// Tasks the batch's frames made runnable (stream items, credit), woken once at its end.
    pub(crate) wakers: Vec<std::task::Waker>,
    /// Stream items read and not yet handed to their calls: (call id, body).
    pub(crate) items: Vec<(u64, bytes::Bytes)>,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            now: Instant::now(),
            // Grows on first use, like the connection's buffers: nothing reserved per
            // connection up front.
            done: Vec::new(),
            wakers: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Wakes the tasks the batch's frames made runnable.
    pub(crate) fn wake(&mut self) {
        self.wakers.drain(..).for_each(std::task::Waker::wake);
    }

    pub(crate) fn push(&mut self, done: Done) {
        self.done.push(done);
    }

    /// Counts the batch's calls, as completed now (their responses were just flushed), one
    /// lock per run of calls to the same method.
    pub(crate) fn count(&mut self, shared: &ServerShared) {
        if self.done.is_empty() {
            return;
        }
        let now = Instant::now();
        for run in self
            .done
            .chunk_by(|a, b| (a.service, a.method) == (b.service, b.method))
        {
            shared.figures[run[0].service as usize]
                .method(run[0].method as usize)
                .completed_many(run.iter().map(|d| Completed {
                    elapsed: now.saturating_duration_since(d.received),
                    error: d.error,
                    trace_id: d.trace_id,
                }));
        }
        self.done.clear();
    }
}

/// A call whose handler waited: a task of its own, owning its connection and server state.
pub(crate) struct SpawnedCall {
    pub(crate) call: ServerCall,
    pub(crate) conn: Arc<ServerConn>,
    pub(crate) shared: Arc<ServerShared>,
    /// The flow of a streaming call (registered with the connection under the call's id).
    pub(crate) stream: Option<Arc<Flow>>,
}

impl SpawnedCall {
    /// Drives the handler to completion within the deadline.
    pub(crate) async fn run(mut self, deadline: Option<Instant>, key: (bool, u64), task_id: u64) {
        let this = &mut self;
        let done = async {
            match this.stream.clone() {
                Some(flow) => this.run_stream(&flow).await,
                None => {
                    std::future::poll_fn(|cx| this.call.poll_once(cx, &this.conn, &this.shared))
                        .await
                }
            }
        };
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, done).await.is_err() {
                    if let Some(flow) = &self.stream {
                        stream::end_input(flow);
                    }
                    let ctx = self.call.context();
                    let msg = format!(
                        "{}.{} passed its deadline while the handler was running; the provider stopped it",
                        ctx.service(),
                        ctx.method()
                    );
                    self.call.finish(
                        Err(Error::new(ErrorKind::DeadlineExceeded, msg)),
                        &self.conn,
                        &self.shared,
                    );
                }
            }
            None => done.await,
        }
        self.conn.flush_finished();
        self.conn.call_done(key, task_id);
    }
}

impl Drop for SpawnedCall {
    fn drop(&mut self) {
        if let Some(flow) = self.stream.take() {
            if let Some((service, method)) = self.call.counted_at {
                self.shared.figures[service as usize]
                    .method(method as usize)
                    .stream_items(flow.received(), flow.sent());
            }
            self.conn.stream_ended(self.call.id, &flow);
        }
        // Dropped unfinished: cancelled by the client, or its connection went away.
        if !self.call.finished {
            self.call.finished = true;
            self.call.count(&self.shared, Some(ErrorKind::Cancelled));
            self.call.after_call(
                &self.shared,
                Err(&Error::new(ErrorKind::Cancelled, "the call was cancelled")),
            );
        }
    }
}

fn panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    let msg = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    };
    Error::new(ErrorKind::Panicked, format!("the handler panicked: {msg}"))
}
