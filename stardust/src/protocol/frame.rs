//! Frame layout: the fixed 14-byte header every message starts with.
//!
//! ```text
//! 0        4      5       6                14
//! +--------+------+-------+----------------+------------------+
//! | length | kind | flags | id (u64, BE)   | body (length-10) |
//! +--------+------+-------+----------------+------------------+
//! ```
//!
//! `length` (u32, big-endian) counts every byte after itself, so a frame is `4 + length` bytes.
//! A fixed binary header (rather than a MessagePack one) lets a reader find frame boundaries and
//! route by kind and id without a MessagePack parser, and lets a writer patch the length in place
//! after encoding the body straight into the output buffer.

use bytes::{BufMut, BytesMut};

use crate::error::{Error, ErrorKind};

/// Bytes in the fixed header, counting the length field.
pub const HEADER_LEN: usize = 14;
/// Bytes of header covered by the length field (kind, flags, id).
pub const LENGTH_COVERED: u32 = 10;
/// The smallest frame limit a peer may announce: every error frame fits in it.
pub const MIN_MAX_FRAME: u32 = 1024;
/// Default limit on a frame's `length` field: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// The kind byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client → server, first frame on a connection: protocol version and metadata.
    Hello = 1,
    /// Server → client, answer to `Hello`.
    HelloAck = 2,
    /// Client → server: a call.
    Request = 3,
    /// Server → client: a call's successful (or application-error) result.
    Response = 4,
    /// Server → client: a call failed in the framework (unknown method, deadline, panic, ...).
    Error = 5,
    /// Client → server: stop working on a call; nobody waits for it any more.
    Cancel = 6,
    /// Server → client: a one-way notification on a topic.
    Notify = 7,
    /// Either way: keepalive probe.
    Ping = 8,
    /// Either way: answer to `Ping`, echoing its id.
    Pong = 9,
    /// Either way: the sender is closing the connection; carries a code and a reason.
    GoAway = 10,
    /// Server → client, during the handshake: prove possession of the key the token is bound
    /// to (feature `auth.proof`); carries a fresh nonce.
    Challenge = 11,
    /// Client → server, answer to `Challenge`: the signature of the nonce, the server's
    /// address and the token.
    Proof = 12,
    /// Either way, in a streaming call (feature `call.stream`): one item of the call's stream.
    Item = 13,
    /// Either way, in a streaming call: more credit, in bytes, for the other side's items.
    Credit = 14,
    /// Client → server, in a streaming call: the client's input stream is complete.
    End = 15,
}

impl Kind {
    /// Parses a kind byte.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::HelloAck,
            3 => Kind::Request,
            4 => Kind::Response,
            5 => Kind::Error,
            6 => Kind::Cancel,
            7 => Kind::Notify,
            8 => Kind::Ping,
            9 => Kind::Pong,
            10 => Kind::GoAway,
            11 => Kind::Challenge,
            12 => Kind::Proof,
            13 => Kind::Item,
            14 => Kind::Credit,
            15 => Kind::End,
            _ => return None,
        })
    }
}

/// Request flag: the caller expects no response (a one-way call).
pub const FLAG_ONE_WAY: u8 = 0x01;
/// Request flag: the method is idempotent, so a proxy may retry it on another provider.
pub const FLAG_IDEMPOTENT: u8 = 0x02;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw kind byte (validated by the receiver, which knows which kinds it accepts).
    pub kind: u8,
    /// Flag bits.
    pub flags: u8,
    /// Request id (or ping nonce); 0 where the kind has none.
    pub id: u64,
    /// Length of the body in bytes.
    pub body_len: usize,
}

impl Header {
    /// Total bytes of the frame including the header.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Parses the header at the start of `buf`.
///
/// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are buffered, and an error when the
/// length field is impossible (shorter than the header) or over `max_frame`. The body may not be
/// complete yet: check `buf.len() >= header.frame_len()`.
pub fn parse_header(buf: &[u8], max_frame: u32) -> Result<Option<Header>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if length < LENGTH_COVERED {
        return Err(Error::protocol(format!(
            "frame length {length} is shorter than the 10-byte header it must include"
        )));
    }
    if length > max_frame {
        return Err(Error::new(
            ErrorKind::FrameTooLarge,
            format!("frame of {length} bytes exceeds the limit of {max_frame} bytes"),
        ));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[6..14]);
    Ok(Some(Header {
        kind: buf[4],
        flags: buf[5],
        id: u64::from_be_bytes(id),
        body_len: (length - LENGTH_COVERED) as usize,
    }))
}

/// Starts a frame at the end of `buf`: writes the header with a placeholder length and returns
/// the frame's start offset, to be passed to [`finish`] once the body has been appended.
pub fn begin(buf: &mut BytesMut, kind: Kind, flags: u8, id: u64) -> usize {
    let start = buf.len();
    buf.reserve(HEADER_LEN);
    buf.put_u32(0);
    buf.put_u8(kind as u8);
    buf.put_u8(flags);
    buf.put_u64(id);
    start
}

/// Patches the length of the frame that starts at `start` and checks it against `max_frame`.
///
/// On error the partial frame is removed from `buf`, so the buffer stays a clean frame sequence.
pub fn finish(buf: &mut BytesMut, start: usize, max_frame: u32) -> Result<(), Error> {
    finish_with(buf, start, 0, max_frame)
}

/// [`finish`] for a frame whose body also has `segments` bytes queued outside `buf` (large
/// payloads sent without a copy, see `zero_copy`).
pub(crate) fn finish_with(
    buf: &mut BytesMut,
    start: usize,
    segments: usize,
    max_frame: u32,
) -> Result<(), Error> {
    let length = buf.len() - start - 4 + segments;
    if length > max_frame as usize {
        buf.truncate(start);
        return Err(Error::new(
            ErrorKind::FrameTooLarge,
            format!("frame of {length} bytes exceeds the limit of {max_frame} bytes"),
        ));
    }
    buf[start..start + 4].copy_from_slice(&(length as u32).to_be_bytes());
    Ok(())
}

/// Appends a frame with an empty body (cancel, ping, pong).
pub fn put_empty(buf: &mut BytesMut, kind: Kind, flags: u8, id: u64) {
    let start = begin(buf, kind, flags, id);
    // An empty body can never exceed any limit.
    let _ = finish(buf, start, u32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut buf = BytesMut::new();
        let start = begin(
            &mut buf,
            Kind::Request,
            FLAG_IDEMPOTENT,
            0x0102_0304_0506_0708,
        );
        buf.extend_from_slice(b"abc");
        finish(&mut buf, start, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(
            &buf[..],
            &[0, 0, 0, 13, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, b'a', b'b', b'c']
        );
        let h = parse_header(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(h.kind, Kind::Request as u8);
        assert_eq!(h.flags, FLAG_IDEMPOTENT);
        assert_eq!(h.id, 0x0102_0304_0506_0708);
        assert_eq!(h.body_len, 3);
        assert_eq!(h.frame_len(), buf.len());
    }

    #[test]
    fn short_buffer_is_incomplete() {
        assert_eq!(parse_header(&[0, 0, 0], DEFAULT_MAX_FRAME).unwrap(), None);
    }

    #[test]
    fn rejects_oversized_and_undersized_lengths() {
        let mut big = vec![0xff, 0xff, 0xff, 0xff];
        big.extend_from_slice(&[0; 10]);
        let err = parse_header(&big, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
        let mut small = vec![0, 0, 0, 3];
        small.extend_from_slice(&[0; 10]);
        assert_eq!(
            parse_header(&small, DEFAULT_MAX_FRAME).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn finish_enforces_limit_and_cleans_up() {
        let mut buf = BytesMut::new();
        put_empty(&mut buf, Kind::Ping, 0, 7);
        let before = buf.len();
        let start = begin(&mut buf, Kind::Response, 0, 1);
        buf.extend_from_slice(&[0u8; 100]);
        let err = finish(&mut buf, start, 50).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
        assert_eq!(buf.len(), before);
    }
}
