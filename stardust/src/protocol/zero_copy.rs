//! Large `bytes::Bytes` arguments and results without copying them.
//!
//! A method argument or result declared as `Bytes` travels as a MessagePack `bin` like any byte
//! string (the wire does not change), but the generated code wraps it in [`ZeroCopy`], which
//! lets the runtime skip the two copies a payload would otherwise take in this process:
//!
//! - **Sending.** While a connection's write queue runs a producer it *arms* capture
//!   ([`armed`]), and a request's arguments or a response's result are encoded inside
//!   [`capture`], which returns the size of what it captured for the frame's length. There, a
//!   `ZeroCopy` of at least [`MIN_SEGMENT`] bytes leaves only its `bin` header in the frame
//!   buffer and is queued as a segment of its own (a reference to the caller's buffer); the
//!   writer sends frame bytes and segments in order with vectored writes. Anywhere else (a
//!   stream item, a notification, a buffer of one's own) the bytes are copied.
//! - **Receiving.** A frame body large enough to be worth it is taken out of the read buffer as
//!   `Bytes` and made the *source* while its values decode ([`with_source`]); a `ZeroCopy` decoded
//!   from it is a slice of it, not a copy. (A large frame that arrives over several reads is
//!   read into a buffer of its own, which returns to the connection's pool when the last
//!   `Bytes` sliced from it is dropped: see `transport::body_pool`.)
//!
//! Everything else (values outside an armed encode, small payloads, a decode with no source)
//! takes the ordinary copying path, so the wrapper is always correct, only faster where it can.

use std::cell::{Cell, RefCell};
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::Error;

/// Payloads smaller than this are copied: below it a copy costs less than an extra segment
/// (a reference count, a vector entry and an I/O vector element).
pub const MIN_SEGMENT: usize = 4 * 1024;

thread_local! {
    /// Whether encodes on this thread may capture segments (a write queue is encoding a frame).
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// Whether the value being encoded is one whose frame counts captured segments (inside
    /// [`capture`]): any other encode copies, even while armed.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// The payload a `ZeroCopy` is serializing right now, for the writer to recognise.
    static PENDING: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    /// Segments captured since the write queue armed capture: (offset in its buffer, bytes).
    static CAPTURED: RefCell<Vec<(usize, Bytes)>> = const { RefCell::new(Vec::new()) };
    /// The frame body values decode from (see [`with_source`]).
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// A `bytes::Bytes` that the runtime sends and receives without copying when it can (see the
/// module documentation). Generated code wraps `Bytes` arguments and results in it.
#[derive(Clone, PartialEq, Eq)]
pub struct ZeroCopy(pub Bytes);

impl fmt::Debug for ZeroCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZeroCopy({} bytes)", self.0.len())
    }
}

impl Serialize for ZeroCopy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() < MIN_SEGMENT || !(ARMED.get() && CAPTURING.get()) {
            return serializer.serialize_bytes(&self.0);
        }
        // The writer takes it when the bytes come past (see `CaptureWriter`); if they do not
        // (another serializer), they were copied and the handle is dropped here.
        PENDING.with_borrow_mut(|p| *p = Some(self.0.clone()));
        let result = serializer.serialize_bytes(&self.0);
        PENDING.with_borrow_mut(|p| *p = None);
        result
    }
}

impl<'de> Deserialize<'de> for ZeroCopy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ZeroCopy, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = ZeroCopy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ZeroCopy, E> {
                Ok(ZeroCopy(slice_of_source(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ZeroCopy, E> {
                Ok(ZeroCopy(slice_of_source(v.as_bytes())))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ZeroCopy, A::Error> {
                // An array of small integers (how some encoders write bytes).
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ZeroCopy(Bytes::from(out)))
            }
        }

        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// `v` as a slice of the current source when it lies inside it (no copy), else a copy.
fn slice_of_source(v: &[u8]) -> Bytes {
    if v.len() >= MIN_SEGMENT {
        let sliced = SOURCE.with_borrow(|source| {
            let source = source.as_ref()?;
            let (start, end) = (
                source.as_ptr() as usize,
                source.as_ptr() as usize + source.len(),
            );
            let p = v.as_ptr() as usize;
            (p >= start && p + v.len() <= end).then(|| source.slice_ref(v))
        });
        if let Some(bytes) = sliced {
            return bytes;
        }
    }
    Bytes::copy_from_slice(v)
}

/// Decodes a reply body as `T`, `ZeroCopy` values slicing it when it is large.
pub(crate) fn decode_reply<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    if body.len() >= MIN_SEGMENT {
        with_source(body, || super::codec::decode_value(body))
    } else {
        super::codec::decode_value(body)
    }
}

/// Runs `decode` with `body` as the source `ZeroCopy` values slice from.
pub(crate) fn with_source<R>(body: &Bytes, decode: impl FnOnce() -> R) -> R {
    let previous = SOURCE.with_borrow_mut(|s| s.replace(body.clone()));
    let result = decode();
    SOURCE.with_borrow_mut(|s| *s = previous);
    result
}

/// Runs `encode` (a write queue's producer appending frames to its buffer) with capture armed.
/// The segments it captured are then taken with [`take_captured`].
pub(crate) fn armed<R>(encode: impl FnOnce() -> R) -> R {
    let was = ARMED.replace(true);
    let result = encode();
    ARMED.set(was);
    result
}

/// Hands the segments captured by the last armed encode to `keep` (offsets into the buffer it
/// appended to), if there are any.
pub(crate) fn take_captured(keep: impl FnOnce(std::vec::Drain<'_, (usize, Bytes)>)) {
    CAPTURED.with_borrow_mut(|c| {
        if !c.is_empty() {
            keep(c.drain(..));
        }
    });
}

/// Encodes one value into `buf` (through `encode`, which must write with a [`CaptureWriter`])
/// and returns how many payload bytes it left out of `buf` as segments: the frame's length must
/// count them.
pub(crate) fn capture(
    buf: &mut BytesMut,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
) -> Result<usize, Error> {
    let before = CAPTURED.with_borrow(Vec::len);
    let was = CAPTURING.replace(true);
    let encoded = encode(buf);
    CAPTURING.set(was);
    encoded?;
    Ok(CAPTURED.with_borrow(|c| c[before..].iter().map(|(_, b)| b.len()).sum()))
}

/// Forgets the segments captured at or after `offset` (their frame is being truncated away).
pub(crate) fn discard_from(offset: usize) {
    CAPTURED.with_borrow_mut(|c| c.retain(|(at, _)| *at < offset));
}

/// The writer values are encoded with: appends to the buffer, except the bytes of the
/// `ZeroCopy` being serialized, which it captures as a segment at the current offset.
pub(crate) struct CaptureWriter<'a>(pub(crate) &'a mut BytesMut);

impl std::io::Write for CaptureWriter<'_> {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() >= MIN_SEGMENT && self.take_pending(data) {
            return Ok(data.len());
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    #[inline]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write(data).map(|_| ())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CaptureWriter<'_> {
    fn take_pending(&mut self, data: &[u8]) -> bool {
        let Some(bytes) = PENDING.with_borrow_mut(|p| {
            p.take_if(|b| b.as_ptr() == data.as_ptr() && b.len() == data.len())
        }) else {
            return false;
        };
        let at = self.0.len();
        CAPTURED.with_borrow_mut(|c| c.push((at, bytes)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;

    fn payload(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    /// Outside an armed encode a payload is copied into the buffer; armed, only its header is
    /// written and the payload becomes a segment at the right offset, counted by `capture`.
    #[test]
    fn armed_encodes_capture_large_payloads() {
        let big = payload(MIN_SEGMENT * 2);
        let mut plain = BytesMut::new();
        codec::encode_value(&mut plain, &(1u8, ZeroCopy(big.clone()))).unwrap();

        let mut buf = BytesMut::from(&b"xyz"[..]);
        let mut segments = Vec::new();
        let extra = armed(|| {
            capture(&mut buf, |buf| {
                codec::encode_value(buf, &(1u8, ZeroCopy(big.clone())))
            })
        })
        .unwrap();
        take_captured(|segs| segments.extend(segs));
        assert_eq!(extra, big.len());
        assert_eq!(segments.len(), 1);
        let (at, seg) = &segments[0];
        assert_eq!(
            seg.as_ptr(),
            big.as_ptr(),
            "the caller's buffer, not a copy"
        );
        // Reassembled, the bytes are what the copying encode wrote.
        let mut whole = buf[3..*at].to_vec();
        whole.extend_from_slice(seg);
        whole.extend_from_slice(&buf[*at..]);
        assert_eq!(whole, plain[..]);
        // Small payloads are copied even when armed.
        let mut small = BytesMut::new();
        let extra = armed(|| {
            capture(&mut small, |buf| {
                codec::encode_value(buf, &ZeroCopy(payload(10)))
            })
        })
        .unwrap();
        assert_eq!(extra, 0);
        take_captured(|_| panic!("nothing to capture"));
        // Armed but not inside `capture` (a frame whose length would not count segments, e.g.
        // a stream item or a notification): copied.
        let mut item = BytesMut::new();
        armed(|| codec::encode_value(&mut item, &ZeroCopy(big.clone()))).unwrap();
        assert_eq!(
            item.len(),
            plain.len() - 2,
            "the whole payload is in the buffer"
        );
        take_captured(|_| panic!("nothing was captured"));
    }

    /// Decoded with the frame as source, a payload is a slice of the frame; without one, a copy.
    #[test]
    fn decoding_slices_the_source() {
        let big = payload(MIN_SEGMENT + 1);
        let mut buf = BytesMut::new();
        codec::encode_value(&mut buf, &(7u8, ZeroCopy(big.clone()))).unwrap();
        let frame = buf.freeze();
        let (n, got): (u8, ZeroCopy) = with_source(&frame, || codec::decode_value(&frame)).unwrap();
        assert_eq!((n, &got.0), (7, &big));
        let inside = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        assert!(inside.contains(&(got.0.as_ptr() as usize)), "no copy");
        let (_, copied): (u8, ZeroCopy) = codec::decode_value(&frame).unwrap();
        assert!(!inside.contains(&(copied.0.as_ptr() as usize)));
        assert_eq!(copied.0, big);
        // Values of other encoders (an array of integers, a string) decode too.
        let mut arr = Vec::new();
        rmp::encode::write_array_len(&mut arr, 2).unwrap();
        rmp::encode::write_uint(&mut arr, 1).unwrap();
        rmp::encode::write_uint(&mut arr, 2).unwrap();
        let got: ZeroCopy = codec::decode_value(&arr).unwrap();
        assert_eq!(&got.0[..], &[1, 2]);
    }
}
