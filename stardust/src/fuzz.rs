//! Thin wrappers that let the fuzz targets in `fuzz/` reach internal decoders.
//!
//! Compiled only with the hidden `fuzzing` feature; not a public API. The decoders that are
//! public already (`protocol::{frame, message, codec}`, `auth::token`) are fuzzed through their
//! public functions; this module only adds what has no public door: the connection's frame
//! reader, fed from memory instead of a socket.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::Error;
use crate::protocol::frame::Header;
use crate::transport::{FrameReader, ReadHalf};

/// The frame reader every connection reads with, over bytes from memory.
///
/// The bytes arrive in pieces whose sizes cycle through the given list, the way a socket hands
/// over a stream in arbitrary reads, so frames split at every possible point are exercised.
pub struct FrameStream {
    reader: FrameReader,
}

impl FrameStream {
    /// A reader over `bytes`, delivered in reads of `chunks[0]`, `chunks[1]`, ... bytes (cycling;
    /// a 0 counts as 1, an empty list means "as much as the reader asks for"), refusing frames
    /// over `max_frame`.
    pub fn new(bytes: &[u8], chunks: &[usize], max_frame: u32) -> FrameStream {
        let source = Chunked {
            data: Bytes::copy_from_slice(bytes),
            chunks: chunks.iter().map(|&n| n.max(1)).collect(),
            next: 0,
        };
        FrameStream {
            reader: FrameReader::new(ReadHalf::Mem(Box::new(source)), max_frame),
        }
    }

    /// The header of the next frame if all of it is buffered (see `FrameReader::next_frame`).
    #[allow(clippy::type_complexity)] // the reader's own signature, passed through
    pub fn next_frame(&mut self) -> Result<Option<Header>, (Option<Header>, Error)> {
        self.reader.next_frame()
    }

    /// The body of the frame `next_frame` just returned.
    pub fn body(&self, header: &Header) -> &[u8] {
        self.reader.body(header)
    }

    /// Drops the current frame.
    pub fn consume(&mut self, header: &Header) {
        self.reader.consume(header)
    }

    /// Takes the current frame's body out of the buffer.
    pub fn take_body(&mut self, header: &Header) -> Bytes {
        self.reader.take_body(header)
    }

    /// Reads more bytes: `Ok(false)` at a clean end between frames, an error at an end inside
    /// one. Never waits: memory is always ready.
    pub fn fill(&mut self) -> Result<bool, Error> {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(self.reader.fill()).poll(&mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => unreachable!("a reader over memory never waits"),
        }
    }
}

/// An `AsyncRead` over memory that hands out at most the next chunk size per read.
struct Chunked {
    data: Bytes,
    chunks: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut n = this.data.len().min(buf.remaining());
        if !this.chunks.is_empty() {
            n = n.min(this.chunks[this.next % this.chunks.len()]);
            this.next += 1;
        }
        buf.put_slice(&this.data.split_to(n));
        Poll::Ready(Ok(()))
    }
}
