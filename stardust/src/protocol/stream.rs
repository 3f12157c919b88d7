//! Streaming calls on the wire (feature `call.stream`): the `Item`, `Credit` and `End` frames,
//! the `STREAM` request flag, and the flow-control arithmetic both ends share.
//!
//! A streaming call is an ordinary `Request` with the [`FLAG_STREAM`] bit, so routing, metadata,
//! deadlines and authorization are those of a call. Items then flow in `Item` frames carrying
//! the call's id, each direction under a credit window the receiver grants in bytes; the server
//! ends the call as any other, with one `Response` (the method's return value, nil for a method
//! that returns only a stream) or one `Error`. `docs/PROTOCOL.md` section 19 is the normative
//! description.

use bytes::BytesMut;
use serde::Serialize;

use super::codec;
use super::frame::{self, HEADER_LEN, Kind};
use crate::error::{Error, ErrorKind};

/// The feature a peer announces when it takes streaming calls (a server) or may open them (a
/// client). Neither side sends stream frames to a peer that did not announce it.
pub const FEATURE_STREAM: &str = "call.stream";

/// Request flag: the request opens a streaming call.
pub const FLAG_STREAM: u8 = 0x04;

/// The credit, in bytes, each side grants every stream it receives items on when its handshake
/// does not say otherwise (`stream_window`): 256 KiB, a few round trips' worth of small items on
/// a fast link, and a bound on what one slow reader costs its producer.
pub const DEFAULT_STREAM_WINDOW: u32 = 256 * 1024;

/// The largest single grant a `Credit` frame may carry: windows stay well inside an `i64`
/// however many grants arrive.
pub const MAX_CREDIT: u32 = i32::MAX as u32;

/// What an item costs the window it is sent under: its whole frame, header included, so an
/// empty item still costs something and a window also bounds the per-frame overhead a receiver
/// keeps.
#[inline]
pub fn item_cost(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

/// Appends an `Item` frame for call `id` whose body is `value`. On error nothing is left in
/// `buf`; an item over `max_frame` is `FrameTooLarge`.
pub fn put_item<T: Serialize + ?Sized>(
    buf: &mut BytesMut,
    id: u64,
    value: &T,
    max_frame: u32,
) -> Result<usize, Error> {
    let start = frame::begin(buf, Kind::Item, 0, id);
    if let Err(e) = codec::encode_value(buf, value) {
        buf.truncate(start);
        return Err(e);
    }
    finish_item(buf, start, max_frame)
}

/// Appends an `Item` frame whose body is already MessagePack (an agent relaying an item).
pub fn put_item_raw(
    buf: &mut BytesMut,
    id: u64,
    body: &[u8],
    max_frame: u32,
) -> Result<usize, Error> {
    let start = frame::begin(buf, Kind::Item, 0, id);
    buf.extend_from_slice(body);
    finish_item(buf, start, max_frame)
}

fn finish_item(buf: &mut BytesMut, start: usize, max_frame: u32) -> Result<usize, Error> {
    match frame::finish(buf, start, max_frame) {
        Ok(()) => Ok(buf.len() - start),
        Err(e) => Err(Error::new(
            ErrorKind::FrameTooLarge,
            format!("stream item not sent: {}", e.message()),
        )),
    }
}

/// Appends a `Credit` frame granting `bytes` more to the sender of call `id`'s items.
pub fn put_credit(buf: &mut BytesMut, id: u64, bytes: u32) {
    let start = frame::begin(buf, Kind::Credit, 0, id);
    let _ = rmp::encode::write_uint(&mut bytes::BufMut::writer(&mut *buf), bytes as u64);
    // A few bytes: never over any limit.
    let _ = frame::finish(buf, start, u32::MAX);
}

/// Parses a `Credit` body: a positive integer of at most [`MAX_CREDIT`].
pub fn parse_credit(body: &[u8]) -> Result<u32, Error> {
    let mut rd = body;
    let n: u64 = rmp::decode::read_int(&mut rd)
        .map_err(|e| Error::protocol(format!("malformed Credit frame: {e}")))?;
    if n == 0 || n > MAX_CREDIT as u64 {
        return Err(Error::protocol(format!(
            "Credit frame grants {n} bytes; a grant is 1 to {MAX_CREDIT}"
        )));
    }
    Ok(n as u32)
}

/// Appends an `End` frame: the client's input stream of call `id` is complete.
pub fn put_end(buf: &mut BytesMut, id: u64) {
    frame::put_empty(buf, Kind::End, 0, id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{DEFAULT_MAX_FRAME, parse_header};

    #[test]
    fn item_round_trip_and_cost() {
        let mut buf = BytesMut::new();
        let n = put_item(&mut buf, 7, &(1u8, "x"), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(n, buf.len());
        let h = parse_header(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((h.kind, h.flags, h.id), (Kind::Item as u8, 0, 7));
        assert_eq!(item_cost(h.body_len), buf.len());
        let value: (u8, String) = codec::decode_value(&buf[HEADER_LEN..]).unwrap();
        assert_eq!(value, (1, "x".to_owned()));
    }

    #[test]
    fn oversized_items_leave_nothing_behind() {
        let mut buf = BytesMut::new();
        put_end(&mut buf, 1);
        let before = buf.len();
        let err = put_item_raw(&mut buf, 2, &[0u8; 2000], 1024).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
        assert!(err.message().starts_with("stream item not sent"), "{err}");
        assert_eq!(buf.len(), before);
    }

    #[test]
    fn credit_round_trip_and_bounds() {
        let mut buf = BytesMut::new();
        put_credit(&mut buf, 3, 65_536);
        let h = parse_header(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!((h.kind, h.id), (Kind::Credit as u8, 3));
        assert_eq!(parse_credit(&buf[HEADER_LEN..]).unwrap(), 65_536);
        for bad in [
            &[0x00][..],
            &[0xce, 0xff, 0xff, 0xff, 0xff],
            &[0xa1, b'x'],
            &[],
        ] {
            assert_eq!(parse_credit(bad).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }
}
