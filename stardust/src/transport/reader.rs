//! The read side of a connection: buffers bytes and hands out whole frames.
//!
//! The buffer grows with the bytes that actually arrive, never with what a header *claims*: a
//! peer that announces a 16 MiB frame and sends ten bytes costs ten bytes (plus the buffer's
//! small start), so memory before authentication stays proportional to what a peer sent. It
//! starts small (most connections carry small frames), doubles while reads fill it (pipelined
//! traffic reads in big batches), and goes back to its small start once a large frame has been
//! handled, so one big message does not pin megabytes for the connection's whole life.
//!
//! A large frame that has not fully arrived is read into a buffer of its own instead (from the
//! connection's [`BodyPool`]), so handing its body out as `Bytes` neither splits the read
//! buffer (which would then be reallocated for the next frame) nor costs fresh pages per frame.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::ReadHalf;
use super::body_pool::BodyPool;
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
/// Bodies from this size on are read into a buffer of their own when they do not arrive in one
/// read with their header (see the module docs).
const LARGE_BODY: usize = 32 * 1024;

pub(crate) struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    max_frame: u32,
    /// Bytes still missing from the frame whose header is buffered (0 when none is known).
    wanted: usize,
    /// The spare room a read gets while frames are small: [`INITIAL`], doubled (up to
    /// [`BATCH`]) each time a read fills it.
    target: usize,
    /// The large frame being read into a buffer of its own, if any.
    large: Option<Large>,
    /// A large frame was just handled: the next read takes at most [`INITIAL`] bytes, so that
    /// if another large frame follows (they tend to), little of its body lands in the read
    /// buffer only to be copied out to its own.
    after_large: bool,
    bodies: Arc<BodyPool>,
}

/// A large frame in progress: its header, and its body as received so far.
struct Large {
    header: Header,
    body: Vec<u8>,
}

impl Large {
    fn complete(&self) -> bool {
        self.body.len() == self.header.body_len
    }
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
            large: None,
            after_large: false,
            bodies: Arc::default(),
        }
    }

    /// The pool the bodies of large frames are read into; keepalive empties it when the
    /// connection goes quiet.
    pub(crate) fn bodies(&self) -> Arc<BodyPool> {
        self.bodies.clone()
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
        if let Some(large) = &self.large {
            return Ok(large.complete().then_some(large.header));
        }
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
            if header.body_len >= LARGE_BODY {
                self.start_large(header);
            } else {
                self.wanted = header.frame_len() - self.buf.len();
            }
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

    /// Moves the large frame whose header is buffered out of the read buffer: what arrived of
    /// its body goes to a buffer of its own, where the rest is read.
    fn start_large(&mut self, header: Header) {
        self.buf.advance(HEADER_LEN);
        let mut body = self.bodies.take();
        body.extend_from_slice(&self.buf);
        self.buf.clear();
        self.release_if_large();
        self.wanted = 0;
        self.large = Some(Large { header, body });
    }

    /// The body of the frame `next_frame` just returned, still in the buffer.
    pub(crate) fn body(&self, header: &Header) -> &[u8] {
        match &self.large {
            Some(large) => &large.body,
            None => &self.buf[HEADER_LEN..header.frame_len()],
        }
    }

    /// Drops the current frame from the buffer.
    pub(crate) fn consume(&mut self, header: &Header) {
        if let Some(large) = self.large.take() {
            self.bodies.give(large.body);
            self.after_large = true;
            return;
        }
        self.buf.advance(header.frame_len());
        self.release_if_large();
    }

    /// Takes the current frame's body out of the buffer without copying.
    pub(crate) fn take_body(&mut self, header: &Header) -> Bytes {
        if let Some(large) = self.large.take() {
            self.after_large = true;
            return self.bodies.hand_out(large.body);
        }
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
        !self.buf.is_empty() || self.large.is_some()
    }

    /// Reads more bytes. `Ok(false)` on a clean end of stream between frames.
    pub(crate) async fn fill(&mut self) -> Result<bool, Error> {
        if let Some(large) = &mut self.large {
            return fill_large(&mut self.rd, large, self.target).await;
        }
        self.make_room();
        let mut room = self.buf.capacity() - self.buf.len();
        if std::mem::take(&mut self.after_large) {
            room = room.min(INITIAL);
        }
        match self.rd.read_buf(&mut (&mut self.buf).limit(room)).await {
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

/// Reads more of a large frame's body, never past its end (the next frame goes to the read
/// buffer). The buffer grows as the read buffer does: by the reader's current `target` or by
/// what has arrived, whichever is more, so it at most doubles per read and a header's claim
/// alone costs nothing.
async fn fill_large(rd: &mut ReadHalf, large: &mut Large, target: usize) -> Result<bool, Error> {
    let body = &mut large.body;
    let missing = large.header.body_len - body.len();
    if missing == 0 {
        // Complete, and not taken yet: nothing to read for it.
        return Ok(true);
    }
    let spare = body.capacity() - body.len();
    if spare < missing.min(MIN_READ) {
        body.reserve(missing.min(body.len().max(target)));
    }
    let room = (body.capacity() - body.len()).min(missing);
    match rd.read_buf(&mut (&mut *body).limit(room)).await {
        Ok(0) => Err(Error::new(
            ErrorKind::ConnectionClosed,
            format!(
                "peer closed the connection in the middle of a frame ({} bytes of its {} byte \
                 body received)",
                body.len(),
                large.header.body_len
            ),
        )),
        Ok(_) => Ok(true),
        Err(e) => {
            Err(Error::new(ErrorKind::ConnectionClosed, format!("read failed: {e}")).with_source(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{self, Kind};
    use tokio::io::AsyncWriteExt;

    fn frame_of(id: u64, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        let start = frame::begin(&mut buf, Kind::Notify, 0, id);
        buf.extend_from_slice(body);
        frame::finish(&mut buf, start, u32::MAX).unwrap();
        buf
    }

    fn body_of(id: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u64 ^ id) as u8).collect()
    }

    /// A reader fed `bytes` by a task writing `chunk` bytes at a time.
    fn reader_over(bytes: Vec<u8>, chunk: usize, max_frame: u32) -> FrameReader {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        tokio::spawn(async move {
            for part in bytes.chunks(chunk) {
                tx.write_all(part).await.unwrap();
            }
        });
        FrameReader::new(ReadHalf::Mem(Box::new(rx)), max_frame)
    }

    async fn next(reader: &mut FrameReader) -> Option<Header> {
        loop {
            if let Some(h) = reader.next_frame().map_err(|(_, e)| e).unwrap() {
                return Some(h);
            }
            if !reader.fill().await.unwrap() {
                return None;
            }
        }
    }

    #[tokio::test]
    async fn large_and_small_frames_interleaved_arrive_whole_in_any_chunking() {
        let sizes = [
            10,
            40_000,
            3,
            100_000,
            LARGE_BODY,
            LARGE_BODY - 1,
            70_000,
            0,
        ];
        let mut wire = Vec::new();
        for (id, &len) in sizes.iter().enumerate() {
            wire.extend_from_slice(&frame_of(id as u64, &body_of(id as u64, len)));
        }
        for chunk in [1, 7, 1000, 4096, 65_536, wire.len()] {
            let mut reader = reader_over(wire.clone(), chunk, u32::MAX);
            let mut kept = Vec::new();
            for (id, &len) in sizes.iter().enumerate() {
                let h = next(&mut reader).await.expect("a frame");
                assert_eq!((h.id, h.body_len), (id as u64, len), "chunk {chunk}");
                assert_eq!(reader.body(&h), &body_of(id as u64, len)[..]);
                if id % 2 == 0 {
                    reader.consume(&h);
                } else {
                    // Held while later frames are read: they must not overwrite it.
                    kept.push((id, reader.take_body(&h)));
                }
            }
            assert!(next(&mut reader).await.is_none(), "clean end");
            for (id, body) in kept {
                assert_eq!(
                    &body[..],
                    &body_of(id as u64, sizes[id])[..],
                    "chunk {chunk}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_large_body_buffer_is_reused_once_its_bytes_are_dropped() {
        let mut wire = Vec::new();
        for id in 0..4 {
            wire.extend_from_slice(&frame_of(id, &body_of(id, 64 * 1024)));
        }
        let mut reader = reader_over(wire, 1000, u32::MAX);
        let mut buffers = Vec::new();
        for id in 0..4 {
            let h = next(&mut reader).await.unwrap();
            let body = reader.take_body(&h);
            assert_eq!(&body[..], &body_of(id, 64 * 1024)[..]);
            buffers.push(body.as_ptr());
            drop(body);
        }
        assert!(
            buffers.windows(2).all(|w| w[0] == w[1]),
            "each frame read into the buffer the previous one gave back"
        );
        assert!(reader.bodies().kept() >= 64 * 1024);
    }

    #[tokio::test]
    async fn a_claimed_size_costs_nothing_until_its_bytes_arrive() {
        let mut wire = frame_of(1, &[]).to_vec();
        // Claims 64 MiB, sends 10 bytes, and then nothing (the writer stays open).
        let claimed = 64 * 1024 * 1024u32;
        wire[..4].copy_from_slice(&(claimed + 10).to_be_bytes());
        wire.extend_from_slice(&[0u8; 10]);
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(&wire).await.unwrap();
        let mut reader = FrameReader::new(ReadHalf::Mem(Box::new(rx)), u32::MAX);
        reader.fill().await.unwrap();
        assert!(reader.next_frame().map_err(|(_, e)| e).unwrap().is_none());
        let large = reader.large.as_ref().expect("read as a large frame");
        assert_eq!(large.body.len(), 10);
        assert!(large.body.capacity() < 1024, "{}", large.body.capacity());
        // The next read's room is the reader's small start (a fresh connection), not the claim.
        tx.write_all(&[0u8; 100]).await.unwrap();
        reader.fill().await.unwrap();
        let large = reader.large.as_ref().unwrap();
        assert_eq!(large.body.len(), 110);
        assert!(
            large.body.capacity() <= 2 * INITIAL,
            "{}",
            large.body.capacity()
        );
        // The peer leaving mid-body is an error that says how far it got.
        drop(tx);
        let err = reader.fill().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionClosed);
        assert!(err.message().contains("110 bytes"), "{}", err.message());
    }
}
