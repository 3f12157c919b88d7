//! One client connection: handshake, sending requests, the read loop that completes them, and
//! the deadline sweeper.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Notify, broadcast};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::ClientConfig;
use super::notifications::Notification;
use super::pending::{CallInfo, Pending, Reply};
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, Kind};
use crate::protocol::message::{
    self, Hello, HelloAck, PROTOCOL_NAME, PROTOCOL_VERSION, RequestHead,
};
use crate::transport::{Flush, FrameReader, Liveness, Outbound};

pub(crate) struct ClientConn {
    /// The write queue, which also guards the pending-call table: registering a call and queueing
    /// its request is one critical section.
    out: Arc<Outbound<Pending>>,
    /// Poked when a call registers a deadline earlier than the sweeper's next wake-up.
    deadline_changed: Notify,
    /// The server sent `GoAway`: finish what is in flight, start nothing new here.
    draining: AtomicBool,
    closed: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    pub(crate) peer: SocketAddr,
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
    /// Connects to the first address that accepts and performs the handshake.
    pub(crate) async fn connect(
        addrs: &[SocketAddr],
        config: &ClientConfig,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        let mut last_err = None;
        for addr in addrs {
            let attempt = Self::connect_one(*addr, config, notify_tx.clone());
            match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(Error::new(
                        ErrorKind::Connect,
                        format!(
                            "connecting to {addr} took longer than {} ms",
                            config.connect_timeout.as_millis()
                        ),
                    ))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address to connect to")))
    }

    async fn connect_one(
        addr: SocketAddr,
        config: &ClientConfig,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            Error::new(ErrorKind::Connect, format!("cannot connect to {addr}: {e}")).with_source(e)
        })?;
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, config.max_frame);

        // The handshake is the only exchange done without the writer task: one frame each way.
        let hello = Hello {
            protocol: PROTOCOL_NAME.to_owned(),
            version: PROTOCOL_VERSION,
            agent: concat!("stardust-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_frame: Some(config.max_frame),
            meta: config.hello_meta.clone(),
        };
        let mut buf = bytes::BytesMut::new();
        message::put_serde(&mut buf, Kind::Hello, &hello)?;
        tokio::io::AsyncWriteExt::write_all(&mut wr, &buf)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("handshake with {addr} failed: {e}"),
                )
                .with_source(e)
            })?;
        let ack = read_ack(&mut reader, addr).await?;
        if ack.version < 1 || ack.version > PROTOCOL_VERSION {
            return Err(Error::protocol(format!(
                "server {addr} answered with protocol version {}, this client speaks {PROTOCOL_VERSION}",
                ack.version
            )));
        }

        let out = Outbound::new(
            wr,
            ack.max_frame.max(frame::MIN_MAX_FRAME),
            // Requests come from many caller tasks: gather them into one write.
            Flush::Coalesce,
            Pending::default(),
        );
        let conn = Arc::new(ClientConn {
            out: out.clone(),
            deadline_changed: Notify::new(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            peer: addr,
        });
        let writer = tokio::spawn(out.clone().run_writer());
        let sweeper = tokio::spawn(conn.clone().sweep_deadlines());
        let live = Arc::new(Liveness::new());
        let keepalive = config.keepalive.watch(live.clone(), out.clone());
        let reader_conn = conn.clone();
        let read_task = tokio::spawn(async move {
            let result = tokio::select! {
                biased;
                r = reader_conn.read_loop(&mut reader, &live, &notify_tx) => r,
                e = keepalive => Err(e),
                _ = out.closed() => Err(Error::connection_closed(format!("writing to {addr} failed"))),
            };
            let err = match result {
                Ok(()) => {
                    Error::connection_closed(format!("the server at {addr} closed the connection"))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionClosed => e,
                Err(e) => Error::connection_closed(format!("connection to {addr} failed: {e}")),
            };
            tracing::debug!(%addr, error = %err, "client connection closed");
            reader_conn.teardown(&err);
        });
        conn.tasks.lock().extend([
            writer.abort_handle(),
            sweeper.abort_handle(),
            read_task.abort_handle(),
        ]);
        Ok(conn)
    }

    async fn read_loop(
        &self,
        reader: &mut FrameReader,
        live: &Liveness,
        notify_tx: &broadcast::Sender<Notification>,
    ) -> Result<(), Error> {
        // Replies of one read batch are completed under one lock, and their callers woken after it
        // is released. Both vectors are reused, so the loop does not allocate in steady state.
        let mut replies: Vec<(u64, Reply)> = Vec::new();
        let mut wakers: Vec<Waker> = Vec::new();
        loop {
            let result = self.read_batch(reader, notify_tx, &mut replies);
            if !replies.is_empty() {
                self.out.with_state(|pending, _, _| {
                    wakers.extend(
                        replies
                            .drain(..)
                            .filter_map(|(id, reply)| pending.complete(id, reply)),
                    )
                });
                wakers.drain(..).for_each(Waker::wake);
            }
            result?;
            if !reader.fill().await? {
                return Ok(());
            }
            live.touch();
        }
    }

    /// Handles every complete frame in the read buffer; replies are collected into `replies`.
    fn read_batch(
        &self,
        reader: &mut FrameReader,
        notify_tx: &broadcast::Sender<Notification>,
        replies: &mut Vec<(u64, Reply)>,
    ) -> Result<(), Error> {
        loop {
            let h = match reader.next_frame() {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err((_, e)) => return Err(e),
            };
            match Kind::from_u8(h.kind) {
                Some(Kind::Response) => replies.push((h.id, Ok(reader.take_body(&h)))),
                Some(Kind::Error) => {
                    let err = message::parse_error(reader.body(&h));
                    reader.consume(&h);
                    replies.push((h.id, Err(err)));
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
        match message::parse_notify(&body) {
            Ok((topic, payload)) => {
                let offset = body.len() - payload.len();
                let n = Notification::new(topic.to_owned(), body.slice(offset..));
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
    fn start_call<A: Serialize + ?Sized>(
        &self,
        head: &RequestHead<'_>,
        args: &A,
        info: CallInfo,
        waker: &Waker,
    ) -> Result<u64, Error> {
        let max = self.out.peer_max_frame;
        let (id, rearm, alone) = self.out.push_quiet(|buf, pending| {
            let (id, rearm) = pending.register(waker, info)?;
            let head = RequestHead { id, ..*head };
            if let Err(e) = message::put_request(buf, &head, args, max) {
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

    /// Sends a request and waits for its reply.
    pub(crate) fn exchange<'a, A: Serialize + ?Sized>(
        &'a self,
        head: RequestHead<'a>,
        args: &'a A,
        info: CallInfo,
    ) -> Exchange<'a, A> {
        Exchange {
            conn: self,
            head,
            args,
            info,
            id: None,
            done: false,
        }
    }

    /// Queues a one-way request (no response slot).
    pub(crate) fn send_one_way<A: Serialize + ?Sized>(
        &self,
        head: RequestHead<'_>,
        args: &A,
    ) -> Result<(), Error> {
        let max = self.out.peer_max_frame;
        self.out.push_quiet(|buf, pending| {
            if let Some(e) = pending.closed_error() {
                return Err(e.clone());
            }
            message::put_request(buf, &head, args, max)
        })?;
        self.out.wake_writer();
        Ok(())
    }

    /// Gives up on call `id`, telling the server to stop working on it.
    fn cancel(&self, id: u64) {
        let sent = self.out.with_state(|pending, buf, closed| {
            let waiting = pending.abandon(id);
            if waiting && !closed {
                frame::put_empty(buf, Kind::Cancel, 0, id);
            }
            waiting && !closed
        });
        if sent {
            self.out.wake_writer();
        }
    }

    /// Whether new calls may start on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
            && !self.draining.load(Ordering::SeqCst)
            && !self.out.is_closed()
    }

    fn teardown(&self, err: &Error) {
        self.closed.store(true, Ordering::SeqCst);
        let wakers = self.out.with_state(|pending, _, _| pending.close(err));
        for w in wakers {
            w.wake();
        }
        self.out.close();
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
    conn: &'a ClientConn,
    head: RequestHead<'a>,
    args: &'a A,
    info: CallInfo,
    id: Option<u64>,
    done: bool,
}

impl<A: Serialize + ?Sized> Future for Exchange<'_, A> {
    type Output = Result<Bytes, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = match self.id {
            Some(id) => id,
            None => {
                let this = &mut *self;
                match this
                    .conn
                    .start_call(&this.head, this.args, this.info, cx.waker())
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
        let poll = self
            .conn
            .out
            .with_state(|pending, _, _| pending.poll(id, cx));
        match poll {
            Poll::Pending => Poll::Pending,
            Poll::Ready(reply) => {
                self.done = true;
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

async fn read_ack(reader: &mut FrameReader, addr: SocketAddr) -> Result<HelloAck, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                let body = reader.body(&h);
                let result = match Kind::from_u8(h.kind) {
                    Some(Kind::HelloAck) => rmp_serde::from_slice::<HelloAck>(body).map_err(|e| {
                        Error::protocol(format!("malformed HelloAck from {addr}: {e}"))
                    }),
                    // The server refused the connection and said why.
                    Some(Kind::GoAway) => Err(message::parse_error(body)),
                    _ => Err(Error::protocol(format!(
                        "{addr} did not answer the handshake with HelloAck (got frame kind {})",
                        h.kind
                    ))),
                };
                reader.consume(&h);
                return result;
            }
            Ok(None) => {
                if !reader.fill().await? {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!("{addr} closed the connection during the handshake"),
                    ));
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}
