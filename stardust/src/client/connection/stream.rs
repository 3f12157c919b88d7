//! Streaming calls on one client connection: opening one (a `Request` with the `STREAM` flag
//! whose slot in the pending table holds the stream's [`Flow`]), delivering what arrives for it,
//! reading its output ([`ClientStream`]) and sending its input ([`Pump`]).
//!
//! Nothing here runs on a task of its own: the consumer's task reads the output (and gives
//! credit back from there), and the input is pumped by the task that awaits the call (a
//! client-streaming call) or by one task per stream (a stream both ways, whose consumer may
//! read and write at different paces).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde::Serialize;

use super::{CallError, ClientConn};
use crate::client::pending::{CallInfo, Completion, Pending, Reply};
use crate::error::{Error, ErrorKind};
use crate::protocol::message::{self, Args, RequestHead};
use crate::protocol::stream::{self as wire, FEATURE_STREAM, FLAG_STREAM};
use crate::stream::flow::{Flow, Reader, Recv};
use crate::stream::{RawSource, Stream};
use crate::trace_context::{TraceOut, spans};

/// What the read loop received for a call: a reply, or (for a streaming call) an item, credit,
/// or the server's request to stop sending input.
pub(crate) enum Incoming {
    Reply(Reply),
    Item(Bytes),
    Credit(u32),
    StopSending,
}

impl ClientConn {
    /// Hands what a read batch received for streaming calls to their flows, in the order it
    /// arrived, collecting the tasks to wake: each run of items for one stream under one lock
    /// (`run` is scratch space, kept by the read loop). Fails when the server overran a
    /// stream's credit.
    pub(super) fn deliver(
        &self,
        work: &mut Vec<(Option<Arc<Flow>>, Incoming)>,
        run: &mut Vec<Bytes>,
        wakers: &mut Vec<Waker>,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        let max = self.max_frame;
        let push_run = |flow: &Flow,
                        run: &mut Vec<Bytes>,
                        wakers: &mut Vec<Waker>,
                        result: &mut Result<(), Error>| {
            if run.is_empty() {
                return;
            }
            match flow.push_items(run, max) {
                Ok(waker) => wakers.extend(waker),
                Err(e) => *result = Err(e),
            }
        };
        // The flow of the current run (`None` entries continue it).
        let mut current: Option<Arc<Flow>> = None;
        for (flow, incoming) in work.drain(..) {
            if let Some(flow) = flow {
                if let Some(previous) = &current {
                    push_run(previous, run, wakers, &mut result);
                }
                current = Some(flow);
            }
            let Some(flow) = &current else {
                continue;
            };
            match incoming {
                Incoming::Item(body) => run.push(body),
                other => {
                    push_run(flow, run, wakers, &mut result);
                    match other {
                        Incoming::Reply(reply) => flow.finish(reply, true, wakers),
                        Incoming::Credit(n) => wakers.extend(flow.add_credit(n)),
                        Incoming::StopSending => wakers.extend(flow.close_send(Error::new(
                            ErrorKind::Cancelled,
                            "the provider no longer reads this call's input",
                        ))),
                        Incoming::Item(_) => unreachable!("matched above"),
                    }
                }
            }
        }
        if let Some(flow) = &current {
            push_run(flow, run, wakers, &mut result);
        }
        result
    }

    /// Opens a streaming call: registers its slot with a new flow and sends the request.
    /// Adds `trace` (the call's `traceparent`) to its metadata.
    pub(crate) fn open_stream<A: Args + ?Sized>(
        self: &Arc<Self>,
        head: &RequestHead<'_>,
        trace: Option<TraceOut<'_>>,
        args: &A,
        info: CallInfo,
    ) -> Result<ClientStream, CallError> {
        if !self.features.has(FEATURE_STREAM) {
            return Err(CallError::Failed(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}.{}: the provider at {} does not take streaming calls (it did not \
                     announce `{FEATURE_STREAM}`; it may be an older version); nothing was sent",
                    head.service, head.method, self.peer
                ),
            )));
        }
        spans::sending_to(self.peer);
        let flow = Arc::new(Flow::new(self.stream_window, self.peer_stream_window));
        let max = self.out.peer_max_frame;
        let pushed = self.out.push_quiet(|buf, pending| {
            let (id, rearm) = pending.register_stream(flow.clone(), info)?;
            let head = RequestHead {
                id,
                flags: head.flags | FLAG_STREAM,
                ..*head
            };
            if let Err(e) = message::put_request_args(buf, &head, trace, args, max) {
                pending.abandon(id);
                return Err(e);
            }
            Ok((id, rearm))
        });
        let (id, rearm) = pushed.map_err(|e| match e.kind() {
            ErrorKind::ConnectionClosed => CallError::Reconnect(e),
            _ => CallError::Failed(e),
        })?;
        self.out.flush_inline();
        if rearm {
            self.deadline_changed.notify_one();
        }
        Ok(ClientStream {
            conn: self.clone(),
            id,
            flow,
            reader: Reader::new(self.stream_window),
            ended: false,
        })
    }

    /// Queues a `Credit` frame for stream `id` and sends it.
    fn grant(&self, id: u64, bytes: u32) {
        let queued = self.out.push_quiet(|buf, _| {
            wire::put_credit(buf, id, bytes);
            Ok(())
        });
        if queued.is_ok() {
            self.out.flush_inline();
        }
    }
}

/// The consumer's end of a streaming call on one connection. Dropped before the call ended, it
/// cancels the call.
pub(crate) struct ClientStream {
    conn: Arc<ClientConn>,
    id: u64,
    flow: Arc<Flow>,
    /// The output items taken from the flow, and the credit owed for them.
    reader: Reader,
    ended: bool,
}

impl ClientStream {
    /// The next output item, or the call's end: `Ok` with the final response body, or its error.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Recv> {
        let recv = self.reader.poll_next(&self.flow, cx);
        match &recv {
            Poll::Ready(Recv::Item {
                grant: Some(n),
                body: _,
            }) => self.conn.grant(self.id, *n),
            Poll::Ready(Recv::End(_)) => self.ended = true,
            _ => {}
        }
        recv
    }

    /// Whether any output item has arrived (a stream that failed before its first item may be
    /// opened again elsewhere).
    pub(crate) fn received_any(&self) -> bool {
        self.flow.received() > 0
    }

    /// Whether any input item has been sent.
    pub(crate) fn sent_any(&self) -> bool {
        self.flow.sent() > 0
    }

    /// The connection's peer, for messages.
    pub(crate) fn peer(&self) -> std::net::SocketAddr {
        self.conn.peer
    }

    /// Ready when an input item may be sent (the server's credit allows it), or with the
    /// reason no more may be (the server stopped reading, or the call ended).
    pub(crate) fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.flow.poll_credit(cx).map_ok(|_| ())
    }

    /// Queues an input item already encoded (an agent relaying one), after
    /// [`ClientStream::poll_send_ready`] said it may; see [`ClientStream::flush`].
    pub(crate) fn send_raw(&self, body: &[u8]) -> Result<(), Error> {
        let out = &self.conn.out;
        let (id, max) = (self.id, out.peer_max_frame);
        let cost = out.push_quiet(|buf, _| wire::put_item_raw(buf, id, body, max))?;
        self.flow.spend(cost);
        Ok(())
    }

    /// Writes what is queued on the connection (a relay calls it once per turn, not per item).
    pub(crate) fn flush(&self) {
        self.conn.out.flush_inline();
    }

    /// Ends the call's input stream.
    pub(crate) fn send_end(&self) {
        let id = self.id;
        let queued = self.conn.out.push_quiet(|buf, _| {
            wire::put_end(buf, id);
            Ok(())
        });
        if queued.is_ok() {
            self.conn.out.flush_inline();
        }
    }

    /// A pump sending `input` as this call's input stream.
    pub(crate) fn pump<I>(&self, input: Stream<I>) -> Pump<I> {
        Pump {
            conn: self.conn.clone(),
            id: self.id,
            flow: self.flow.clone(),
            input,
            ready: VecDeque::new(),
            item_cost: 0,
            input_ended: false,
            done: false,
        }
    }
}

impl RawSource for ClientStream {
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Recv::Item { body, .. }) => Poll::Ready(Some(Ok(body))),
            // A method returning only a stream answers nil at the end: nothing to show.
            Poll::Ready(Recv::End(Ok(_))) => Poll::Ready(None),
            Poll::Ready(Recv::End(Err(e))) => Poll::Ready(Some(Err(e))),
        }
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        // An input pump still running stops at its next item.
        if let Some(waker) = self.flow.close_send(Error::new(
            ErrorKind::Cancelled,
            "the call's output was dropped",
        )) {
            waker.wake();
        }
        // Sends `Cancel` if the call has not ended, and frees its slot either way.
        self.conn.cancel(self.id);
    }
}

/// Items a pump takes from its input at a time, and then encodes under one lock.
const ITEMS_PER_BATCH: usize = 1024;
/// Items a pump sends before it yields, so one fast input cannot hold its task's thread.
const ITEMS_PER_TURN: u64 = 4096;

/// Sends a call's input stream as the server's credit allows, then `End`.
pub(crate) struct Pump<I> {
    conn: Arc<ClientConn>,
    id: u64,
    flow: Arc<Flow>,
    input: Stream<I>,
    /// Items taken from the input and not sent yet (no credit left for them).
    ready: VecDeque<I>,
    /// What an item has cost so far (0: not known yet): items are taken from the input only
    /// as many as the credit covers, so an input that is always ready is not drained into
    /// memory ahead of the server.
    item_cost: usize,
    input_ended: bool,
    done: bool,
}

impl<I: Serialize> Pump<I> {
    /// Sends what it can, a batch of ready items per lock of the write buffer. `Ready(Ok)` once
    /// the input is sent (or the server stopped taking it, or the call ended: the call's own
    /// result says how it went); `Err` when sending failed here (an item over the frame limit,
    /// the connection closing), which fails the call.
    pub(crate) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let out = &self.conn.out;
        let (id, max) = (self.id, out.peer_max_frame);
        let mut queued = false;
        let mut sent = 0u64;
        let result = loop {
            let credit = match self.flow.poll_credit(cx) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Err(_)) => {
                    self.done = true;
                    break Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(credit)) => credit,
            };
            let batch = credit
                .checked_div(self.item_cost)
                .unwrap_or(1)
                .clamp(1, ITEMS_PER_BATCH);
            while !self.input_ended && self.ready.len() < batch {
                match Pin::new(&mut self.input).poll_next(cx) {
                    Poll::Ready(Some(item)) => self.ready.push_back(item),
                    Poll::Ready(None) => self.input_ended = true,
                    Poll::Pending => break,
                }
            }
            if self.ready.is_empty() {
                if self.input_ended {
                    self.done = true;
                    let ended = out.push_quiet(|buf, _| {
                        wire::put_end(buf, id);
                        Ok(())
                    });
                    queued |= ended.is_ok();
                    break Poll::Ready(ended);
                }
                // Waiting for the application's next item; the server may meanwhile stop
                // reading (or the call end), which must end this pump too.
                self.flow.watch_send(cx);
                break Poll::Pending;
            }
            let ready = &mut self.ready;
            let encoded = out.push_quiet(|buf, _| {
                let (mut items, mut bytes) = (0u64, 0usize);
                while bytes < credit {
                    let Some(item) = ready.pop_front() else {
                        break;
                    };
                    bytes += wire::put_item(buf, id, &item, max)?;
                    items += 1;
                }
                Ok((items, bytes))
            });
            match encoded {
                Ok((items, bytes)) => {
                    self.flow.spend_many(bytes, items);
                    if items > 0 {
                        self.item_cost = (bytes / items as usize).max(1);
                    }
                    queued = true;
                    sent += items;
                }
                Err(e) => {
                    self.done = true;
                    break Poll::Ready(Err(e));
                }
            }
            if sent >= ITEMS_PER_TURN {
                cx.waker().wake_by_ref();
                break Poll::Pending;
            }
        };
        if queued {
            out.flush_inline();
        }
        result
    }

    /// Pumps until the input is sent; a failure ends the call with it (the consumer's output
    /// then yields it) and cancels it on the server.
    pub(crate) async fn run(mut self) {
        if let Err(e) = std::future::poll_fn(|cx| self.poll_pump(cx)).await {
            let mut wakers = Vec::new();
            self.flow.finish(Err(e), true, &mut wakers);
            wakers.into_iter().for_each(Waker::wake);
            self.conn.cancel_only(self.id);
        }
    }
}

use futures::Stream as _;

/// Sorts a read batch's arrivals under the pending table's lock: replies to calls complete
/// them (their callers' wakers go to `wakers`), anything for a streaming call goes to `streams`
/// with its flow. A run of frames for one stream looks its slot up once, and only the run's
/// first entry carries the flow (`None`: the same as the entry before), so items cost no
/// reference count each.
pub(super) fn sort_incoming(
    pending: &mut Pending,
    incoming: &mut Vec<(u64, Incoming)>,
    streams: &mut Vec<(Option<Arc<Flow>>, Incoming)>,
    wakers: &mut Vec<Waker>,
) {
    // The id of the stream the last entry of `streams` is for.
    let mut last: Option<u64> = None;
    // Ids found to be no (longer a) stream in this batch.
    let mut gone: Option<u64> = None;
    for (id, what) in incoming.drain(..) {
        match what {
            Incoming::Reply(reply) => match pending.complete(id, reply) {
                Some(Completion::Wake(waker)) => wakers.push(waker),
                Some(Completion::Stream(flow, reply)) => {
                    streams.push((Some(flow), Incoming::Reply(reply)));
                    last = Some(id);
                }
                None => {}
            },
            other if last == Some(id) => streams.push((None, other)),
            _ if gone == Some(id) => {}
            other => match pending.stream(id) {
                Some(flow) => {
                    streams.push((Some(flow), other));
                    last = Some(id);
                }
                // Unknown or stale ids: a stream that ended or was cancelled.
                None => gone = Some(id),
            },
        }
    }
}
