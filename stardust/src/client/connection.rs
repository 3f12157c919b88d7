//! One client connection: sending requests, the read loop that completes them and the deadline
//! sweeper; opening it (`open`) and renewing its access token (`renewal`) are in child modules.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::ClientConfig;
use super::notifications::Notification;
use super::pending::{CallInfo, CallName, Pending};
use crate::auth::{self, AUTHENTICATE_METHOD, CONNECTION_SERVICE, SharedCredentials, TOKEN_KEY};
use crate::balance::clock_ns;
use crate::error::{Error, ErrorKind};
use crate::metadata::Metadata;
use crate::protocol::frame::{self, FLAG_IDEMPOTENT, Kind};
use crate::protocol::message::{
    self, Args, Hello, HelloAck, PROTOCOL_NAME, PROTOCOL_VERSION, RequestHead,
};
use crate::stream::flow::Flow;
use crate::tls::ClientTls;
use crate::trace_context::{TraceOut, spans};
use crate::transport::{BusyPoll, Flush, FrameReader, Liveness, Outbound, Stream, WriteLimits};

mod open;
mod renewal;
mod stream;

use stream::sort_incoming;
pub(crate) use stream::{ClientStream, Incoming};

pub(crate) struct ClientConn {
    /// The write queue, which also guards the pending-call table: registering a call and queueing
    /// its request is one critical section.
    out: Arc<Outbound<Pending>>,
    /// Poked when a call registers a deadline earlier than the sweeper's next wake-up.
    deadline_changed: Notify,
    /// The server sent `GoAway`: finish what is in flight, start nothing new here.
    draining: AtomicBool,
    closed: AtomicBool,
    /// Poked when the last call in flight finishes on a draining connection.
    idle: Notify,
    /// Every task of the connection, aborted when the client drops it.
    tasks: Mutex<Vec<AbortHandle>>,
    /// Tasks that would otherwise outlive a closed connection (the deadline sweeper and the token
    /// renewal), aborted when it closes.
    background: Mutex<Vec<AbortHandle>>,
    pub(crate) peer: SocketAddr,
    /// The optional capabilities the server announced in its `HelloAck`.
    pub(crate) features: crate::Features,
    /// When the server was last heard from, and whether a ping is waiting for its pong.
    pub(crate) live: Arc<Liveness>,
    /// The credit this side grants each stream for the server's items.
    stream_window: u32,
    /// The credit the server grants each stream for this side's items (its `HelloAck`).
    peer_stream_window: u32,
    /// The largest frame this side accepts.
    max_frame: u32,
    /// How long the read loop may keep its worker awake waiting for replies (see
    /// [`BusyPoll`]).
    busy_poll: Duration,
    /// When the last batch of replies was read ([`clock_ns`]): their arrival time, for callers
    /// that measure latency, at one clock read per batch rather than one per call.
    pub(crate) arrived_ns: AtomicU64,
}

static NO_METADATA: Metadata = Metadata::new();

/// The most calls in flight for which the read loop busy-polls (see [`BusyPoll`]).
const SPIN_MAX_IN_FLIGHT: usize = 4;

/// How to secure a new connection: the TLS config, and the host name the server's certificate
/// should carry when it is known (a registered `host:port` endpoint).
#[derive(Clone, Copy)]
pub(crate) struct Secure<'a> {
    pub(crate) tls: &'a ClientTls,
    pub(crate) host: Option<&'a str>,
}

/// Why a call failed.
pub(crate) enum CallError {
    /// The connection was found closed before anything was queued: safe to try again on a new
    /// connection.
    Reconnect(Error),
    /// Final.
    Failed(Error),
}

impl ClientConn {
    /// Stops new calls on this connection and closes it once the calls in flight are done.
    pub(crate) async fn retire(&self, reason: Error) {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.closed.load(Ordering::SeqCst)
                || self.out.with_state(|pending, _, _| pending.in_flight()) == 0
            {
                break;
            }
            idle.await;
        }
        self.teardown(&reason);
    }

    /// Called when a call left the pending table, with the number still in it.
    #[inline]
    fn released(&self, in_flight: usize) {
        if in_flight == 0 && self.draining.load(Ordering::Relaxed) {
            self.idle.notify_waiters();
        }
    }

    async fn read_loop(
        &self,
        reader: &mut FrameReader,
        live: &Liveness,
        notify_tx: &broadcast::Sender<Notification>,
    ) -> Result<(), Error> {
        // Replies of one read batch are completed under one lock, and their callers woken after it
        // is released; what is for streaming calls goes to their flows after the lock, in order.
        // The vectors are reused, so the loop does not allocate in steady state.
        let mut incoming: Vec<(u64, Incoming)> = Vec::new();
        let mut streams: Vec<(Option<Arc<Flow>>, Incoming)> = Vec::new();
        let mut run: Vec<Bytes> = Vec::new();
        let mut wakers: Vec<Waker> = Vec::new();
        let mut busy = BusyPoll::new(self.busy_poll);
        // Calls registered as of the last batch (their callers may not have taken their replies
        // yet): while there are any, more replies are coming soon and spinning may pay.
        let mut in_flight = 0;
        loop {
            let result = self.read_batch(reader, notify_tx, &mut incoming);
            if !incoming.is_empty() {
                self.arrived_ns
                    .store(clock_ns(std::time::Instant::now()), Ordering::Relaxed);
                in_flight = self.out.with_state(|pending, _, _| {
                    sort_incoming(pending, &mut incoming, &mut streams, &mut wakers);
                    pending.in_flight()
                });
                let delivered = self.deliver(&mut streams, &mut run, &mut wakers);
                wakers.drain(..).for_each(Waker::wake);
                delivered?;
            }
            result?;
            // Only for a few calls at a time: with many in flight their replies come as a
            // stream and one wake-up is shared by a batch of them, while spinning would take CPU
            // time from whoever produces them (on one machine, the server). Not inside a large
            // frame either: its rest arrives at the pace of the peer's writes.
            let spin = if (1..=SPIN_MAX_IN_FLIGHT).contains(&in_flight) && !reader.mid_frame() {
                busy.next_spin()
            } else {
                None
            };
            let filled = if self.draining.load(Ordering::Relaxed) {
                match self.fill_while_used(reader).await {
                    Some(filled) => filled?,
                    None => return Ok(()),
                }
            } else if let Some(spin) = spin {
                let (filled, caught) = reader.fill_spinning(spin).await;
                busy.record(caught);
                filled?
            } else {
                reader.fill().await?
            };
            if !filled {
                return Ok(());
            }
            live.touch();
        }
    }

    /// Reads more on a draining connection (the server sent `GoAway(ShuttingDown)`, or the pool
    /// retired it) until no call is left on it: then closes it (`None`), so the server need not
    /// wait for us to go.
    async fn fill_while_used(&self, reader: &mut FrameReader) -> Option<Result<bool, Error>> {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.close_if_unused() {
                return None;
            }
            tokio::select! {
                filled = reader.fill() => return Some(filled),
                _ = idle => {}
            }
        }
    }

    /// Closes the pending table if no call is in flight. In the same critical section as the
    /// check, so a call that starts from now on finds the connection closed before anything is
    /// queued, and goes to a new connection.
    fn close_if_unused(&self) -> bool {
        self.out.with_state(|pending, _, _| {
            let unused = pending.in_flight() == 0;
            if unused {
                pending.close(&Error::connection_closed(
                    "the connection is draining; the call goes to a new one",
                ));
            }
            unused
        })
    }

    /// Handles every complete frame in the read buffer; replies are collected into `replies`.
    fn read_batch(
        &self,
        reader: &mut FrameReader,
        notify_tx: &broadcast::Sender<Notification>,
        replies: &mut Vec<(u64, Incoming)>,
    ) -> Result<(), Error> {
        loop {
            let h = match reader.next_frame() {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err((_, e)) => return Err(e),
            };
            match Kind::from_u8(h.kind) {
                Some(Kind::Response) => {
                    replies.push((h.id, Incoming::Reply(Ok(reader.take_body(&h)))))
                }
                Some(Kind::Error) => {
                    let err = message::parse_error(reader.body(&h));
                    reader.consume(&h);
                    replies.push((h.id, Incoming::Reply(Err(err))));
                }
                Some(Kind::Item) => replies.push((h.id, Incoming::Item(reader.take_body(&h)))),
                Some(Kind::Credit) => {
                    let n = crate::protocol::stream::parse_credit(reader.body(&h))?;
                    reader.consume(&h);
                    replies.push((h.id, Incoming::Credit(n)));
                }
                // From the server, only in a streaming call: stop sending its input.
                Some(Kind::Cancel) => {
                    reader.consume(&h);
                    replies.push((h.id, Incoming::StopSending));
                }
                Some(Kind::Notify) => {
                    let body = reader.take_body(&h);
                    self.deliver_notification(body, notify_tx);
                }
                Some(Kind::Ping) => {
                    reader.consume(&h);
                    let _ = self.out.push(|buf| {
                        frame::put_empty(buf, Kind::Pong, 0, h.id);
                        Ok(())
                    });
                }
                Some(Kind::Pong) => reader.consume(&h),
                Some(Kind::GoAway) => {
                    let reason = message::parse_error(reader.body(&h));
                    reader.consume(&h);
                    tracing::debug!(peer = %self.peer, %reason, "server sent GoAway");
                    self.draining.store(true, Ordering::SeqCst);
                    if reason.kind() != ErrorKind::ShuttingDown {
                        // Not a graceful drain: the server is closing because of an error;
                        // every call in flight fails with its reason.
                        return Err(reason);
                    }
                }
                other => {
                    return Err(Error::protocol(format!(
                        "unexpected frame kind {} ({other:?}) from the server",
                        h.kind
                    )));
                }
            }
        }
    }

    fn deliver_notification(&self, body: Bytes, notify_tx: &broadcast::Sender<Notification>) {
        match Notification::from_body(&body) {
            Ok(n) => {
                // No subscriber is not an error: notifications are best effort.
                let _ = notify_tx.send(n);
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "dropping malformed notification")
            }
        }
    }

    /// Sleeps until the earliest deadline of the calls in flight, then fails the overdue ones
    /// (telling the server to stop working on them).
    async fn sweep_deadlines(self: Arc<Self>) {
        loop {
            let changed = self.deadline_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.out.with_state(|pending, _, _| pending.next_wake()) {
                None => changed.await,
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = changed => continue,
                    }
                    let now = Instant::now();
                    let expired = self
                        .out
                        .with_state(|pending, buf, closed| pending.expire(now, buf, !closed));
                    if !expired.is_empty() {
                        self.out.wake_writer();
                        expired.into_iter().for_each(Waker::wake);
                    }
                }
            }
        }
    }

    /// Starts a call: registers its slot (woken through `waker`) and queues its request.
    fn start_call<A: Args + ?Sized>(
        &self,
        head: &RequestHead<'_>,
        trace: Option<TraceOut<'_>>,
        args: &A,
        info: CallInfo,
        waker: &Waker,
    ) -> Result<u64, Error> {
        spans::sending_to(self.peer);
        let max = self.out.peer_max_frame;
        let (id, rearm, alone) = self.out.push_quiet(|buf, pending| {
            let (id, rearm) = pending.register(waker, info)?;
            let head = RequestHead { id, ..*head };
            if let Err(e) = message::put_request_args(buf, &head, trace, args, max) {
                pending.abandon(id);
                return Err(match e.kind() {
                    ErrorKind::FrameTooLarge => Error::new(
                        ErrorKind::FrameTooLarge,
                        format!(
                            "request to {}.{} not sent: {}",
                            head.service,
                            head.method,
                            e.message()
                        ),
                    ),
                    _ => e,
                });
            }
            Ok((id, rearm, pending.in_flight() == 1))
        })?;
        if alone {
            // Nobody else is about to queue a request: send now, from this task, instead of
            // waking the writer and waiting for it to gather a batch.
            self.out.flush_inline();
        } else {
            self.out.wake_writer();
        }
        if rearm {
            self.deadline_changed.notify_one();
        }
        Ok(id)
    }

    /// Marks the calls whose hedge is due at `now` and wakes their callers.
    pub(crate) fn wake_due_hedges(&self, now: Instant, wakers: &mut Vec<Waker>) {
        self.out
            .with_state(|pending, _, _| pending.due_hedges(now, wakers));
        wakers.drain(..).for_each(Waker::wake);
    }

    /// Sends a request and waits for its reply.
    pub(crate) fn exchange<'a, A: Args + ?Sized>(
        self: Arc<Self>,
        head: RequestHead<'a>,
        args: &'a A,
        info: CallInfo,
    ) -> Exchange<'a, A> {
        self.exchange_traced(head, None, args, info)
    }

    /// [`exchange`](Self::exchange), adding `trace` (the call's `traceparent`) to its metadata.
    pub(crate) fn exchange_traced<'a, A: Args + ?Sized>(
        self: Arc<Self>,
        head: RequestHead<'a>,
        trace: Option<TraceOut<'a>>,
        args: &'a A,
        info: CallInfo,
    ) -> Exchange<'a, A> {
        Exchange {
            conn: self,
            head,
            trace,
            args,
            info: Some(info),
            id: None,
            done: false,
            hedge_due: false,
        }
    }

    /// Queues a one-way request (no response slot), adding `trace` (the call's `traceparent`)
    /// to its metadata.
    pub(crate) fn send_one_way<A: Args + ?Sized>(
        &self,
        head: RequestHead<'_>,
        trace: Option<TraceOut<'_>>,
        args: &A,
    ) -> Result<(), Error> {
        let max = self.out.peer_max_frame;
        self.out.push_quiet(|buf, pending| {
            if let Some(e) = pending.closed_error() {
                return Err(e.clone());
            }
            message::put_request_args(buf, &head, trace, args, max)
        })?;
        self.out.wake_writer();
        Ok(())
    }

    /// Tells the server to stop working on call `id`, keeping its slot (its consumer still
    /// holds it and frees it later).
    fn cancel_only(&self, id: u64) {
        let sent = self.out.with_state(|_, buf, closed| {
            if !closed {
                frame::put_empty(buf, Kind::Cancel, 0, id);
            }
            !closed
        });
        if sent {
            self.out.wake_writer();
        }
    }

    /// Gives up on call `id`, telling the server to stop working on it.
    fn cancel(&self, id: u64) {
        let (sent, in_flight) = self.out.with_state(|pending, buf, closed| {
            let waiting = pending.abandon(id);
            if waiting && !closed {
                frame::put_empty(buf, Kind::Cancel, 0, id);
            }
            (waiting && !closed, pending.in_flight())
        });
        if sent {
            self.out.wake_writer();
        }
        self.released(in_flight);
    }

    /// Whether new calls may start on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && !self.out.is_closed()
    }

    fn teardown(&self, err: &Error) {
        self.closed.store(true, Ordering::SeqCst);
        // A drain waiting for the calls in flight has nothing left to wait for.
        self.idle.notify_waiters();
        let wakers = self.out.with_state(|pending, _, _| pending.close(err));
        for w in wakers {
            w.wake();
        }
        self.out.close();
        // Without this the sweeper would wait forever for a deadline that never comes, keeping
        // the dead connection (and its socket) alive.
        for t in self.background.lock().drain(..) {
            t.abort();
        }
    }

    /// Closes the connection at once (the client was dropped).
    pub(crate) fn shutdown(&self) {
        self.teardown(&Error::connection_closed("the client was dropped"));
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// One call on the wire: queued on first poll (so the slot can hold the task's waker from the
/// start), then completed by the read loop or the deadline sweeper. Dropped before that, it
/// cancels the call on the server.
pub(crate) struct Exchange<'a, A: ?Sized> {
    conn: Arc<ClientConn>,
    head: RequestHead<'a>,
    trace: Option<TraceOut<'a>>,
    args: &'a A,
    /// Taken when the call starts.
    info: Option<CallInfo>,
    id: Option<u64>,
    done: bool,
    /// The pool's watchdog found the call due for a hedge (see [`Exchange::take_hedge_due`]).
    hedge_due: bool,
}

impl<A: ?Sized> Exchange<'_, A> {
    /// When the reply that completed the call was read ([`clock_ns`]; the last batch's time).
    pub(crate) fn arrived_ns(&self) -> u64 {
        self.conn.arrived_ns.load(Ordering::Relaxed)
    }

    /// Whether the call became due for a hedge since this was last asked (checked after a
    /// poll that returned `Pending`).
    pub(crate) fn take_hedge_due(&mut self) -> bool {
        std::mem::take(&mut self.hedge_due)
    }
}

impl<A: Args + ?Sized> Future for Exchange<'_, A> {
    type Output = Result<Bytes, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = match self.id {
            Some(id) => id,
            None => {
                let this = &mut *self;
                let Some(info) = this.info.take() else {
                    return Poll::Ready(Err(CallError::Failed(Error::new(
                        ErrorKind::Internal,
                        "call polled after it completed",
                    ))));
                };
                match this
                    .conn
                    .start_call(&this.head, this.trace, this.args, info, cx.waker())
                {
                    Ok(id) => {
                        self.id = Some(id);
                        return Poll::Pending;
                    }
                    Err(e) => {
                        self.done = true;
                        return Poll::Ready(Err(if e.kind() == ErrorKind::ConnectionClosed {
                            CallError::Reconnect(e)
                        } else {
                            CallError::Failed(e)
                        }));
                    }
                }
            }
        };
        let (poll, in_flight) = self
            .conn
            .out
            .with_state(|pending, _, _| (pending.poll_hedged(id, cx), pending.in_flight()));
        match poll.0 {
            Poll::Pending => {
                self.hedge_due |= poll.1;
                Poll::Pending
            }
            Poll::Ready(reply) => {
                self.done = true;
                self.conn.released(in_flight);
                Poll::Ready(reply.map_err(CallError::Failed))
            }
        }
    }
}

impl<A: ?Sized> Drop for Exchange<'_, A> {
    fn drop(&mut self) {
        if let (Some(id), false) = (self.id, self.done) {
            self.conn.cancel(id);
        }
    }
}
