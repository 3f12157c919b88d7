//! What a flusher takes out of a write queue and writes: the frame buffer, with payload
//! segments (large `Bytes` queued without a copy, see `protocol::zero_copy`) in place at their
//! offsets, and how much of it the socket has taken.

use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};

use super::WriteHalf;

/// At most this many pieces go into one vectored write.
const MAX_SLICES: usize = 64;

/// Frames taken from a write queue, being written.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) bytes: BytesMut,
    /// Payloads that belong at these offsets of `bytes`, in order.
    pub(crate) segments: Vec<(usize, Bytes)>,
    /// Bytes of `segments`.
    pub(crate) segment_bytes: usize,
    /// Bytes written so far, from the start.
    written: usize,
}

impl Batch {
    /// Bytes in the batch, segments included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.segment_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes not written yet.
    pub(crate) fn remaining(&self) -> usize {
        self.len() - self.written
    }

    /// Empties it for reuse, keeping the buffer's capacity.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.segments.clear();
        self.segment_bytes = 0;
        self.written = 0;
    }

    /// Appends payload segments captured at offsets of `bytes`.
    pub(crate) fn add_segments(&mut self, segments: impl Iterator<Item = (usize, Bytes)>) {
        for (at, b) in segments {
            self.segment_bytes += b.len();
            self.segments.push((at, b));
        }
    }

    /// Writes what the socket takes now without waiting; `WouldBlock` when it takes nothing.
    pub(crate) fn try_write(&mut self, wr: &WriteHalf) -> io::Result<usize> {
        let n = if self.segments.is_empty() {
            wr.try_write(&self.bytes[self.written..])?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.slices(&mut slices);
            wr.try_write_vectored(&slices[..count])?
        };
        self.written += n;
        Ok(n)
    }

    /// Writes some of what is left, waiting until the socket takes at least one byte.
    pub(crate) async fn write_some(&mut self, wr: &WriteHalf) -> io::Result<usize> {
        let n = if self.segments.is_empty() {
            wr.write_some(&self.bytes[self.written..]).await?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.slices(&mut slices);
            wr.write_some_vectored(&slices[..count]).await?
        };
        self.written += n;
        Ok(n)
    }

    /// The unwritten pieces, in order, into `out`; returns how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut skip = self.written;
        let mut count = 0;
        let mut cursor = 0;
        let pieces = self
            .segments
            .iter()
            .flat_map(|(at, seg)| [&self.bytes[cursor_range(&mut cursor, *at)], &seg[..]])
            .chain(std::iter::once(&self.bytes[self.last_offset()..]));
        for piece in pieces {
            if count == out.len() {
                break;
            }
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            out[count] = IoSlice::new(&piece[skip..]);
            skip = 0;
            count += 1;
        }
        count
    }

    fn last_offset(&self) -> usize {
        self.segments.last().map_or(0, |(at, _)| *at)
    }
}

/// The range from `*cursor` to `at`, moving the cursor there.
fn cursor_range(cursor: &mut usize, at: usize) -> std::ops::Range<usize> {
    let range = *cursor..at;
    *cursor = at;
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces of a batch, read from any position, are its bytes with the segments in place.
    #[test]
    fn slices_put_segments_in_place_from_any_position() {
        let mut b = Batch {
            bytes: BytesMut::from(&b"abcdefgh"[..]),
            ..Batch::default()
        };
        b.add_segments(
            [
                (2, Bytes::from_static(b"XY")),
                (2, Bytes::from_static(b"Z")),
                (8, Bytes::from_static(b"END")),
            ]
            .into_iter(),
        );
        let whole = b"abXYZcdefghEND";
        assert_eq!(b.len(), whole.len());
        for pos in 0..=whole.len() {
            b.written = pos;
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = b.slices(&mut slices);
            let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(joined, whole[pos..], "from {pos}");
            assert_eq!(b.remaining(), whole.len() - pos);
        }
    }
}
