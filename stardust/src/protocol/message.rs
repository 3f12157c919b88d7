//! Bodies of the frames: how each kind's MessagePack body is laid out.
//!
//! The request body is written with the protocol's own writers (`pack`) and read
//! with the low-level `rmp` functions instead of serde, so the hot path neither allocates nor
//! copies: service and method names are borrowed from the read buffer and the arguments stay raw
//! bytes until the handler's types decode them.

use bytes::BytesMut;
use serde::Serialize;

use super::frame::{self, Kind};
use super::{codec, decode, pack, zero_copy};
use crate::error::{Error, ErrorKind};
use crate::metadata::{Metadata, MetadataLimits};
use crate::trace_context::{
    LEN as TRACEPARENT_LEN, TRACEPARENT, TRACESTATE, TraceOut, TraceParent,
};

pub use super::handshake::{
    Features, Hello, HelloAck, MAX_FEATURE_LEN, MAX_FEATURES, PROTOCOL_NAME, PROTOCOL_VERSION,
    Proof, parse_challenge, parse_hello, parse_proof, put_challenge, put_proof,
};

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
    /// Call metadata, without a valid `traceparent` (that is in `trace`).
    pub meta: Metadata,
    /// The request's `traceparent` metadata, if it had a valid one.
    pub trace: Option<TraceParent>,
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
    put_request_args(buf, head, None, args, max_frame)
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

/// [`put_request`] for any [`Args`], with the call's `traceparent` (and `tracestate`) added to
/// its metadata when `trace` is given.
pub(crate) fn put_request_args<A: Args + ?Sized>(
    buf: &mut BytesMut,
    head: &RequestHead<'_>,
    trace: Option<TraceOut<'_>>,
    args: &A,
    max_frame: u32,
) -> Result<(), Error> {
    let start = frame::begin(buf, Kind::Request, head.flags, head.id);
    // Writing into a BytesMut cannot fail, so the rmp results are infallible here.
    pack::put_array_len(buf, 6);
    pack::put_str(buf, head.service);
    pack::put_str(buf, head.method);
    pack::put_uint(buf, head.timeout_us);
    pack::put_uint(buf, head.trace_id);
    put_meta(buf, head.meta, trace);
    let finished = zero_copy::capture(buf, |buf| args.put_args(buf))
        .and_then(|segments| frame::finish_with(buf, start, segments, max_frame));
    if finished.is_err() {
        zero_copy::discard_from(start);
        buf.truncate(start);
    }
    finished
}

/// Writes the call metadata: `meta`, and with `trace` its `traceparent` (in place of one in
/// `meta`) and its `tracestate` (unless `meta` has one), formatted on the stack.
fn put_meta(buf: &mut BytesMut, meta: &Metadata, trace: Option<TraceOut<'_>>) {
    let Some(trace) = trace else {
        pack::put_map_len(buf, meta.len() as u32);
        for (k, v) in meta.iter() {
            pack::put_str(buf, k);
            pack::put_str(buf, v);
        }
        return;
    };
    let replaced = meta.get(TRACEPARENT).is_some();
    let state = trace.state.filter(|_| meta.get(TRACESTATE).is_none());
    let len = meta.len() - usize::from(replaced) + 1 + usize::from(state.is_some());
    pack::put_map_len(buf, len as u32);
    for (k, v) in meta.iter().filter(|(k, _)| *k != TRACEPARENT) {
        pack::put_str(buf, k);
        pack::put_str(buf, v);
    }
    let mut text = [0u8; TRACEPARENT_LEN];
    trace.parent.write_bytes(&mut text);
    pack::put_str(buf, TRACEPARENT);
    // The formatted value is ASCII: written as a str without a UTF-8 pass.
    pack::put_ascii(buf, &text);
    if let Some(state) = state {
        pack::put_str(buf, TRACESTATE);
        pack::put_str(buf, state);
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::protocol(format!("malformed request body ({what}): {e}"))
}

/// A MessagePack string's bytes (checked later, or never: see [`RequestBytes`]).
fn read_str_bytes<'a>(rd: &mut &'a [u8], what: &str) -> Result<&'a [u8], Error> {
    let len = pack::read_str_len(rd).map_err(|e| bad(what, e))? as usize;
    if rd.len() < len {
        return Err(bad(
            what,
            format!("a string of {len} bytes with {} bytes left", rd.len()),
        ));
    }
    let (s, rest) = rd.split_at(len);
    *rd = rest;
    Ok(s)
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|e| bad(what, e))
}

/// Parses a `Request` body, with the default [`MetadataLimits`].
pub fn parse_request(body: &[u8]) -> Result<RequestView<'_>, Error> {
    parse_request_with(body, &MetadataLimits::DEFAULT)
}

/// Parses a `Request` body, checking its metadata against `limits` (a metadata limit crossed is
/// [`ErrorKind::LimitExceeded`]; anything malformed is [`ErrorKind::Protocol`]).
pub fn parse_request_with<'a>(
    body: &'a [u8],
    limits: &MetadataLimits,
) -> Result<RequestView<'a>, Error> {
    parse_request_bytes(body, limits)?.into_view()
}

/// A request whose service and method names are still bytes: a server that finds them among
/// the names it hosts takes its own (`&'static str`) and never checks them as UTF-8, which on
/// a small call costs more than the rest of the parse.
pub(crate) struct RequestBytes<'a> {
    pub(crate) service: &'a [u8],
    pub(crate) method: &'a [u8],
    view: RequestView<'a>,
}

impl<'a> RequestBytes<'a> {
    /// The request, its names checked as UTF-8.
    pub(crate) fn into_view(self) -> Result<RequestView<'a>, Error> {
        let service = utf8(self.service, "service")?;
        let method = utf8(self.method, "method")?;
        Ok(RequestView {
            service,
            method,
            ..self.view
        })
    }

    /// The request with the names it carries, as the caller found them (equal as bytes).
    pub(crate) fn named(self, service: &'a str, method: &'a str) -> RequestView<'a> {
        debug_assert!(service.as_bytes() == self.service && method.as_bytes() == self.method);
        RequestView {
            service,
            method,
            ..self.view
        }
    }
}

/// [`parse_request_with`] without the names' UTF-8 check.
pub(crate) fn parse_request_bytes<'a>(
    body: &'a [u8],
    limits: &MetadataLimits,
) -> Result<RequestBytes<'a>, Error> {
    let mut rd = body;
    let n = pack::read_array_len(&mut rd).map_err(|e| bad("array header", e))?;
    if n < 6 {
        return Err(bad("array header", format!("expected 6 elements, got {n}")));
    }
    let service = read_str_bytes(&mut rd, "service")?;
    let method = read_str_bytes(&mut rd, "method")?;
    let timeout_us = pack::read_u64(&mut rd).map_err(|e| bad("timeout", e))?;
    let trace_id = pack::read_u64(&mut rd).map_err(|e| bad("trace id", e))?;
    let (meta, trace) = decode::read_call_meta(&mut rd, limits)?;
    // Elements after the sixth (from a later protocol revision) follow the arguments: cut the
    // arguments where their value ends, so the forgiving arity rules never read an extra element
    // as an argument. The usual six-element request needs no walk.
    let args = if n == 6 {
        rd
    } else {
        let mut rest = rd;
        decode::skip_value(&mut rest).map_err(|e| bad("arguments", e))?;
        &rd[..rd.len() - rest.len()]
    };
    Ok(RequestBytes {
        service,
        method,
        view: RequestView {
            service: "",
            method: "",
            timeout_us,
            trace_id,
            meta,
            trace,
            args,
        },
    })
}

/// Longest error message sent on the wire, in bytes: with the header it stays under
/// [`frame::MIN_MAX_FRAME`], so an error frame always fits the peer's limit.
pub const MAX_ERROR_MESSAGE: usize = 900;

/// Appends an `Error` frame (or a `GoAway` frame, same body): `[code, message]`. Messages longer
/// than [`MAX_ERROR_MESSAGE`] bytes are cut at a character boundary and end with `…`.
pub fn put_error(buf: &mut BytesMut, kind: Kind, id: u64, err: &Error) {
    let start = frame::begin(buf, kind, 0, id);
    pack::put_array_len(buf, 2);
    pack::put_uint(buf, err.kind().code() as u64);
    let msg = err.message();
    if msg.len() <= MAX_ERROR_MESSAGE {
        pack::put_str(buf, msg);
    } else {
        let mut cut = MAX_ERROR_MESSAGE - '…'.len_utf8();
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        pack::put_str(buf, &format!("{}…", &msg[..cut]));
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
    pack::put_array_len(buf, 2);
    pack::put_str(buf, topic);
    if let Err(e) = codec::encode_value(buf, payload) {
        buf.truncate(start);
        return Err(e);
    }
    frame::finish(buf, start, max_frame)
}

/// Appends a `Notify` frame whose payload is already MessagePack (a notification encoded once
/// for many connections).
pub(crate) fn put_notify_raw(
    buf: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    max_frame: u32,
) -> Result<(), Error> {
    let start = frame::begin(buf, Kind::Notify, 0, 0);
    pack::put_array_len(buf, 2);
    pack::put_str(buf, topic);
    buf.extend_from_slice(payload);
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
    if n == 2 {
        return Ok((topic, rest));
    }
    // Elements after the payload (a later revision's) are not part of it.
    let mut after = rest;
    decode::skip_value(&mut after)
        .map_err(|e| Error::protocol(format!("malformed notify payload: {e}")))?;
    Ok((topic, &rest[..rest.len() - after.len()]))
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

    /// A request body `[service, method, timeout, trace, meta, args, extra...]`.
    fn request_body(meta_pairs: u32, args: &[u8], extra: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        rmp::encode::write_array_len(&mut body, 6 + extra.len() as u32).unwrap();
        rmp::encode::write_str(&mut body, "s").unwrap();
        rmp::encode::write_str(&mut body, "m").unwrap();
        rmp::encode::write_uint(&mut body, 0).unwrap();
        rmp::encode::write_uint(&mut body, 0).unwrap();
        rmp::encode::write_map_len(&mut body, meta_pairs).unwrap();
        for i in 0..meta_pairs {
            rmp::encode::write_str(&mut body, &i.to_string()).unwrap();
            rmp::encode::write_str(&mut body, "").unwrap();
        }
        body.extend_from_slice(args);
        for e in extra {
            body.extend_from_slice(e);
        }
        body
    }

    #[test]
    fn elements_after_the_arguments_are_not_arguments() {
        // args [7], then a seventh element "future": the arguments are [7] alone, so
        // `(i64, Option<String>)` reads `(7, None)`, not `(7, Some("future"))`.
        let body = request_body(0, &[0x91, 0x07], &[b"\xa6future", &[0x92, 0x01, 0x02]]);
        let req = parse_request(&body).unwrap();
        assert_eq!(req.args, &[0x91, 0x07]);
        let args: (i64, Option<String>) = codec::decode_args(req.args, 2).unwrap();
        assert_eq!(args, (7, None));
        // A seventh element cut short is not looked at; arguments cut short are malformed.
        let body = request_body(0, &[0x91, 0x07], &[&[0xa6, b'f']]);
        assert!(
            parse_request(&body).is_ok(),
            "only the arguments are walked"
        );
        let body = request_body(0, &[0x93, 0x07], &[&[0xc0]]);
        assert_eq!(
            parse_request(&body).unwrap_err().kind(),
            ErrorKind::Protocol
        );
    }

    #[test]
    fn notification_elements_after_the_payload_are_not_the_payload() {
        let mut body = Vec::new();
        rmp::encode::write_array_len(&mut body, 3).unwrap();
        rmp::encode::write_str(&mut body, "topic").unwrap();
        rmp::encode::write_uint(&mut body, 5).unwrap();
        rmp::encode::write_str(&mut body, "future").unwrap();
        let (topic, payload) = parse_notify(&body).unwrap();
        assert_eq!((topic, payload), ("topic", &[0x05][..]));
    }

    #[test]
    fn request_metadata_is_checked_against_the_limits() {
        let body = request_body(257, &[0x90], &[]);
        let err = parse_request(&body).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        assert!(
            err.message().contains("call metadata has 257 entries"),
            "{err}"
        );
        let mut limits = MetadataLimits::DEFAULT;
        limits.max_entries = 300;
        assert_eq!(parse_request_with(&body, &limits).unwrap().meta.len(), 257);
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

    /// Names that are not UTF-8 are malformed; a server finding a name among its own takes
    /// that one, equal byte for byte.
    #[test]
    fn request_names_are_checked_unless_known() {
        let mut body = Vec::new();
        rmp::encode::write_array_len(&mut body, 6).unwrap();
        rmp::encode::write_str_len(&mut body, 2).unwrap();
        body.extend_from_slice(&[0xc3, 0x28]);
        rmp::encode::write_str(&mut body, "m").unwrap();
        rmp::encode::write_uint(&mut body, 0).unwrap();
        rmp::encode::write_uint(&mut body, 0).unwrap();
        rmp::encode::write_map_len(&mut body, 0).unwrap();
        rmp::encode::write_array_len(&mut body, 0).unwrap();
        let e = parse_request(&body).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert!(e.message().contains("service"), "{e}");

        let raw = parse_request_bytes(&body, &MetadataLimits::DEFAULT).unwrap();
        assert_eq!(raw.service, &[0xc3, 0x28]);
        assert_eq!(raw.method, b"m");

        let mut ok = BytesMut::new();
        let meta = Metadata::new();
        let head = RequestHead {
            id: 1,
            flags: 0,
            service: "calc.Calc",
            method: "add",
            timeout_us: 5,
            trace_id: 9,
            meta: &meta,
        };
        put_request(&mut ok, &head, &(1, 2), u32::MAX).unwrap();
        let body = &ok[frame::HEADER_LEN..];
        let raw = parse_request_bytes(body, &MetadataLimits::DEFAULT).unwrap();
        let view = raw.named("calc.Calc", "add");
        assert_eq!(
            (view.service, view.method, view.timeout_us, view.trace_id),
            ("calc.Calc", "add", 5, 9)
        );
    }
}
