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
use crate::stream::flow::Recv;
use crate::transport::Outbound;

/// Queued items are written once this many bytes wait, even while the handler keeps producing:
/// large enough for few syscalls, small enough that the client starts on them early.
const FLUSH_AT: usize = 64 * 1024;
/// Items a stream sends before its task yields to the others on its thread.
const ITEMS_PER_TURN: u32 = 256;

/// Writes what is queued when the poll is about to wait, so nothing produced sits in the buffer
/// while the task sleeps.
fn flush_if_pending<T>(out: &Outbound, poll: Poll<T>) -> Poll<T> {
    if poll.is_pending() {
        out.flush_inline();
    }
    poll
}

impl ServerCall {
    /// Polls the output stream for its next item, under the call's context and span.
    fn poll_item(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<bool, Error>> {
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let _entered = (!self.span.is_disabled()).then(|| self.span.enter());
        let polled = Context::scope(&mut self.ctx, || {
            catch_unwind(AssertUnwindSafe(|| call.poll_item(cx)))
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
    async fn produce(&mut self, flow: &Flow) -> Result<(), Error> {
        let out = self.conn.out.clone();
        let max_queued = self.shared.config.max_write_buffer;
        let (id, max_frame) = (self.call.id, out.peer_max_frame);
        let mut sent = 0u32;
        loop {
            poll_fn(|cx| flush_if_pending(&out, flow.poll_credit(cx))).await?;
            // Every stream of the connection writes into one buffer: past its limit, wait for
            // the client to take some (the writer's stall timeout ends a client that takes none).
            if out.queued() > max_queued {
                out.flush_inline();
                if out.queued() > max_queued {
                    out.drained_to(max_queued / 2).await?;
                }
            }
            if !poll_fn(|cx| flush_if_pending(&out, self.call.poll_item(cx))).await? {
                return Ok(());
            }
            let call = &mut self.call;
            let cost = out.push_quiet(|buf, _| {
                let Some(handler) = call.call.as_mut() else {
                    return Err(Error::new(ErrorKind::Internal, "no call to stream from"));
                };
                // The item's Serialize is the user's and runs under the buffer lock: a panic
                // there must not leave half a frame behind (`put_item` truncates on error).
                let start = buf.len();
                catch_unwind(AssertUnwindSafe(|| handler.encode_item(buf, id, max_frame)))
                    .unwrap_or_else(|p| {
                        buf.truncate(start);
                        Err(panicked(p))
                    })
            })?;
            flow.spend(cost);
            if out.queued() >= FLUSH_AT {
                out.flush_inline();
            }
            sent += 1;
            if sent.is_multiple_of(ITEMS_PER_TURN) {
                out.flush_inline();
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
    ended: bool,
}

impl ServerInput {
    pub(crate) fn new(out: Arc<Outbound>, id: u64, flow: Arc<Flow>) -> ServerInput {
        ServerInput {
            out,
            id,
            flow,
            ended: false,
        }
    }
}

impl RawSource for ServerInput {
    fn poll_raw(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.flow.poll_recv(cx) {
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

    /// Sends `body` (one item, already MessagePack) once the client's credit allows it.
    pub(crate) fn poll_send_raw(
        &self,
        cx: &mut TaskContext<'_>,
        body: &[u8],
    ) -> Poll<Result<(), Error>> {
        match self.flow.poll_credit(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let (id, max) = (self.id, self.out.peer_max_frame);
        let sent = self
            .out
            .push_quiet(|buf, _| crate::protocol::stream::put_item_raw(buf, id, body, max));
        Poll::Ready(sent.map(|cost| {
            self.flow.spend(cost);
            self.out.flush_inline();
        }))
    }
}
