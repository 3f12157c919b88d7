//! One client connection on the server: handshake, the read loop that dispatches requests, and
//! the bookkeeping of calls still running.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

mod builtin;
mod flow;
mod forward;
mod streams;
mod tasks;

use super::call::{Batch, ServerCall, SpawnedCall};
use super::handshake::{Admitted, handshake};
use super::{Forward, Forwarded, ServerShared};
use crate::auth::{self, AUTHENTICATE_METHOD, CONNECTION_SERVICE, ConnAuth};
use crate::context::{ConnInfo, Context};
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, DEFAULT_MAX_FRAME, FLAG_ONE_WAY, Header, Kind, MIN_MAX_FRAME};
use crate::protocol::message::{self, HelloAck, PROTOCOL_VERSION, RequestView};
use crate::protocol::stream::DEFAULT_STREAM_WINDOW;
use crate::protocol::{codec, zero_copy};
use crate::service::CallName;
use crate::transport::Notifier;
use crate::transport::{BusyPoll, Flush, FrameReader, Liveness, Outbound, Stream, WriteLimits};

pub(crate) struct ServerConn {
    pub(crate) out: Arc<Outbound>,
    pub(crate) peer: SocketAddr,
    /// Peer, handshake metadata and notifier, shared by every call's context.
    info: Arc<ConnInfo>,
    calls: Mutex<InFlight>,
    /// Mirror of `InFlight::draining`, read on every request without the lock.
    draining: AtomicBool,
    /// Calls running as tasks of their own (what the in-flight cap counts).
    running: Arc<AtomicUsize>,
    /// Requests received so far; only the read loop writes it (see [`ServerConn::idle_close`]).
    requests: AtomicU64,
    drained: Notify,
    writer: AbortHandle,
    /// The task driving this connection's forwarded calls (an agent's), from the first one on.
    forwarding: std::sync::OnceLock<forward::Forwarding>,
    /// Streaming calls open on the connection, by request id.
    streams: Mutex<streams::Streams>,
    /// The credit the client grants each stream for this side's items (its `Hello`).
    peer_stream_window: u32,
    /// The largest frame this side accepts (stream items overrunning their credit by more
    /// than one of these break the protocol).
    config_max_frame: u32,
}

/// Calls running as tasks of their own, so they can be cancelled and waited for on drain.
#[derive(Default)]
struct InFlight {
    /// Keyed by `(one_way, request id)`: one-way calls share no id space with answered ones (their
    /// id means nothing), and each entry remembers which task owns it, so a finished task never
    /// removes the entry of a newer call that reused its id.
    tasks: HashMap<(bool, u64), (u64, tasks::Stop)>,
    next_task: u64,
    draining: bool,
}

/// How long a connection closed for idleness waits for the client to close its side after the
/// `GoAway` (answering requests that crossed it with `ShuttingDown`) before closing anyway.
const IDLE_LINGER: Duration = Duration::from_secs(2);

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shared: Arc<ServerShared>, stream: TcpStream, peer: SocketAddr, id: u64) {
    let _ = stream.set_nodelay(true);
    // What the client dialed, as far as this side can tell: proofs of possession name it.
    let local = stream.local_addr().unwrap_or(peer);
    // The TLS handshake, reading the Hello and verifying its token share one budget: the
    // handshake timeout.
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    let stream = match &shared.config.tls {
        None => Stream::Tcp(stream),
        Some(tls) => match tokio::time::timeout_at(handshake_deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                shared.detach(id);
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                shared.detach(id);
                return;
            }
        },
    };
    let (rd, mut wr) = stream.split();
    // Until the client is through the handshake, only a `Hello`-sized frame is accepted.
    let mut reader = FrameReader::new(rd, shared.config.hello_limit());
    let Some(Admitted {
        hello,
        identity,
        proven,
    }) = handshake(
        &shared,
        &mut reader,
        &mut wr,
        peer,
        local,
        handshake_deadline,
    )
    .await
    else {
        shared.detach(id);
        return;
    };
    reader.set_max_frame(shared.config.max_frame);

    // Never below 1 KiB: every error frame must fit, whatever a client announces.
    let out = Outbound::new(
        wr,
        hello
            .max_frame
            .unwrap_or(DEFAULT_MAX_FRAME)
            .max(MIN_MAX_FRAME),
        // The read loop queues a whole batch of responses before it waits for more input, so
        // the writer can flush as soon as it runs. An agent's answers also come from other
        // tasks (its forwarding task, the tasks relaying streams): when the writer has the
        // flush, it lets them queue first, and they share its write (measured: better for the
        // agent than flushing at once, see benches/RESULTS.md).
        if shared.forward.is_some() {
            Flush::Coalesce
        } else {
            Flush::Immediate
        },
        (),
        WriteLimits {
            max_queued: shared.config.max_write_buffer,
            stall_timeout: Some(shared.config.write_stall_timeout),
        },
    );
    let ack = HelloAck {
        version: PROTOCOL_VERSION.min(hello.version),
        agent: concat!("stardust-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
        max_frame: shared.config.max_frame,
        features: shared.config.features.clone(),
        // Only when it is not what a client assumes without it.
        stream_window: (shared.config.stream_window != DEFAULT_STREAM_WINDOW)
            .then_some(shared.config.stream_window),
    };
    let peer_stream_window = hello.stream_window.unwrap_or(DEFAULT_STREAM_WINDOW);
    let _ = out.push(|buf| message::put_serde(buf, Kind::HelloAck, &ack));
    let writer = tokio::spawn(out.clone().run_writer());
    let conn = Arc::new(ServerConn {
        out: out.clone(),
        peer,
        info: Arc::new(ConnInfo {
            peer,
            meta: hello.meta,
            features: hello.features.into(),
            notifier: Notifier::new(&out, peer),
            auth: ConnAuth::new(identity, proven),
        }),
        calls: Mutex::new(InFlight::default()),
        draining: AtomicBool::new(false),
        running: Arc::new(AtomicUsize::new(0)),
        requests: AtomicU64::new(0),
        drained: Notify::new(),
        writer: writer.abort_handle(),
        forwarding: std::sync::OnceLock::new(),
        streams: Mutex::new(streams::Streams::default()),
        peer_stream_window,
        config_max_frame: shared.config.max_frame,
    });
    shared.attach(id, &conn);

    let live = Arc::new(Liveness::new());
    let keepalive = shared
        .config
        .keepalive
        .watch(live.clone(), out.clone(), reader.bodies());
    let result = tokio::select! {
        biased;
        r = conn.read_loop(&shared, &mut reader, &live) => r,
        _ = conn.wait_drained() => Ok(()),
        e = keepalive => Err(e),
        r = conn.idle_close(shared.config.idle_timeout) => r,
        _ = out.closed() => Err(Error::connection_closed("writing to the client failed")),
    };
    match &result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection closed with error"),
    }

    // Calls still running have nobody to answer to (the peer is gone or broke the protocol).
    conn.abort_calls();
    out.close();
    // Flush what is queued (a final error or GoAway) but never wait on a peer that stopped reading.
    match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Err(_) => conn.writer.abort(),
        Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
            tracing::info!(%peer, error = %e, "disconnected a client that stopped reading");
        }
        Ok(_) => {}
    }
    shared.detach(id);
}

impl ServerConn {
    async fn read_loop(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        reader: &mut FrameReader,
        live: &Liveness,
    ) -> Result<(), Error> {
        let max_queued = shared.config.max_write_buffer;
        let mut batch = Batch::new();
        let result = self
            .read_batches(shared, reader, live, max_queued, &mut batch)
            .await;
        batch.count(shared);
        result
    }

    async fn read_batches(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        reader: &mut FrameReader,
        live: &Liveness,
        max_queued: usize,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let mut busy = BusyPoll::new(shared.config.busy_poll);
        let mut seen = self.requests.load(Ordering::Relaxed);
        loop {
            loop {
                match reader.next_frame() {
                    Ok(Some(h)) if h.kind == Kind::Item as u8 => {
                        // Taken out of the read buffer without a copy: the handler gets it.
                        let body = reader.take_body(&h);
                        self.on_item(&h, body, batch);
                    }
                    Ok(Some(h)) => {
                        // Items read before this frame reach their calls first.
                        self.route_batch_items(batch)?;
                        if h.kind == Kind::Request as u8 && h.body_len >= zero_copy::MIN_SEGMENT {
                            // Large: taken out of the buffer, so that `Bytes` arguments can be
                            // slices of it rather than copies.
                            let body = reader.take_body(&h);
                            zero_copy::with_source(&body, || {
                                self.on_frame(shared, &h, &body, batch)
                            })?;
                        } else {
                            self.on_frame(shared, &h, reader.body(&h), batch)?;
                            reader.consume(&h);
                        }
                        // Checked per frame: one batch of small requests may ask for any amount
                        // of response bytes.
                        if self.out.queued() > max_queued {
                            self.backpressure(max_queued, live).await?;
                        }
                    }
                    Ok(None) => break,
                    Err((h, e)) => {
                        // The stream cannot be resynchronised: answer the request if there is
                        // one, explain, and close.
                        if let Some(h) = h.filter(|h| h.kind == Kind::Request as u8) {
                            self.reply_error(h.id, h.flags, &e);
                        }
                        self.goaway(&e);
                        return Err(e);
                    }
                }
            }
            self.route_batch_items(batch)?;
            // Everything this batch produced leaves in one write, from this task: no hop to the
            // writer task unless the socket is full.
            self.out.flush_inline();
            batch.count(shared);
            batch.wake();
            if !self.fill_next(reader, &mut busy, &mut seen).await? {
                return Ok(());
            }
            batch.now = Instant::now();
            live.touch();
        }
    }

    /// Whether the application holds a [`Notifier`] of this connection (beyond the one in its
    /// `ConnInfo`): it means to push to the client, which may be waiting for nothing else.
    /// Notifiers are the only weak references to the outbound.
    fn has_subscribers(&self) -> bool {
        Arc::weak_count(&self.out) > 1
    }

    fn on_frame(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        h: &Header,
        body: &[u8],
        batch: &mut Batch,
    ) -> Result<(), Error> {
        match Kind::from_u8(h.kind) {
            Some(Kind::Request) => self.on_request(shared, h, body, batch),
            Some(Kind::Cancel) => self.cancel(h.id),
            Some(Kind::Credit | Kind::End) => {
                if let Err(e) = self.on_stream_frame(h, body, batch) {
                    self.goaway(&e);
                    return Err(e);
                }
            }
            Some(Kind::Ping) => {
                let _ = self.out.push(|buf| {
                    frame::put_empty(buf, Kind::Pong, 0, h.id);
                    Ok(())
                });
            }
            Some(Kind::Pong) | Some(Kind::Notify) => {}
            Some(Kind::GoAway) => {
                let e = message::parse_error(body);
                tracing::debug!(peer = %self.peer, reason = %e, "client is going away");
            }
            other => {
                let e = Error::protocol(match other {
                    Some(kind) => format!("unexpected {kind:?} frame from a client"),
                    None => format!("unknown frame kind {}", h.kind),
                });
                self.goaway(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    fn on_request(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        h: &Header,
        body: &[u8],
        batch: &mut Batch,
    ) {
        // Only the read loop writes the counter: no atomic read-modify-write needed.
        let n = self.requests.load(Ordering::Relaxed);
        self.requests.store(n.wrapping_add(1), Ordering::Relaxed);
        if let Err(e) = self.start_call(shared, h, body, batch) {
            self.reply_error(h.id, h.flags, &e);
        }
    }

    /// Decodes and starts a call. The handler is polled once right here: a handler that
    /// completes without waiting (the common case for small methods) is answered without
    /// spawning a task or touching another thread. Only a handler that actually waits becomes a
    /// task of its own, so it never holds up the other calls on this connection.
    fn start_call(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        h: &Header,
        body: &[u8],
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let raw = message::parse_request_bytes(body, &shared.config.metadata_limits)?;
        // A hosted service's method: the names are taken from its descriptor, equal as bytes
        // (no UTF-8 pass); anything else is checked and handled below by name.
        let hosted = shared.service_bytes(raw.service).map(|(i, service)| {
            let desc = service.descriptor();
            let method = desc
                .methods
                .iter()
                .position(|m| m.name.as_bytes() == raw.method);
            (i, service, method)
        });
        let req = match hosted {
            Some((_, service, Some(m))) => {
                let desc = service.descriptor();
                raw.named(desc.name, desc.methods[m].name)
            }
            _ => raw.into_view()?,
        };
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::ShuttingDown,
                "this connection is closing (the server is shutting down or the connection was \
                 idle); the call did not run: retry on another connection",
            ));
        }
        // Overload protection: a connection may not pile up calls without bound. Refused calls
        // never reach a handler, so clients may retry them elsewhere.
        let limit = shared.config.max_in_flight;
        if self.running.load(Ordering::Acquire) >= limit {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "this connection already has {limit} calls running (the provider's limit); \
                     retry later or on another provider"
                ),
            ));
        }
        if req.service == CONNECTION_SERVICE {
            return self.connection_request(shared, h, &req);
        }
        // When the batch was read: one clock read per batch, not per call.
        let now = batch.now;
        // Before the service lookup: a caller that may not call learns nothing about what is
        // hosted. Free for anonymous and unrestricted connections (one atomic load).
        self.info.auth.check(req.service, now)?;
        let Some((service_index, service, method)) = hosted else {
            return match &shared.forward {
                Some(forward) if h.flags & crate::protocol::stream::FLAG_STREAM != 0 => {
                    self.forward_stream(shared, forward.as_ref(), h, req, now)
                }
                Some(forward) => {
                    self.forward(forward.as_ref(), h, req, now);
                    Ok(())
                }
                None => Err(Error::new(
                    ErrorKind::UnknownService,
                    format!("this server does not host service `{}`", req.service),
                )),
            };
        };
        let desc = service.descriptor();
        let index = method.ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownMethod,
                format!("service `{}` has no method `{}`", desc.name, req.method),
            )
        })?;
        let streaming = desc.methods[index].is_streaming();
        streams::check_stream_flag(h, streaming, desc.methods[index].name)?;
        let deadline = (req.timeout_us > 0).then(|| now + Duration::from_micros(req.timeout_us));
        let ctx = Context {
            service: desc.name,
            method: desc.methods[index].name,
            received_at: now,
            deadline,
            trace: crate::trace_context::Served::received(req.trace, req.trace_id),
            metadata: req.meta,
            conn: Some(self.info.clone()),
        };
        for i in &shared.interceptors {
            i.before_call(&ctx)?;
        }
        if streaming {
            let target = streams::StreamTarget {
                service: service.as_ref(),
                service_index,
                method: index,
            };
            return self.start_stream(shared, h, ctx, target, req.args);
        }
        let mut cx = std::task::Context::from_waker(Waker::noop());
        let target = (service.as_ref(), index, req.args);
        let (mut call, first) = ServerCall::start_polled(ctx, (h.id, h.flags), target, &mut cx);
        call.count_in(service_index, index);
        if let Poll::Ready(outcome) = first {
            call.finish(outcome, self, shared);
            if let Some(done) = call.take_done() {
                batch.push(done);
            }
            return Ok(());
        }
        call.spawning(shared);
        let call = SpawnedCall {
            call,
            conn: self.clone(),
            shared: shared.clone(),
            stream: None,
        };
        self.track(h, |key, task_id| call.run(deadline, key, task_id));
        Ok(())
    }

    fn cancel(&self, id: u64) {
        let stop = {
            let mut calls = self.calls.lock();
            let stop = calls.tasks.remove(&(false, id));
            if stop.is_some() && calls.draining && calls.tasks.is_empty() {
                self.drained.notify_waiters();
            }
            stop
        };
        if let Some((_, stop)) = stop {
            stop.abort();
        }
    }

    /// Calls of this connection running as tasks.
    pub(crate) fn in_flight(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Sends the answer a call running as a task of its own just queued: at once from here
    /// when it is the only such call (no hop to the writer), else through the writer once the
    /// other tasks finishing now queued theirs (one write for all of them).
    pub(crate) fn flush_finished(&self) {
        if self.running.load(Ordering::Acquire) <= 1 {
            self.out.flush_inline();
        } else {
            self.out.wake_writer_gathering();
        }
    }

    /// Called when a call that outlived its batch finished (a spawned one, a forwarded one).
    pub(crate) fn call_done(&self, key: (bool, u64), task_id: u64) {
        let mut calls = self.calls.lock();
        if calls
            .tasks
            .get(&key)
            .is_some_and(|(owner, _)| *owner == task_id)
        {
            calls.tasks.remove(&key);
        }
        if calls.draining && calls.tasks.is_empty() {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn reply_error(&self, id: u64, flags: u8, err: &Error) {
        if flags & FLAG_ONE_WAY != 0 {
            tracing::debug!(peer = %self.peer, id, error = %err, "one-way call failed");
            return;
        }
        let _ = self.out.push(|buf| {
            message::put_error(buf, Kind::Error, id, err);
            Ok(())
        });
    }

    fn goaway(&self, err: &Error) {
        let _ = self.out.push(|buf| {
            message::put_error(buf, Kind::GoAway, 0, err);
            Ok(())
        });
    }

    /// Starts a graceful close: the client is told, new calls are refused, running ones finish.
    pub(crate) fn begin_drain(&self) {
        let mut calls = self.calls.lock();
        if calls.draining {
            return;
        }
        calls.draining = true;
        self.draining.store(true, Ordering::Release);
        self.goaway(&Error::new(
            ErrorKind::ShuttingDown,
            "the server is shutting down",
        ));
        self.drained.notify_waiters();
    }

    async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            {
                let calls = self.calls.lock();
                if calls.draining && calls.tasks.is_empty() {
                    return;
                }
            }
            notified.await;
        }
    }

    fn abort_calls(&self) {
        let tasks: Vec<tasks::Stop> = self
            .calls
            .lock()
            .tasks
            .drain()
            .map(|(_, (_, t))| t)
            .collect();
        for t in tasks {
            t.abort();
        }
        // Its forwarded calls go with it (dropped, which cancels them upstream).
        if let Some(f) = self.forwarding.get() {
            f.stop();
        }
    }

    /// Cuts the connection at once (server dropped).
    pub(crate) fn abort(&self) {
        self.abort_calls();
        self.out.close();
        self.writer.abort();
    }
}
