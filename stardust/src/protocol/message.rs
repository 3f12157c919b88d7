//! Bodies of the frames: how each kind's MessagePack body is laid out.
//!
//! The request body is written and read with the low-level `rmp` functions instead of serde, so the
//! hot path neither allocates nor copies: service and method names are borrowed from the read
//! buffer and the arguments stay raw bytes until the handler's types decode them.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::codec;
use super::frame::{self, Kind};
use crate::error::{Error, ErrorKind};
use crate::metadata::Metadata;

/// The protocol name carried in the handshake, so a server can tell a Stardust client from a
/// stray connection at once.
pub const PROTOCOL_NAME: &str = "stardust";
/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Body of a `Hello` frame (a MessagePack map).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Always `"stardust"`.
    pub protocol: String,
    /// Protocol version the client speaks.
    pub version: u32,
    /// Free-form client software name and version, for logs.
    #[serde(default)]
    pub agent: String,
    /// The largest frame `length` the client accepts (responses over it are refused by the
    /// server with a `FrameTooLarge` error instead of being sent). Absent means 16 MiB.
    #[serde(default)]
    pub max_frame: Option<u32>,
    /// Connection metadata (credentials arrive here).
    #[serde(default)]
    pub meta: Metadata,
}

/// Body of a `HelloAck` frame (a MessagePack map).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloAck {
    /// Protocol version the server will speak on this connection.
    pub version: u32,
    /// Free-form server software name and version.
    #[serde(default)]
    pub agent: String,
    /// The largest frame `length` the server accepts.
    pub max_frame: u32,
}

/// A request as read off the wire, borrowing from the read buffer.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// Service name, e.g. `calc.Calculator`.
    pub service: &'a str,
    /// Method name, e.g. `add`.
    pub method: &'a str,
    /// Time budget in microseconds from receipt; 0 means no deadline.
    pub timeout_us: u64,
    /// Trace id; 0 means none.
    pub trace_id: u64,
    /// Call metadata.
    pub meta: Metadata,
    /// The raw MessagePack argument array.
    pub args: &'a [u8],
}

/// Everything a request carries besides its arguments.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// Request id (any value for one-way calls, which are never answered).
    pub id: u64,
    /// Flag bits ([`frame::FLAG_ONE_WAY`], [`frame::FLAG_IDEMPOTENT`]).
    pub flags: u8,
    /// Service name.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// Time budget in microseconds; 0 means no deadline.
    pub timeout_us: u64,
    /// Trace id; 0 means none.
    pub trace_id: u64,
    /// Call metadata.
    pub meta: &'a Metadata,
}

fn w(buf: &mut BytesMut) -> bytes::buf::Writer<&mut BytesMut> {
    buf.writer()
}

/// Appends a complete `Request` frame: `[service, method, timeout_us, trace_id, meta, args]`.
///
/// `args` must serialize as an array (the generated code passes a tuple). On error nothing is left
/// in `buf`.
pub fn put_request<A: Serialize + ?Sized>(
    buf: &mut BytesMut,
    head: &RequestHead<'_>,
    args: &A,
    max_frame: u32,
) -> Result<(), Error> {
    put_request_args(buf, head, args, max_frame)
}

/// The arguments of a request as they are written: any serde value (what proxies send), or
/// bytes already encoded ([`RawArgs`], what an agent forwards).
pub(crate) trait Args {
    /// Appends the MessagePack argument array to `buf`.
    fn put_args(&self, buf: &mut BytesMut) -> Result<(), Error>;
}

impl<T: Serialize + ?Sized> Args for T {
    #[inline]
    fn put_args(&self, buf: &mut BytesMut) -> Result<(), Error> {
        codec::encode_value(buf, self)
    }
}

/// An argument array already encoded as MessagePack, sent as it is.
pub(crate) struct RawArgs<'a>(pub(crate) &'a [u8]);

impl Args for RawArgs<'_> {
    fn put_args(&self, buf: &mut BytesMut) -> Result<(), Error> {
        buf.extend_from_slice(self.0);
        Ok(())
    }
}

/// [`put_request`] for any [`Args`].
pub(crate) fn put_request_args<A: Args + ?Sized>(
    buf: &mut BytesMut,
    head: &RequestHead<'_>,
    args: &A,
    max_frame: u32,
) -> Result<(), Error> {
    let start = frame::begin(buf, Kind::Request, head.flags, head.id);
    // Writing into a BytesMut cannot fail, so the rmp results are infallible here.
    let _ = rmp::encode::write_array_len(&mut w(buf), 6);
    let _ = rmp::encode::write_str(&mut w(buf), head.service);
    let _ = rmp::encode::write_str(&mut w(buf), head.method);
    let _ = rmp::encode::write_uint(&mut w(buf), head.timeout_us);
    let _ = rmp::encode::write_uint(&mut w(buf), head.trace_id);
    put_meta(buf, head.meta);
    if let Err(e) = args.put_args(buf) {
        buf.truncate(start);
        return Err(e);
    }
    frame::finish(buf, start, max_frame)
}

fn put_meta(buf: &mut BytesMut, meta: &Metadata) {
    let _ = rmp::encode::write_map_len(&mut w(buf), meta.len() as u32);
    for (k, v) in meta.iter() {
        let _ = rmp::encode::write_str(&mut w(buf), k);
        let _ = rmp::encode::write_str(&mut w(buf), v);
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::protocol(format!("malformed request body ({what}): {e}"))
}

fn read_str<'a>(rd: &mut &'a [u8], what: &str) -> Result<&'a str, Error> {
    let (s, rest) = rmp::decode::read_str_from_slice(*rd).map_err(|e| bad(what, e))?;
    *rd = rest;
    Ok(s)
}

/// Parses a `Request` body.
pub fn parse_request(body: &[u8]) -> Result<RequestView<'_>, Error> {
    let mut rd = body;
    let n = rmp::decode::read_array_len(&mut rd).map_err(|e| bad("array header", e))?;
    if n < 6 {
        return Err(bad("array header", format!("expected 6 elements, got {n}")));
    }
    let service = read_str(&mut rd, "service")?;
    let method = read_str(&mut rd, "method")?;
    let timeout_us = rmp::decode::read_int(&mut rd).map_err(|e| bad("timeout", e))?;
    let trace_id = rmp::decode::read_int(&mut rd).map_err(|e| bad("trace id", e))?;
    let pairs = rmp::decode::read_map_len(&mut rd).map_err(|e| bad("metadata", e))?;
    let mut meta = Metadata::new();
    for _ in 0..pairs {
        let k = read_str(&mut rd, "metadata key")?;
        let v = read_str(&mut rd, "metadata value")?;
        meta.insert(k, v);
    }
    // Elements beyond the sixth (from a future protocol revision) would follow the arguments;
    // the arguments decoder reads one value and ignores what follows.
    Ok(RequestView {
        service,
        method,
        timeout_us,
        trace_id,
        meta,
        args: rd,
    })
}

/// Longest error message sent on the wire, in bytes: with the header it stays under
/// [`frame::MIN_MAX_FRAME`], so an error frame always fits the peer's limit.
pub const MAX_ERROR_MESSAGE: usize = 900;

/// Appends an `Error` frame (or a `GoAway` frame, same body): `[code, message]`. Messages longer
/// than [`MAX_ERROR_MESSAGE`] bytes are cut at a character boundary and end with `…`.
pub fn put_error(buf: &mut BytesMut, kind: Kind, id: u64, err: &Error) {
    let start = frame::begin(buf, kind, 0, id);
    let _ = rmp::encode::write_array_len(&mut w(buf), 2);
    let _ = rmp::encode::write_uint(&mut w(buf), err.kind().code() as u64);
    let msg = err.message();
    if msg.len() <= MAX_ERROR_MESSAGE {
        let _ = rmp::encode::write_str(&mut w(buf), msg);
    } else {
        let mut cut = MAX_ERROR_MESSAGE - '…'.len_utf8();
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        let _ = rmp::encode::write_str(&mut w(buf), &format!("{}…", &msg[..cut]));
    }
    // Error messages are short; never over any sane limit.
    let _ = frame::finish(buf, start, u32::MAX);
}

/// Parses an `Error` or `GoAway` body into an [`Error`].
pub fn parse_error(body: &[u8]) -> Error {
    let mut rd = body;
    let parsed = (|| -> Option<Error> {
        if rmp::decode::read_array_len(&mut rd).ok()? < 2 {
            return None;
        }
        // Any unsigned integer: codes this side does not know, even beyond u16, are `Internal`.
        let code: u64 = rmp::decode::read_int(&mut rd).ok()?;
        let (msg, _) = rmp::decode::read_str_from_slice(rd).ok()?;
        let kind = u16::try_from(code).map_or(ErrorKind::Internal, ErrorKind::from_code);
        Some(Error::new(kind, msg.to_owned()))
    })();
    parsed.unwrap_or_else(|| Error::protocol("malformed error frame from peer"))
}

/// Appends a `Notify` frame: `[topic, payload]`.
pub fn put_notify<T: Serialize + ?Sized>(
    buf: &mut BytesMut,
    topic: &str,
    payload: &T,
    max_frame: u32,
) -> Result<(), Error> {
    let start = frame::begin(buf, Kind::Notify, 0, 0);
    let _ = rmp::encode::write_array_len(&mut w(buf), 2);
    let _ = rmp::encode::write_str(&mut w(buf), topic);
    if let Err(e) = codec::encode_value(buf, payload) {
        buf.truncate(start);
        return Err(e);
    }
    frame::finish(buf, start, max_frame)
}

/// Parses a `Notify` body into its topic and the raw payload bytes.
pub fn parse_notify(body: &[u8]) -> Result<(&str, &[u8]), Error> {
    let mut rd = body;
    let n = rmp::decode::read_array_len(&mut rd)
        .map_err(|e| Error::protocol(format!("malformed notify frame: {e}")))?;
    if n < 2 {
        return Err(Error::protocol(
            "malformed notify frame: expected [topic, payload]",
        ));
    }
    let (topic, rest) = rmp::decode::read_str_from_slice(rd)
        .map_err(|e| Error::protocol(format!("malformed notify topic: {e}")))?;
    Ok((topic, rest))
}

/// Appends a frame whose body is a serde value encoded as a map (handshake frames).
pub fn put_serde<T: Serialize>(buf: &mut BytesMut, kind: Kind, value: &T) -> Result<(), Error> {
    let start = frame::begin(buf, kind, 0, 0);
    codec::encode_value(buf, value)?;
    frame::finish(buf, start, u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{DEFAULT_MAX_FRAME, parse_header};

    #[test]
    fn request_round_trip() {
        let mut meta = Metadata::new();
        meta.insert("k", "v");
        let head = RequestHead {
            id: 9,
            flags: frame::FLAG_IDEMPOTENT,
            service: "calc.Calculator",
            method: "add",
            timeout_us: 5_000_000,
            trace_id: 42,
            meta: &meta,
        };
        let mut buf = BytesMut::new();
        put_request(&mut buf, &head, &(1i64, 2i64), DEFAULT_MAX_FRAME).unwrap();
        let h = parse_header(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(h.frame_len(), buf.len());
        assert_eq!((h.kind, h.flags, h.id), (3, frame::FLAG_IDEMPOTENT, 9));
        let req = parse_request(&buf[frame::HEADER_LEN..]).unwrap();
        assert_eq!(req.service, "calc.Calculator");
        assert_eq!(req.method, "add");
        assert_eq!(req.timeout_us, 5_000_000);
        assert_eq!(req.trace_id, 42);
        assert_eq!(req.meta.get("k"), Some("v"));
        let args: (i64, i64) = codec::decode_args(req.args, 2).unwrap();
        assert_eq!(args, (1, 2));
    }

    #[test]
    fn error_round_trip() {
        let mut buf = BytesMut::new();
        let err = Error::new(ErrorKind::UnknownMethod, "no `mul`");
        put_error(&mut buf, Kind::Error, 3, &err);
        let back = parse_error(&buf[frame::HEADER_LEN..]);
        assert_eq!(back.kind(), ErrorKind::UnknownMethod);
        assert_eq!(back.message(), "no `mul`");
        assert_eq!(parse_error(&[0xc1]).kind(), ErrorKind::Protocol);
    }

    #[test]
    fn unknown_error_codes_are_internal() {
        // [code, "why", extra]: codes nobody knows, small or beyond u16, and a trailing element.
        for code in [99u64, 65_535, 65_536, u64::MAX] {
            let mut body = Vec::new();
            rmp::encode::write_array_len(&mut body, 3).unwrap();
            rmp::encode::write_uint(&mut body, code).unwrap();
            rmp::encode::write_str(&mut body, "why").unwrap();
            rmp::encode::write_nil(&mut body).unwrap();
            let err = parse_error(&body);
            assert_eq!(
                (err.kind(), err.message()),
                (ErrorKind::Internal, "why"),
                "{code}"
            );
        }
    }

    #[test]
    fn long_error_messages_are_cut_to_fit() {
        let mut buf = BytesMut::new();
        let err = Error::new(ErrorKind::Panicked, "é".repeat(2000));
        put_error(&mut buf, Kind::Error, 1, &err);
        assert!(buf.len() < frame::MIN_MAX_FRAME as usize);
        let back = parse_error(&buf[frame::HEADER_LEN..]);
        assert!(back.message().ends_with('…'));
        assert!(back.message().len() <= MAX_ERROR_MESSAGE);
    }

    #[test]
    fn garbage_request_bodies_are_protocol_errors() {
        for body in [
            &[][..],
            &[0x91, 0xa1, b'x'][..],
            &[0x96, 0x01][..],
            &[0xff][..],
        ] {
            assert_eq!(parse_request(body).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }
}
