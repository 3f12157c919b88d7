//! The write side of a connection: a frame buffer shared by all producers, drained by one task.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::error::Error;

/// Buffers above this size are not kept for reuse after a flush, so one large message does not
/// pin megabytes per idle connection.
const KEEP_CAPACITY: usize = 256 * 1024;
const INITIAL_CAPACITY: usize = 8 * 1024;

/// The write side of one connection.
///
/// `S` is state that producers must update atomically with queueing their frame: the client keeps
/// its table of pending calls here, so registering a call and queueing its request take one lock,
/// not two. The server has none (`()`).
pub(crate) struct Outbound<S = ()> {
    state: Mutex<State<S>>,
    wake: Notify,
    /// Signalled once when the connection starts closing.
    on_close: Notify,
    /// The largest frame the peer accepts (from the handshake).
    pub(crate) peer_max_frame: u32,
    /// Whether the writer yields once before each flush to gather frames from other tasks.
    coalesce: bool,
    /// Mirror of `State::closed`, readable without the lock.
    closed_flag: AtomicBool,
}

struct State<S> {
    buf: BytesMut,
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
    /// The main producer batches by itself (the server's read loop queues a whole batch of
    /// responses, then wakes the writer once): flush as soon as woken.
    Immediate,
}

impl<S> Outbound<S> {
    pub(crate) fn new(peer_max_frame: u32, flush: Flush, extra: S) -> Arc<Outbound<S>> {
        Arc::new(Outbound {
            state: Mutex::new(State {
                buf: BytesMut::with_capacity(INITIAL_CAPACITY),
                closed: false,
                extra,
            }),
            wake: Notify::new(),
            on_close: Notify::new(),
            peer_max_frame,
            coalesce: flush == Flush::Coalesce,
            closed_flag: AtomicBool::new(false),
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
    /// writer: the caller does that with [`Outbound::wake_writer`] once it has queued a batch.
    pub(crate) fn push_quiet<R>(
        &self,
        f: impl FnOnce(&mut BytesMut, &mut S) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(Error::connection_closed("the connection is closing"));
        }
        let st = &mut *st;
        f(&mut st.buf, &mut st.extra)
    }

    /// Runs `f` on the shared state (and the buffer, for frames that must be queued together
    /// with a state change) even after the outbound closed; `closed` tells `f` whether frames
    /// queued now will still be sent.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut S, &mut BytesMut, bool) -> R) -> R {
        let mut st = self.state.lock();
        let st = &mut *st;
        f(&mut st.extra, &mut st.buf, st.closed)
    }

    /// Wakes the writer to flush what is queued.
    pub(crate) fn wake_writer(&self) {
        self.wake.notify_one();
    }

    /// Stops accepting frames; the writer flushes what is buffered, then shuts the write half.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.closed_flag.store(true, Ordering::Release);
        self.wake.notify_one();
        self.on_close.notify_waiters();
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
    /// connection's read side (which watches [`Outbound::closed`]) tears down too. Dropping the
    /// write half on return sends FIN to the peer.
    pub(crate) async fn run_writer(self: Arc<Self>, wr: OwnedWriteHalf) -> io::Result<()> {
        let result = self.write_loop(wr).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "connection write failed");
        }
        self.close();
        result
    }

    async fn write_loop(&self, mut wr: OwnedWriteHalf) -> io::Result<()> {
        let mut out = BytesMut::with_capacity(INITIAL_CAPACITY);
        loop {
            let closed = {
                let mut st = self.state.lock();
                if st.buf.is_empty() {
                    if st.closed {
                        break;
                    }
                    None
                } else {
                    std::mem::swap(&mut st.buf, &mut out);
                    Some(st.closed)
                }
            };
            let Some(_closed) = closed else {
                self.wake.notified().await;
                if self.coalesce {
                    // Let every task that is runnable right now add its frames before we flush,
                    // so they share one syscall. When idle this costs one trip through the
                    // scheduler.
                    tokio::task::yield_now().await;
                }
                continue;
            };
            write_all(&mut wr, &out).await?;
            out.clear();
            if out.capacity() > KEEP_CAPACITY {
                out = BytesMut::with_capacity(INITIAL_CAPACITY);
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        Ok(())
    }
}

async fn write_all(wr: &mut OwnedWriteHalf, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match wr.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wr.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
