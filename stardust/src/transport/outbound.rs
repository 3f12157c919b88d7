//! The write side of a connection: a frame buffer shared by all producers.
//!
//! Producers append whole frames under a short lock. Whoever then *flushes* owns the socket's
//! write side until the buffer is empty (the `flushing` flag), so frames never interleave:
//!
//! - the **writer task** flushes when woken; for many independent producers (client callers) it
//!   yields once first, so every task runnable right now adds its frame to the same syscall;
//! - a producer that knows it is alone (a client's only call in flight, or the server's read loop
//!   at the end of a batch) flushes **inline** with a non-blocking write, saving the hop to the
//!   writer task. If the socket cannot take everything, the rest is handed to the writer task,
//!   which waits for the socket to become writable.
//!
//! The queue is bounded by its producers, not here: [`Outbound::queued`] tells a producer that can
//! wait (the server's read loop) when to stop adding work until [`Outbound::drained_to`] says the
//! peer caught up, and best-effort frames are refused over [`WriteLimits::max_queued`]. A peer that
//! accepts no bytes at all for [`WriteLimits::stall_timeout`] fails the writer, which closes the
//! connection.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::WriteHalf;
use super::batch::Batch;
use crate::error::Error;
use crate::protocol::zero_copy;

/// Buffers above this size are not kept for reuse after a flush, so one large message does not
/// pin megabytes per idle connection.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long closing the write side (TLS `close_notify`, then FIN) may take.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Bounds of a connection's write queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteLimits {
    /// Queued bytes above which producers that can wait stop adding (see
    /// [`Outbound::drained_to`]) and best-effort frames are refused ([`Outbound::over_limit`]).
    pub(crate) max_queued: usize,
    /// The writer fails (closing the connection) when the socket accepted no byte of what is
    /// queued for this long: the peer stopped reading. `None`: wait forever.
    pub(crate) stall_timeout: Option<Duration>,
}

/// The write side of one connection.
///
/// `S` is state that producers must update atomically with queueing their frame: the client keeps
/// its table of pending calls here, so registering a call and queueing its request take one lock,
/// not two. The server has none (`()`).
pub(crate) struct Outbound<S = ()> {
    wr: WriteHalf,
    state: Mutex<State<S>>,
    wake: Notify,
    /// Signalled once when the connection starts closing.
    on_close: Notify,
    /// The largest frame the peer accepts (from the handshake).
    pub(crate) peer_max_frame: u32,
    /// Whether the writer yields once before each flush to gather frames from other tasks.
    coalesce: bool,
    /// Set by [`Outbound::wake_writer_gathering`]: the next flush yields once first, as
    /// `coalesce` makes every flush do.
    gather: AtomicBool,
    /// Mirror of `State::closed`, readable without the lock.
    closed_flag: AtomicBool,
    limits: WriteLimits,
    /// Mirror of the bytes queued and not yet written (`State::buf` plus `State::taken`), readable
    /// without the lock. Exact after a write completes; while one is under way it still counts
    /// the bytes being written.
    queued: AtomicUsize,
    /// Signalled when the queue drained to `State::drain_below`.
    drained: Notify,
}

struct State<S> {
    /// Frames queued and not yet taken by a flusher (with their payload segments).
    buf: Batch,
    /// An empty batch kept for the next swap, so flushing does not allocate.
    spare: Batch,
    /// Someone (the writer task or an inline flusher) owns the socket's write side.
    flushing: bool,
    /// What an inline flush could not write: the writer task must send it first.
    stalled: Option<Batch>,
    /// Bytes a flusher took out of `buf` and has not finished writing (including `stalled`).
    taken: usize,
    /// A producer waits in [`Outbound::drained_to`] for the queue to shrink to this many bytes.
    drain_below: Option<usize>,
    /// No more frames are accepted; the writer flushes what is buffered and stops.
    closed: bool,
    extra: S,
}

/// How the writer gathers frames into one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Producers are many independent tasks (client callers): the writer yields once before
    /// flushing so every task that is runnable right now adds its frame to the same write.
    Coalesce,
    /// The main producer batches by itself (the server's read loop): flush as soon as woken.
    Immediate,
}

enum Job {
    Wait,
    Write(Batch),
    Stop,
}

impl<S> Outbound<S> {
    pub(crate) fn new(
        wr: WriteHalf,
        peer_max_frame: u32,
        flush: Flush,
        extra: S,
        limits: WriteLimits,
    ) -> Arc<Outbound<S>> {
        Arc::new(Outbound {
            wr,
            state: Mutex::new(State {
                // Both start empty and grow to what the connection's traffic needs: most
                // connections carry small frames, and thousands of them each reserving kilobytes
                // up front is memory the allocator keeps after they close.
                buf: Batch::default(),
                spare: Batch::default(),
                flushing: false,
                stalled: None,
                taken: 0,
                drain_below: None,
                closed: false,
                extra,
            }),
            wake: Notify::new(),
            on_close: Notify::new(),
            peer_max_frame,
            coalesce: flush == Flush::Coalesce,
            gather: AtomicBool::new(false),
            closed_flag: AtomicBool::new(false),
            limits,
            queued: AtomicUsize::new(0),
            drained: Notify::new(),
        })
    }

    /// Appends one or more frames with `f` and wakes the writer.
    ///
    /// `f` must leave the buffer holding whole frames (the `protocol` encoders guarantee that, also
    /// on error). Fails with `ConnectionClosed` once the connection is closing.
    pub(crate) fn push<R>(
        &self,
        f: impl FnOnce(&mut BytesMut) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let result = self.push_quiet(|buf, _| f(buf))?;
        self.wake.notify_one();
        Ok(result)
    }

    /// Like [`Outbound::push`] but with access to the shared state, and without waking the
    /// writer: the caller flushes with [`Outbound::wake_writer`] or [`Outbound::flush_inline`].
    pub(crate) fn push_quiet<R>(
        &self,
        f: impl FnOnce(&mut BytesMut, &mut S) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::connection_closed("the connection is closing"));
        }
        let st = &mut *st;
        // Large `ZeroCopy` payloads in the frames become segments of the batch (no copy).
        let result = zero_copy::armed(|| f(&mut st.buf.bytes, &mut st.extra));
        zero_copy::take_captured(|segments| st.buf.add_segments(segments));
        self.queued
            .store(st.buf.len() + st.taken, Ordering::Relaxed);
        result
    }

    /// Runs `f` on the shared state (and the buffer, for frames that must be queued together
    /// with a state change) even after the outbound closed; `closed` tells `f` whether frames
    /// queued now will still be sent.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut S, &mut BytesMut, bool) -> R) -> R {
        let mut st = self.state.lock();
        let st = &mut *st;
        let result = f(&mut st.extra, &mut st.buf.bytes, st.closed);
        self.queued
            .store(st.buf.len() + st.taken, Ordering::Relaxed);
        result
    }

    /// Bytes queued and not yet written (a snapshot, without the lock).
    #[inline]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether more than [`WriteLimits::max_queued`] bytes are waiting: the peer is not reading
    /// as fast as frames are produced for it.
    pub(crate) fn over_limit(&self) -> bool {
        self.queued() > self.limits.max_queued
    }

    /// Waits until at most `low` bytes are queued. Fails once the connection is closing.
    pub(crate) async fn drained_to(&self, low: usize) -> Result<(), Error> {
        loop {
            {
                let mut st = self.state.lock();
                if st.closed {
                    return Err(Error::connection_closed("the connection is closing"));
                }
                if st.buf.len() + st.taken <= low {
                    return Ok(());
                }
                st.drain_below = Some(low);
            }
            // A signal sent since the lock was released is kept as a permit: none is lost.
            self.drained.notified().await;
        }
    }

    /// Publishes the queue's length after bytes left it, waking a producer waiting for it to
    /// drain. Called under the lock.
    fn settle(&self, st: &mut State<S>) {
        let queued = st.buf.len() + st.taken;
        self.queued.store(queued, Ordering::Relaxed);
        if st.drain_below.is_some_and(|low| queued <= low) {
            st.drain_below = None;
            self.drained.notify_one();
        }
    }

    /// Wakes the writer to flush what is queued.
    pub(crate) fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// Wakes the writer to flush what is queued once every task that is runnable now had its
    /// turn: for a frame produced by a task of its own (a server's handler that did not finish
    /// inline, a forwarded call), when others like it are likely finishing at the same moment
    /// (woken by one read of another connection): they then share one write instead of taking
    /// one each.
    pub(crate) fn wake_writer_gathering(&self) {
        self.gather.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Writes what is queued right here with non-blocking writes, unless a flush is already under
    /// way (its owner drains the buffer anyway). What the socket does not take is handed to the
    /// writer task.
    pub(crate) fn flush_inline(&self) {
        let mut out = {
            let mut st = self.state.lock();
            if st.flushing || st.buf.is_empty() {
                return;
            }
            st.flushing = true;
            let spare = std::mem::take(&mut st.spare);
            let out = std::mem::replace(&mut st.buf, spare);
            st.taken = out.len();
            out
        };
        loop {
            // Written bytes are counted rather than `advance`d away, so the buffer keeps its
            // whole capacity for reuse.
            while out.remaining() > 0 {
                match out.try_write(&self.wr) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // The writer task will hit the same error and close the connection.
                        tracing::debug!(error = %e, "inline write failed");
                        break;
                    }
                }
            }
            // TLS keeps encrypted bytes in its session until flushed; if the socket did not take
            // them all, the writer task must finish (it flushes after every write).
            let pushed = out.remaining() == 0 && self.wr.try_flush().unwrap_or(false);
            let mut st = self.state.lock();
            if !pushed {
                // Hand over, still flushing: the writer sends this before anything queued later.
                st.taken = out.remaining();
                st.stalled = Some(out);
                self.settle(&mut st);
                drop(st);
                self.wake.notify_one();
                return;
            }
            if st.buf.is_empty() {
                st.flushing = false;
                st.taken = 0;
                self.settle(&mut st);
                recycle(&mut st.spare, out);
                if st.closed {
                    // The writer may be waiting for us to finish before it shuts down.
                    drop(st);
                    self.wake.notify_one();
                }
                return;
            }
            out.clear();
            let next = std::mem::replace(&mut st.buf, out);
            st.taken = next.len();
            self.settle(&mut st);
            out = next;
        }
    }

    /// Gives the buffers' memory back to the allocator if nothing is queued or being written:
    /// for a connection that has gone quiet (keepalive calls it), so one that once carried a
    /// burst of large frames does not keep up to twice [`KEEP_CAPACITY`] for the rest of its
    /// life. The next frame allocates afresh, sized to what it needs.
    pub(crate) fn release_buffers(&self) {
        let mut st = self.state.lock();
        if st.flushing || !st.buf.is_empty() {
            // In use: the next quiet moment will do.
            return;
        }
        st.buf = Batch::default();
        st.spare = Batch::default();
    }

    /// Bytes the buffers hold allocated (queued or not).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let st = self.state.lock();
        st.buf.bytes.capacity() + st.spare.bytes.capacity()
    }

    /// Stops accepting frames; the writer flushes what is buffered, then shuts the write half.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.closed_flag.store(true, Ordering::Release);
        self.wake.notify_one();
        self.on_close.notify_waiters();
        // A producer waiting for the queue to drain learns it never will.
        self.drained.notify_one();
    }

    /// Resolves once [`Outbound::close`] has been called.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.on_close.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed_flag.load(Ordering::Acquire)
    }

    /// The writer task body. Returns when the outbound is closed and drained (`Ok`) or the socket
    /// fails; either way the outbound is closed afterwards, so producers learn at once and the
    /// connection's read side (which watches [`Outbound::closed`]) tears down too.
    pub(crate) async fn run_writer(self: Arc<Self>) -> io::Result<()> {
        let result = self.write_loop().await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "connection write failed");
        }
        self.close();
        // Send FIN (after TLS's close_notify): the peer sees a clean end of stream after the
        // last frame. Bounded: a peer that stopped reading must not keep the writer alive.
        let _ = tokio::time::timeout(SHUTDOWN_BOUND, self.wr.shutdown()).await;
        result
    }

    async fn write_loop(&self) -> io::Result<()> {
        loop {
            let job = {
                let mut st = self.state.lock();
                if let Some(stalled) = st.stalled.take() {
                    Job::Write(stalled)
                } else if st.flushing {
                    // An inline flusher owns the socket and drains the buffer before letting go.
                    Job::Wait
                } else if !st.buf.is_empty() {
                    st.flushing = true;
                    let spare = std::mem::take(&mut st.spare);
                    let out = std::mem::replace(&mut st.buf, spare);
                    st.taken = out.len();
                    Job::Write(out)
                } else if st.closed {
                    Job::Stop
                } else {
                    Job::Wait
                }
            };
            match job {
                Job::Stop => return Ok(()),
                Job::Wait => {
                    self.wake.notified().await;
                    if self.coalesce || self.gather.swap(false, Ordering::Relaxed) {
                        // Let every task that is runnable right now add its frames before we
                        // flush, so they share one syscall. When idle this costs one trip
                        // through the scheduler.
                        tokio::task::yield_now().await;
                    }
                }
                Job::Write(mut out) => loop {
                    self.write_all(&mut out).await?;
                    let mut st = self.state.lock();
                    if st.buf.is_empty() {
                        st.flushing = false;
                        st.taken = 0;
                        self.settle(&mut st);
                        recycle(&mut st.spare, out);
                        break;
                    }
                    out.clear();
                    out = std::mem::replace(&mut st.buf, out);
                    st.taken = out.len();
                    self.settle(&mut st);
                },
            }
        }
    }

    async fn write_all(&self, out: &mut Batch) -> io::Result<()> {
        // When the socket last refused bytes without having taken any since.
        let mut stuck_since = None;
        while out.remaining() > 0 {
            let taken = match out.try_write(&self.wr) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unless_stalled(&mut stuck_since, out.write_some(&self.wr))
                        .await?
                }
                other => other?,
            };
            if taken == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            stuck_since = None;
        }
        // TLS: the encrypted bytes must reach the socket too, under the same stall rule.
        self.unless_stalled(&mut stuck_since, self.wr.flush()).await
    }

    /// Awaits `writable` unless the socket has taken nothing for the stall timeout since
    /// `stuck_since` (set here on the first wait): then the peer stopped reading, and waiting on
    /// would only keep its queue in memory. Only reached when the socket is full, so the clock
    /// is never read on the fast path.
    async fn unless_stalled<T>(
        &self,
        stuck_since: &mut Option<Instant>,
        writable: impl Future<Output = io::Result<T>>,
    ) -> io::Result<T> {
        let Some(stall) = self.limits.stall_timeout else {
            return writable.await;
        };
        let since = *stuck_since.get_or_insert_with(Instant::now);
        let Some(deadline) = since.checked_add(stall) else {
            return writable.await;
        };
        match tokio::time::timeout_at(deadline, writable).await {
            Ok(ready) => ready,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer stopped reading: it accepted no data for {} ms with {} bytes queued \
                     for it (write stall timeout)",
                    stall.as_millis(),
                    self.queued()
                ),
            )),
        }
    }
}

/// Keeps a flushed batch for the next swap unless its buffer grew too large to keep around.
fn recycle(spare: &mut Batch, mut used: Batch) {
    used.clear();
    let capacity = used.bytes.capacity();
    if capacity <= KEEP_CAPACITY && capacity >= spare.bytes.capacity() {
        *spare = used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{self, Kind};
    use crate::tls::{ClientTls, ServerTls};
    use crate::transport::{ReadHalf, Stream};
    use std::any::Any;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const UNLIMITED: WriteLimits = WriteLimits {
        max_queued: usize::MAX,
        stall_timeout: None,
    };

    /// Many producers queue frames concurrently, flushing inline or through the writer, with a
    /// reader that drains slowly enough for the socket to fill up: every frame arrives exactly
    /// once, whole, and each producer's frames in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_never_interleave_or_repeat_frames() {
        // Interleavings vary from run to run; a few rounds make the rare ones (a flusher finding
        // the buffer refilled while it wrote) show up reliably.
        for _ in 0..8 {
            producers_round(None).await;
        }
    }

    /// The same over TLS, where an inline flush can leave encrypted bytes inside the session
    /// for the writer task to push out.
    #[cfg(feature = "tls")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_never_interleave_or_repeat_frames_over_tls() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap().pem();
        let server = ServerTls::from_pem(&cert, key.serialize_pem()).unwrap();
        let client = ClientTls::from_ca_pem(&cert).unwrap();
        for _ in 0..4 {
            producers_round(Some((&server, &client))).await;
        }
    }

    /// A connection keeps the buffers a large frame grew for the frames after it, until it goes
    /// quiet and releases them; frames queued after that still go out.
    #[tokio::test]
    async fn a_quiet_connection_gives_its_buffers_back() {
        let (wr, _client_rd, mut peer, _peer_wr) = pair(None).await;
        let out = Outbound::new(wr, u32::MAX, Flush::Immediate, (), UNLIMITED);
        assert_eq!(out.capacity(), 0, "a new connection reserves no buffer");
        let writer = tokio::spawn(out.clone().run_writer());
        let send = |len: usize, id: u64| {
            out.push(|buf| {
                let start = frame::begin(buf, Kind::Notify, 0, id);
                buf.extend(std::iter::repeat_n(1u8, len));
                frame::finish(buf, start, u32::MAX)
            })
            .unwrap();
        };
        let mut received = vec![0u8; frame::HEADER_LEN + 100_000];
        send(100_000, 1);
        peer.read_exact(&mut received).await.unwrap();
        // The peer has every byte; the flusher's bookkeeping follows at once.
        for _ in 0..20_000 {
            if out.queued() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(out.queued(), 0, "the frame left the queue");
        assert!(out.capacity() >= 100_000, "the grown buffer is kept");

        out.release_buffers();
        assert_eq!(out.capacity(), 0, "a quiet connection holds no buffer");
        send(10, 2);
        let mut small = [0u8; frame::HEADER_LEN + 10];
        peer.read_exact(&mut small).await.unwrap();
        let h = frame::parse_header(&small, u32::MAX).unwrap().unwrap();
        assert_eq!((h.id, h.body_len), (2, 10));
        out.close();
        writer.await.unwrap().unwrap();
    }

    /// Keepalive is what releases them: a connection that heard nothing for an interval ends up
    /// holding no more than its pings need.
    #[tokio::test]
    async fn keepalive_releases_the_buffers_of_a_quiet_connection() {
        use crate::transport::{Keepalive, Liveness};
        let (wr, _client_rd, mut peer, _peer_wr) = pair(None).await;
        let out = Outbound::new(wr, u32::MAX, Flush::Immediate, (), UNLIMITED);
        let writer = tokio::spawn(out.clone().run_writer());
        out.push(|buf| {
            let start = frame::begin(buf, Kind::Notify, 0, 1);
            buf.extend(std::iter::repeat_n(1u8, 100_000));
            frame::finish(buf, start, u32::MAX)
        })
        .unwrap();
        let mut received = vec![0u8; frame::HEADER_LEN + 100_000];
        peer.read_exact(&mut received).await.unwrap();
        let keepalive = Keepalive {
            interval: std::time::Duration::from_millis(10),
            timeout: std::time::Duration::from_secs(3600),
        };
        // The read side's spare body buffers go too.
        let bodies = Arc::new(crate::transport::body_pool::BodyPool::default());
        bodies.give(Vec::with_capacity(100_000));
        let watch =
            tokio::spawn(keepalive.watch(Arc::new(Liveness::new()), out.clone(), bodies.clone()));
        let mut released = false;
        for _ in 0..20_000 {
            if out.capacity() < 1024 && bodies.kept() == 0 {
                released = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        watch.abort();
        assert!(
            released,
            "a quiet connection still holds {} bytes of write buffers and {} of body buffers",
            out.capacity(),
            bodies.kept()
        );
        out.close();
        writer.await.unwrap().unwrap();
    }

    /// A connected pair (over TLS with `tls`): the producer's write half and the peer's read
    /// half.
    async fn pair(
        tls: Option<(&ServerTls, &ClientTls)>,
    ) -> (WriteHalf, Box<dyn Any>, ReadHalf, Box<dyn Any>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, server) = (client.unwrap(), server.unwrap().0);
        let (client, server) = match tls {
            Some((server_tls, client_tls)) => {
                let (c, s) = tokio::join!(
                    client_tls.connect(client, None, addr),
                    server_tls.accept(server)
                );
                (c.unwrap(), s.unwrap())
            }
            None => (Stream::Tcp(client), Stream::Tcp(server)),
        };
        let (client_rd, client_wr) = client.split();
        let (server_rd, server_wr) = server.split();
        (
            client_wr,
            Box::new(client_rd),
            server_rd,
            Box::new(server_wr),
        )
    }

    async fn producers_round(tls: Option<(&ServerTls, &ClientTls)>) {
        const PRODUCERS: u64 = 8;
        const FRAMES: u64 = 2000;
        // The halves not used must stay open for the test's duration.
        let (wr, _client_rd, mut peer, _peer_wr) = pair(tls).await;
        let out = Outbound::new(wr, u32::MAX, Flush::Coalesce, (), UNLIMITED);
        let writer = tokio::spawn(out.clone().run_writer());

        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let out = out.clone();
                tokio::spawn(async move {
                    for seq in 0..FRAMES {
                        // Mostly small frames, with a large one now and then so that writes take
                        // long enough for other producers to queue behind them.
                        let len = if seq % 97 == p {
                            64 * 1024
                        } else {
                            ((p * 7919 + seq * 104_729) % 3000) as usize
                        };
                        out.push_quiet(|buf, _| {
                            let start = frame::begin(buf, Kind::Notify, p as u8, seq);
                            buf.extend(std::iter::repeat_n((seq % 251) as u8, len));
                            frame::finish(buf, start, u32::MAX)
                        })
                        .unwrap();
                        if (seq + p) % 3 == 0 {
                            out.flush_inline();
                        } else {
                            out.wake_writer();
                        }
                        if seq % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();

        let mut next = [0u64; PRODUCERS as usize];
        let mut buf = BytesMut::new();
        let mut received = 0;
        while received < PRODUCERS * FRAMES {
            let mut chunk = [0u8; 7000];
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), peer.read(&mut chunk))
                .await
                .expect("frames stopped arriving")
                .unwrap();
            assert!(n > 0, "stream ended early");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(h) = frame::parse_header(&buf, u32::MAX).unwrap() {
                if buf.len() < h.frame_len() {
                    break;
                }
                let f = buf.split_to(h.frame_len());
                let p = h.flags as usize;
                assert_eq!(h.kind, Kind::Notify as u8, "corrupt frame header");
                assert_eq!(
                    h.id, next[p],
                    "producer {p}: frame out of order or repeated"
                );
                let body = &f[frame::HEADER_LEN..];
                let fill = (h.id % 251) as u8;
                assert!(
                    body.first().is_none_or(|b| *b == fill)
                        && body.last().is_none_or(|b| *b == fill)
                );
                next[p] += 1;
                received += 1;
            }
        }
        for p in producers {
            p.await.unwrap();
        }
        out.close();
        writer.await.unwrap().unwrap();
        // After close and drain the peer sees a clean end of stream.
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty() && buf.is_empty());
    }
}
