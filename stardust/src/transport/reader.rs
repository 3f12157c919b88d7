//! The read side of a connection: buffers bytes and hands out whole frames.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::ReadHalf;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, HEADER_LEN, Header};

const READ_CHUNK: usize = 64 * 1024;

pub(crate) struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
    max_frame: u32,
}

impl FrameReader {
    pub(crate) fn new(rd: ReadHalf, max_frame: u32) -> FrameReader {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
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
            // Make room for the whole frame at once instead of growing chunk by chunk.
            self.buf.reserve(header.frame_len() - self.buf.len());
            return Ok(None);
        }
        Ok(Some(header))
    }

    /// The body of the frame `next_frame` just returned, still in the buffer.
    pub(crate) fn body(&self, header: &Header) -> &[u8] {
        &self.buf[HEADER_LEN..header.frame_len()]
    }

    /// Drops the current frame from the buffer.
    pub(crate) fn consume(&mut self, header: &Header) {
        self.buf.advance(header.frame_len());
    }

    /// Takes the current frame's body out of the buffer without copying.
    pub(crate) fn take_body(&mut self, header: &Header) -> Bytes {
        self.buf.advance(HEADER_LEN);
        self.buf.split_to(header.body_len).freeze()
    }

    /// Reads more bytes. `Ok(false)` on a clean end of stream between frames.
    pub(crate) async fn fill(&mut self) -> Result<bool, Error> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.rd.read_buf(&mut self.buf).await {
            Ok(0) if self.buf.is_empty() => Ok(false),
            Ok(0) => Err(Error::new(
                ErrorKind::ConnectionClosed,
                format!(
                    "peer closed the connection in the middle of a frame ({} bytes of it received)",
                    self.buf.len()
                ),
            )),
            Ok(_) => Ok(true),
            Err(e) => Err(
                Error::new(ErrorKind::ConnectionClosed, format!("read failed: {e}")).with_source(e),
            ),
        }
    }
}
