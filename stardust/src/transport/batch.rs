//! What a flusher takes out of a write queue and writes: the frame buffer, with payload
//! segments (large `Bytes` queued without a copy, see `protocol::zero_copy`) in place at their
//! offsets, and how much of it the socket has taken.
//!
//! A segment is let go as soon as the socket has taken all of it, not when the whole batch is
//! written: its caller may then reuse (or free) the payload's buffer while the rest of the
//! batch is still going out.

use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};

use super::WriteHalf;

/// At most this many pieces go into one vectored write.
const MAX_SLICES: usize = 64;

/// Frames taken from a write queue, being written.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) bytes: BytesMut,
    /// Payloads that belong at these offsets of `bytes`, in order, with their lengths (the
    /// payload itself is dropped once written).
    segments: Vec<Segment>,
    /// Bytes of `segments`.
    pub(crate) segment_bytes: usize,
    /// Bytes written so far, from the start.
    written: usize,
    /// How many leading segments are written and let go, and their bytes.
    released: usize,
    released_bytes: usize,
}

struct Segment {
    at: usize,
    len: usize,
    payload: Bytes,
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
        self.released = 0;
        self.released_bytes = 0;
    }

    /// Appends payload segments captured at offsets of `bytes`.
    pub(crate) fn add_segments(&mut self, segments: impl Iterator<Item = (usize, Bytes)>) {
        for (at, payload) in segments {
            self.segment_bytes += payload.len();
            self.segments.push(Segment {
                at,
                len: payload.len(),
                payload,
            });
        }
    }

    /// Lets go of the segments the socket has taken whole.
    fn release_written(&mut self) {
        while let Some(seg) = self.segments.get_mut(self.released) {
            // Where the segment ends in the written stream: the frame bytes up to its offset,
            // the segments before it, and itself.
            let end = seg.at + self.released_bytes + seg.len;
            if end > self.written {
                break;
            }
            seg.payload = Bytes::new();
            self.released_bytes += seg.len;
            self.released += 1;
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
        self.advance(n);
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
        self.advance(n);
        Ok(n)
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        if !self.segments.is_empty() {
            self.release_written();
        }
    }

    /// The unwritten pieces, in order, into `out`; returns how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        // From the first segment not yet let go: everything before it is written.
        let mut cursor = match self.released {
            0 => 0,
            n => self.segments[n - 1].at,
        };
        let mut skip = self.written - cursor - self.released_bytes;
        let mut count = 0;
        let pieces = self.segments[self.released..]
            .iter()
            .flat_map(|seg| {
                [
                    &self.bytes[cursor_range(&mut cursor, seg.at)],
                    &seg.payload[..],
                ]
            })
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
        self.segments.last().map_or(0, |seg| seg.at)
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

    /// Written a piece at a time, the pieces still come out right, and each segment is let go
    /// once the socket took all of it.
    #[test]
    fn segments_are_let_go_as_soon_as_they_are_written() {
        let payloads = [
            Bytes::from(vec![b'X'; 10]),
            Bytes::from(vec![b'Y'; 5]),
            Bytes::from(vec![b'Z'; 7]),
        ];
        let whole: Vec<u8> = [
            &b"ab"[..],
            &payloads[0],
            &payloads[1],
            b"cdefgh",
            &payloads[2],
        ]
        .concat();
        for step in 1..=whole.len() {
            let mut b = Batch {
                bytes: BytesMut::from(&b"abcdefgh"[..]),
                ..Batch::default()
            };
            b.add_segments(
                [
                    (2, payloads[0].clone()),
                    (2, payloads[1].clone()),
                    (8, payloads[2].clone()),
                ]
                .into_iter(),
            );
            let mut out = Vec::new();
            while b.remaining() > 0 {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = b.slices(&mut slices);
                let pending: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
                assert_eq!(pending, whole[out.len()..], "step {step}");
                let took = step.min(pending.len());
                out.extend_from_slice(&pending[..took]);
                b.advance(took);
                // A payload is held by the batch (a second reference) until all of it is out.
                let ends = [12, 17, 30];
                for (payload, end) in payloads.iter().zip(ends) {
                    assert_eq!(
                        payload.is_unique(),
                        out.len() >= end,
                        "step {step} at {}",
                        out.len()
                    );
                }
            }
            assert_eq!(out, whole);
        }
    }
}
