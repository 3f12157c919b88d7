//! The read side of a connection: buffers bytes and hands out whole frames.
//!
//! The buffer grows with the bytes that actually arrive, never with what a header *claims*: a
//! peer that announces a 16 MiB frame and sends ten bytes costs ten bytes (plus the buffer's
//! small start), so memory before authentication stays proportional to what a peer sent. It
//! starts small (most connections carry small frames), doubles while reads fill it (pipelined
//! traffic reads in big batches), and goes back to its small start once a large frame has been
//! handled, so one big message does not pin megabytes for the connection's whole life.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::ReadHalf;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, HEADER_LEN, Header};

/// The buffer's first allocation: a handshake and a typical request fit in one read.
const INITIAL: usize = 4 * 1024;
/// Reads grow the buffer up to this size for streams of small frames (one syscall can then
/// take a whole batch of pipelined requests); only a frame larger than this grows it further.
const BATCH: usize = 64 * 1024;
/// An empty buffer with more capacity than this is released (the next read starts small).
const KEEP: usize = 4 * BATCH;
/// The smallest read worth a syscall.
const MIN_READ: usize = 1024;

pub(crate) struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    max_frame: u32,
    /// Bytes still missing from the frame whose header is buffered (0 when none is known).
    wanted: usize,
    /// The spare room a read gets while frames are small: [`INITIAL`], doubled (up to
    /// [`BATCH`]) each time a read fills it.
    target: usize,
}

/// A TLS record header: content type 21 (alert) or 22 (handshake), then version 3.x. No
/// Stardust frame starts so: its first byte is the high byte of a length that would be over
/// 350 MB, far above any frame limit.
pub(crate) fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x00..=0x04, ..])
}

impl FrameReader {
    /// A reader refusing frames whose `length` is over `max_frame`.
    pub(crate) fn new(rd: ReadHalf, max_frame: u32) -> FrameReader {
        FrameReader {
            rd,
            // Nothing until the first byte arrives: an accepted connection that never sends
            // anything holds no read buffer.
            buf: BytesMut::new(),
            max_frame,
            wanted: 0,
            target: INITIAL,
        }
    }

    /// Changes the frame limit (the handshake is read with a small one, then the connection's
    /// limit applies).
    pub(crate) fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The header of the next frame if the whole frame is buffered.
    ///
    /// An over-limit or impossible length is an error: the stream cannot be resynchronised after
    /// it, so the caller closes the connection (after answering the request id if it can).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Header>, (Option<Header>, Error)> {
        let header = match frame::parse_header(&self.buf, self.max_frame) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Still report kind and id so a Request can get a typed answer.
                let mut id = [0u8; 8];
                id.copy_from_slice(&self.buf[6..14]);
                let h = Header {
                    kind: self.buf[4],
                    flags: self.buf[5],
                    id: u64::from_be_bytes(id),
                    body_len: 0,
                };
                return Err((Some(h), e));
            }
        };
        if self.buf.len() < header.frame_len() {
            self.wanted = header.frame_len() - self.buf.len();
            return Ok(None);
        }
        self.wanted = 0;
        Ok(Some(header))
    }

    /// Whether the bytes received so far start like a TLS record (a handshake or an alert): the
    /// peer speaks TLS where a plaintext Stardust frame was expected.
    pub(crate) fn looks_like_tls(&self) -> bool {
        looks_like_tls(&self.buf)
    }

    /// The body of the frame `next_frame` just returned, still in the buffer.
    pub(crate) fn body(&self, header: &Header) -> &[u8] {
        &self.buf[HEADER_LEN..header.frame_len()]
    }

    /// Drops the current frame from the buffer.
    pub(crate) fn consume(&mut self, header: &Header) {
        self.buf.advance(header.frame_len());
        self.release_if_large();
    }

    /// Takes the current frame's body out of the buffer without copying.
    pub(crate) fn take_body(&mut self, header: &Header) -> Bytes {
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(header.body_len).freeze();
        self.release_if_large();
        body
    }

    /// Once the buffer is empty, gives back a large allocation (a big frame was just handled).
    fn release_if_large(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
    }

    /// Makes room for the next read: at least what the frame in progress still needs, but
    /// never more than the bytes already received, so the buffer at most doubles per read
    /// however large a frame's header claims to be; and for streams of small frames, the
    /// buffer's current target size.
    fn make_room(&mut self) {
        let len = self.buf.len();
        let spare = self.buf.capacity() - len;
        let for_frame = self.wanted.min(len.max(self.target));
        let want = for_frame.max(self.target.saturating_sub(len)).max(MIN_READ);
        if spare < want {
            self.buf.reserve(want);
        }
    }

    /// Like [`fill`](Self::fill), but keeps the worker awake for up to `spin` first (see
    /// [`BusyPoll`](super::BusyPoll)): between attempts it yields to the scheduler, which runs
    /// other tasks and polls the I/O driver without blocking. Also returns whether the bytes
    /// came within `spin` (a read that finds them at once counts).
    pub(crate) async fn fill_spinning(&mut self, spin: Duration) -> (Result<bool, Error>, bool) {
        // Real time, not tokio's clock: this is about the CPU, and a paused test clock would
        // never let the spin end.
        let start = std::time::Instant::now();
        loop {
            let attempt = {
                let mut fill = std::pin::pin!(self.fill());
                // Dropping a read that is not ready loses nothing (`read_buf` is cancel-safe).
                std::future::poll_fn(|cx| Poll::Ready(fill.as_mut().poll(cx))).await
            };
            if let Poll::Ready(filled) = attempt {
                return (filled, true);
            }
            if start.elapsed() >= spin {
                return (self.fill().await, false);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Whether bytes of an unfinished frame are buffered (its rest follows as the peer's
    /// writes come in).
    pub(crate) fn mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads more bytes. `Ok(false)` on a clean end of stream between frames.
    pub(crate) async fn fill(&mut self) -> Result<bool, Error> {
        self.make_room();
        let room = self.buf.capacity() - self.buf.len();
        match self.rd.read_buf(&mut self.buf).await {
            Ok(0) if self.buf.is_empty() => Ok(false),
            Ok(0) => Err(Error::new(
                ErrorKind::ConnectionClosed,
                format!(
                    "peer closed the connection in the middle of a frame ({} bytes of it received)",
                    self.buf.len()
                ),
            )),
            Ok(n) => {
                // A read that filled the buffer suggests more is waiting: read bigger batches.
                if n == room && self.target < BATCH {
                    self.target *= 2;
                }
                Ok(true)
            }
            Err(e) => Err(
                Error::new(ErrorKind::ConnectionClosed, format!("read failed: {e}")).with_source(e),
            ),
        }
    }
}
