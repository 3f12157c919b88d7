//! A streaming call on the server: the handler's output items sent under the client's credit,
//! and the handler's input ([`ServerInput`]) read from what the connection's read loop queued.
//!
//! The items are produced by the call's own task, which encodes each straight into the
//! connection's write buffer and writes (inline, without waking the writer task) only when it
//! is about to wait: for the handler's next item, for credit, or for the socket to drain. So a
//! handler whose stream is always ready sends a whole window per write.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;

use super::*;
use crate::protocol::frame::Kind;
use crate::stream::RawSource;
use crate::stream::flow::{Reader, Recv};
use crate::transport::Outbound;

/// Queued items are written once this many bytes wait, even while the handler keeps producing:
/// large enough for few syscalls, small enough that the client starts on them early.
const FLUSH_AT: usize = 64 * 1024;
/// Items taken from the handler's stream at a time, and then encoded under one lock.
const ITEMS_PER_BATCH: usize = 1024;
/// Items a stream sends before its task yields to the others on its thread.
const ITEMS_PER_TURN: u64 = 4096;

/// Writes what is queued when the poll is about to wait, so nothing produced sits in the buffer
/// while the task sleeps.
fn flush_if_pending<T>(out: &Outbound, poll: Poll<T>) -> Poll<T> {
    if poll.is_pending() {
        out.flush_inline();
    }
    poll
}

impl ServerCall {
    /// Takes up to `max` items the output stream has ready, under the call's context and span:
    /// `Ready(false)` once it has ended and none is left.
    fn poll_items(&mut self, cx: &mut TaskContext<'_>, max: usize) -> Poll<Result<bool, Error>> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let _entered = (!self.span.is_disabled()).then(|| self.span.enter());
        let polled = Context::scope(&mut self.ctx, || {
            catch_unwind(AssertUnwindSafe(|| call.poll_items(cx, max)))
        });
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(more)) => Poll::Ready(Ok(more)),
            Err(panic) => Poll::Ready(Err(panicked(panic))),
        }
    }
}

impl SpawnedCall {
    /// Runs a streaming call: the handler, then (for a method returning a stream) its items,
    /// then the response or the error that ends the call.
    pub(super) async fn run_stream(&mut self, flow: &Flow) {
        let handler = poll_fn(|cx| self.call.poll_handler(cx)).await;
        let streams = self.call.call.as_ref().is_some_and(|c| c.streams_output());
        let outcome = match handler {
            Ok(()) if streams => self.produce(flow).await,
            other => other,
        };
        end_input(flow);
        self.call.finish(outcome, &self.conn, &self.shared);
    }

    /// Sends the output stream's items as the client's credit allows, until the stream ends.
    /// Per batch of ready items: the credit is read once, the items are encoded under one
    /// lock of the write buffer, and spent once.
    async fn produce(&mut self, flow: &Flow) -> Result<(), Error> {
        let out = self.conn.out.clone();
        let max_queued = self.shared.config.max_write_buffer;
        let (id, max_frame) = (self.call.id, out.peer_max_frame);
        let mut sent = 0u64;
        // What an item has cost so far (0: not known yet): items are taken from the stream
        // only as many as the credit covers, so a producer that is always ready never holds
        // more than about a window of them.
        let mut item_cost = 0usize;
        let mut failed: Option<Error> = None;
        loop {
            let credit = poll_fn(|cx| flush_if_pending(&out, flow.poll_credit(cx))).await?;
            let batch = credit
                .checked_div(item_cost)
                .unwrap_or(1)
                .clamp(1, ITEMS_PER_BATCH);
            // Every stream of the connection writes into one buffer: past its limit, wait for
            // the client to take some (the writer's stall timeout ends a client that takes none).
            if out.queued() > max_queued {
                out.flush_inline();
                if out.queued() > max_queued {
                    out.drained_to(max_queued / 2).await?;
                }
            }
            // A stream that fails (its handler panics) still delivers the items it produced
            // before: they go out first, then the failure ends the call.
            if failed.is_none() {
                match poll_fn(|cx| flush_if_pending(&out, self.call.poll_items(cx, batch))).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => failed = Some(e),
                }
            }
            let call = &mut self.call;
            let (items, bytes) = out.push_quiet(|buf, _| {
                let Some(handler) = call.call.as_mut() else {
                    return Err(Error::new(ErrorKind::Internal, "no call to stream from"));
                };
                // The items' Serialize is the user's and runs under the buffer lock: a panic
                // there must not leave half a frame behind (`put_item` truncates on error).
                let start = buf.len();
                catch_unwind(AssertUnwindSafe(|| {
                    handler.encode_items(buf, id, max_frame, credit)
                }))
                .unwrap_or_else(|p| {
                    buf.truncate(start);
                    Err(panicked(p))
                })
            })?;
            if items == 0
                && let Some(e) = failed.take()
            {
                return Err(e);
            }
            flow.spend_many(bytes, items);
            if items > 0 {
                item_cost = (bytes / items as usize).max(1);
            }
            if out.queued() >= FLUSH_AT {
                out.flush_inline();
            }
            sent += items;
            if sent >= ITEMS_PER_TURN {
                sent = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Marks the call's input as over (the call is ending): its reader, dropped with the handler,
/// then need not tell the client to stop sending.
pub(crate) fn end_input(flow: &Flow) {
    let over = || Error::new(ErrorKind::Cancelled, "the call has ended");
    flow.finish(Err(over()), true, &mut Vec::new());
}

/// A handler's input stream: the items its client sent for the call, queued by the read loop.
pub(crate) struct ServerInput {
    out: Arc<Outbound>,
    id: u64,
    flow: Arc<Flow>,
    reader: Reader,
    ended: bool,
}

impl ServerInput {
    /// The input of call `id`, whose flow grants `window` bytes.
    pub(crate) fn new(out: Arc<Outbound>, id: u64, flow: Arc<Flow>, window: u32) -> ServerInput {
        ServerInput {
            out,
            id,
            flow,
            reader: Reader::new(window),
            ended: false,
        }
    }
}

impl RawSource for ServerInput {
    fn poll_raw(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.reader.poll_next(&self.flow, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Recv::Item { body, grant }) => {
                if let Some(n) = grant {
                    let id = self.id;
                    let queued = self.out.push_quiet(|buf, _| {
                        crate::protocol::stream::put_credit(buf, id, n);
                        Ok(())
                    });
                    if queued.is_ok() {
                        self.out.flush_inline();
                    }
                }
                Poll::Ready(Some(Ok(body)))
            }
            Poll::Ready(Recv::End(end)) => {
                self.ended = true;
                match end {
                    Ok(_) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }
}

impl Drop for ServerInput {
    fn drop(&mut self) {
        // The handler stopped reading while its client may still be sending: tell the client
        // to stop (a `Cancel` from the server). Not once the call is over: the client knows.
        if self.ended || self.flow.is_finished() {
            return;
        }
        let id = self.id;
        let queued = self.out.push_quiet(|buf, _| {
            crate::protocol::frame::put_empty(buf, Kind::Cancel, 0, id);
            Ok(())
        });
        if queued.is_ok() {
            self.out.wake_writer();
        }
    }
}

/// The output side of a streaming call whose items come from elsewhere (an agent relaying a
/// provider's stream): raw items sent under the client's credit.
pub(crate) struct StreamOut {
    out: Arc<Outbound>,
    id: u64,
    flow: Arc<Flow>,
}

impl StreamOut {
    pub(crate) fn new(out: Arc<Outbound>, id: u64, flow: Arc<Flow>) -> StreamOut {
        StreamOut { out, id, flow }
    }

    /// Queues `body` (one item, already MessagePack) once the client's credit allows it; see
    /// [`StreamOut::flush`].
    pub(crate) fn poll_send_raw(
        &self,
        cx: &mut TaskContext<'_>,
        body: &[u8],
    ) -> Poll<Result<(), Error>> {
        match self.flow.poll_credit(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) => {}
        }
        let (id, max) = (self.id, self.out.peer_max_frame);
        let sent = self
            .out
            .push_quiet(|buf, _| crate::protocol::stream::put_item_raw(buf, id, body, max));
        Poll::Ready(sent.map(|cost| self.flow.spend(cost)))
    }

    /// Writes what is queued (the relay calls it once per turn, not per item).
    pub(crate) fn flush(&self) {
        self.out.flush_inline();
    }
}
