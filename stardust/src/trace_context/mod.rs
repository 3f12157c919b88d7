//! W3C Trace Context (`traceparent`, `tracestate`) in call metadata: how a call's trace is
//! continued across processes, including ones that are not Stardust.
//!
//! A request names its trace twice: the 64-bit `trace_id` field every version-1 peer knows, and
//! the `traceparent` metadata key (version `00`: a 128-bit trace id, the caller's span id and
//! the sampled flag), with `tracestate` forwarded when present. The 64-bit field is always the
//! low 64 bits of the W3C trace id. A request from an older peer, with the field alone, is
//! continued as the W3C trace whose high 64 bits are zero and whose low 64 bits are the field,
//! under a parent span whose id is the field too (the convention of 64-bit tracers, whose root
//! span id is the trace id).
//!
//! The client writes `traceparent` while it encodes the request (into a stack buffer: nothing
//! is allocated for it); a provider takes a valid one out of the call's metadata as it decodes
//! it (strictly per the W3C spec: a malformed one is dropped and the call starts a new trace).

pub(crate) mod spans;

use crate::metadata::Metadata;

/// The metadata key of the W3C `traceparent` header.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate` header.
pub(crate) const TRACESTATE: &str = "tracestate";
/// Length of a version-`00` `traceparent`.
pub(crate) const LEN: usize = 55;
/// The sampled flag of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// A `traceparent` value: the trace, the span that sent it and its flags. Not a public API
/// (what handlers see is [`TraceContext`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The 128-bit trace id (never 0).
    pub trace_id: u128,
    /// The id of the span that sent the request (never 0).
    pub parent_id: u64,
    /// `trace-flags`; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value strictly per W3C Trace Context: two lowercase hex digits of
    /// version (not `ff`), a 32-digit trace id and a 16-digit parent id that are not all zeros,
    /// two digits of flags, separated by `-`. Version `00` is exactly 55 characters; a later
    /// version may append fields after another `-`, which are ignored.
    pub fn parse(s: &str) -> Option<TraceParent> {
        Self::parse_bytes(s.as_bytes())
    }

    /// [`parse`](Self::parse) on the value's bytes (a valid one is ASCII).
    pub(crate) fn parse_bytes(b: &[u8]) -> Option<TraceParent> {
        if b.len() < LEN || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != LEN) || (b.len() > LEN && b[LEN] != b'-')
        {
            return None;
        }
        let trace_id = (hex(&b[3..19])? as u128) << 64 | hex(&b[19..35])? as u128;
        let parent_id = hex(&b[36..52])?;
        let flags = hex(&b[53..55])? as u8;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Formats the value (version `00`) into `buf`, returning it as text.
    pub(crate) fn write<'b>(&self, buf: &'b mut [u8; LEN]) -> &'b str {
        self.write_bytes(buf);
        // Only ASCII was written: this cannot fail.
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// [`write`](Self::write) without the text view (the encoder copies the bytes as they are).
    pub(crate) fn write_bytes(&self, buf: &mut [u8; LEN]) {
        buf[..3].copy_from_slice(b"00-");
        put_hex(&mut buf[3..19], (self.trace_id >> 64) as u64);
        put_hex(&mut buf[19..35], self.trace_id as u64);
        buf[35] = b'-';
        put_hex(&mut buf[36..52], self.parent_id);
        buf[52] = b'-';
        put_hex(&mut buf[53..55], self.flags as u64);
    }
}

/// Up to 16 lowercase hex digits as a number; `None` for anything else (uppercase included:
/// the spec allows only lowercase). Every request a provider serves parses 52 digits, so 8 are
/// checked and converted at once (SWAR: each byte of a `u64` is one digit, and no step carries
/// from one byte into the next because every byte is below 0x80 when it is added to).
fn hex(digits: &[u8]) -> Option<u64> {
    match digits.len() {
        16 => Some(hex8(load8(&digits[..8]))? << 32 | hex8(load8(&digits[8..]))?),
        2 => hex8(0x3030_3030_3030_0000 | (digits[0] as u64) << 8 | digits[1] as u64),
        _ => digits.chunks(8).try_fold(0u64, |acc, chunk| {
            let mut bytes = [b'0'; 8];
            // Right-aligned: leading '0's change nothing.
            bytes[8 - chunk.len()..].copy_from_slice(chunk);
            Some(acc << (4 * chunk.len()) | hex8(u64::from_be_bytes(bytes))?)
        }),
    }
}

/// Eight bytes as a big-endian `u64` (the first byte most significant).
fn load8(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

/// Eight ASCII hex digits, the first in the most significant byte, as a 32-bit number.
fn hex8(v: u64) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if v & HIGH != 0 {
        return None;
    }
    // Each byte's high bit: set where the byte is at least the constant's byte.
    let at_least = |c: u8| v.wrapping_add(ONES * (0x80 - c) as u64) & HIGH;
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if digit | letter != HIGH {
        return None;
    }
    // '0'..'9' are 0x30..0x39, 'a'..'f' 0x61..0x66: low nibble, plus 9 for letters.
    let mut n = (v & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Pack the eight nibbles (one per byte, most significant first) into 32 bits.
    n = (n >> 4 | n) & 0x00ff_00ff_00ff_00ff;
    n = (n >> 8 | n) & 0x0000_ffff_0000_ffff;
    n = (n >> 16 | n) & 0x0000_0000_ffff_ffff;
    Some(n)
}

/// Writes `v` as `out.len()` (at most 16) lowercase hex digits (its low bits). Every request a
/// consumer sends writes 50 digits, so eight are made at once, as [`hex`] reads them.
fn put_hex(out: &mut [u8], v: u64) {
    let mut digits = [0u8; 16];
    digits[..8].copy_from_slice(&hex8_digits((v >> 32) as u32));
    digits[8..].copy_from_slice(&hex8_digits(v as u32));
    out.copy_from_slice(&digits[16 - out.len()..]);
}

/// `v` as eight lowercase hex digits, the most significant first.
fn hex8_digits(v: u32) -> [u8; 8] {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Spread the eight nibbles over the eight bytes (the most significant in the first).
    let mut n = u64::from(v);
    n = (n | n << 16) & 0x0000_ffff_0000_ffff;
    n = (n | n << 8) & 0x00ff_00ff_00ff_00ff;
    n = (n | n << 4) & (ONES * 0x0f);
    // A byte is 10 or more exactly when adding 6 carries into its bit 4 (no byte overflows).
    let letter = ((n + ONES * 6) >> 4) & ONES;
    // '0' + n for digits; 'a' - 10 + n = '0' + 0x27 + n for letters.
    (n + ONES * u64::from(b'0') + letter * 0x27).to_be_bytes()
}

/// The trace of a call being served: its trace, its own span id (the parent of the calls its
/// handler makes) and the span of the caller that sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Served {
    /// 0 only for a context that serves no call ([`Context::detached`](crate::Context)).
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// 0 when the call started its trace.
    pub(crate) parent_span_id: u64,
    pub(crate) flags: u8,
}

impl Served {
    /// The trace id under which the call may be shown as an exemplar (a slowest or failed
    /// call an operator can look up): its trace id when the trace is sampled, else 0.
    pub(crate) fn exemplar_id(&self) -> u128 {
        if self.flags & SAMPLED != 0 {
            self.trace_id
        } else {
            0
        }
    }

    /// The trace of a call that arrived with `traceparent` (valid, or `None`) and the 64-bit
    /// `trace_id` field: continued from the `traceparent`, else from the field (an older
    /// peer's), else a new one.
    pub(crate) fn received(parent: Option<TraceParent>, trace_id: u64) -> Served {
        let parent = parent.or_else(|| Self::legacy(trace_id));
        match parent {
            Some(p) => Served {
                trace_id: p.trace_id,
                span_id: new_span_id(),
                parent_span_id: p.parent_id,
                flags: p.flags & SAMPLED,
            },
            None => Served {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent_span_id: 0,
                flags: SAMPLED,
            },
        }
    }

    /// The W3C parent an older peer's 64-bit trace id stands for: high bits zero, and a parent
    /// span whose id is the trace id.
    pub(crate) fn legacy(trace_id: u64) -> Option<TraceParent> {
        (trace_id != 0).then_some(TraceParent {
            trace_id: trace_id as u128,
            parent_id: trace_id,
            flags: SAMPLED,
        })
    }
}

/// The trace of an outgoing call: the `traceparent` it sends (its trace, its own new span id,
/// its flags), whether the client writes it, and the `tracestate` to forward.
#[derive(Clone, Debug)]
pub(crate) struct CallTrace {
    pub(crate) parent: TraceParent,
    /// The span this call's span is a child of (0: none), for its `tracing` span.
    pub(crate) parent_span_id: u64,
    /// `false` when the call's metadata carries a `traceparent` of the caller's own, sent as is.
    pub(crate) send: bool,
    /// The served call's `tracestate`, forwarded (unless the metadata has its own).
    pub(crate) state: Option<String>,
}

/// What a request's encoder writes: the `traceparent` and, if any, the `tracestate`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TraceOut<'a> {
    pub(crate) parent: TraceParent,
    pub(crate) state: Option<&'a str>,
}

impl CallTrace {
    /// A call made under `served` (the handler's call, if any; with its `tracestate`): the same
    /// trace and a new span whose parent is the served call's; otherwise a new trace.
    pub(crate) fn child(served: Option<(Served, Option<String>)>) -> CallTrace {
        match served {
            Some((s, state)) if s.trace_id != 0 => CallTrace {
                parent: TraceParent {
                    trace_id: s.trace_id,
                    parent_id: new_span_id(),
                    flags: s.flags,
                },
                parent_span_id: s.span_id,
                send: true,
                state,
            },
            _ => CallTrace {
                parent: TraceParent {
                    trace_id: new_trace_id(),
                    parent_id: new_span_id(),
                    flags: SAMPLED,
                },
                parent_span_id: 0,
                send: true,
                state: None,
            },
        }
    }

    /// A call's trace given the metadata it is sent with: a valid `traceparent` the caller put
    /// there itself (a context from outside Stardust) is sent as it is, and is the call's trace.
    pub(crate) fn with_metadata(mut self, meta: &Metadata) -> CallTrace {
        if let Some(p) = meta.get(TRACEPARENT).and_then(TraceParent::parse) {
            self.parent = p;
            self.parent_span_id = 0;
            self.send = false;
            self.state = None;
        }
        self
    }

    /// The request's 64-bit `trace_id`: the low half of the W3C trace id.
    pub(crate) fn trace_id(&self) -> u64 {
        self.parent.trace_id as u64
    }

    /// What the encoder writes, if anything.
    pub(crate) fn out(&self) -> Option<TraceOut<'_>> {
        self.send.then_some(TraceOut {
            parent: self.parent,
            state: self.state.as_deref(),
        })
    }
}

/// A call's W3C trace context as its handler sees it ([`Context::trace_context`]).
///
/// [`Context::trace_context`]: crate::Context::trace_context
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceContext {
    /// The 128-bit W3C trace id. Its low 64 bits are the request's `trace_id`
    /// ([`Context::trace_id`](crate::Context::trace_id)).
    pub trace_id: u128,
    /// This call's own span id at the provider: the parent span of the calls its handler makes.
    pub span_id: u64,
    /// The caller's span id, from the `traceparent` the call arrived with (for a call from an
    /// older peer that sent only the 64-bit trace id, that id); 0 when the call started a new
    /// trace.
    pub parent_span_id: u64,
    /// The caller's sampled flag (`true` for a trace started here).
    pub sampled: bool,
    /// The `tracestate` the call arrived with, forwarded to the calls its handler makes.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The `traceparent` value that continues this trace under this call's span (for a call or
    /// request to a system outside Stardust): `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        let mut buf = [0u8; LEN];
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: u8::from(self.sampled),
        }
        .write(&mut buf)
        .to_owned()
    }

    pub(crate) fn of(served: &Served, tracestate: Option<&str>) -> TraceContext {
        TraceContext {
            trace_id: served.trace_id,
            span_id: served.span_id,
            parent_span_id: served.parent_span_id,
            sampled: served.flags & SAMPLED != 0,
            tracestate: tracestate.map(str::to_owned),
        }
    }
}

/// A random, non-zero 64-bit id from a per-thread xorshift generator (trace and span ids: unique
/// enough, not secret).
pub(crate) fn new_span_id() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::thread::current().id()) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x.max(1)
    })
}

/// A random, non-zero 128-bit trace id.
pub(crate) fn new_trace_id() -> u128 {
    (new_span_id() as u128) << 64 | new_span_id() as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_spec_example() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(p.flags, SAMPLED);
        let mut buf = [0; LEN];
        assert_eq!(p.write(&mut buf), EXAMPLE);
    }

    /// The table-driven hex parser and writer agree with a plain digit-by-digit reference
    /// over ids with every digit value in every position, and refuse each non-digit byte.
    #[test]
    fn hex_fields_round_trip_and_refuse_every_non_digit() {
        let reference = |s: &str| u128::from_str_radix(s, 16).ok();
        let mut x = 0x0123_4567_89ab_cdefu64;
        for i in 0..2000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = TraceParent {
                trace_id: (x as u128) << 64 | (x.rotate_left(i as u32 % 64) as u128) | 1,
                parent_id: x | 1,
                flags: (i % 256) as u8,
            };
            let mut buf = [0u8; LEN];
            let text = p.write(&mut buf).to_owned();
            assert_eq!(reference(&text[3..35]), Some(p.trace_id), "{text}");
            assert_eq!(
                reference(&text[36..52]),
                Some(p.parent_id as u128),
                "{text}"
            );
            assert_eq!(TraceParent::parse(&text), Some(p), "{text}");
        }
        for byte in 0..=255u8 {
            if byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte) {
                continue;
            }
            for at in [3, 18, 19, 34, 36, 51, 53, 54] {
                let mut b = EXAMPLE.as_bytes().to_vec();
                b[at] = byte;
                if let Ok(s) = std::str::from_utf8(&b) {
                    assert_eq!(TraceParent::parse(s), None, "{s:?}");
                }
            }
        }
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may add fields after a `-`.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(later).is_some());
    }

    #[test]
    fn an_older_peers_trace_id_is_the_low_half() {
        let s = Served::received(None, 0xabcd);
        assert_eq!(s.trace_id, 0xabcd);
        assert_eq!(s.parent_span_id, 0xabcd);
        let fresh = Served::received(None, 0);
        assert_ne!(fresh.trace_id, 0);
        assert_eq!(fresh.parent_span_id, 0);
        let p = TraceParent::parse(EXAMPLE).unwrap();
        let s = Served::received(Some(p), 7);
        assert_eq!((s.trace_id, s.parent_span_id), (p.trace_id, p.parent_id));
    }

    #[test]
    fn a_child_call_keeps_the_trace_with_a_new_span() {
        let served = Served::received(TraceParent::parse(EXAMPLE), 0);
        let call = CallTrace::child(Some((served, Some("k=v".into()))));
        assert_eq!(call.parent.trace_id, served.trace_id);
        assert_eq!(call.parent_span_id, served.span_id);
        assert_ne!(call.parent.parent_id, served.span_id);
        assert_eq!(call.trace_id(), served.trace_id as u64);
        assert_eq!(call.out().unwrap().state, Some("k=v"));
        let mut meta = Metadata::new();
        meta.insert(TRACEPARENT, EXAMPLE);
        let own = call.with_metadata(&meta);
        assert!(own.out().is_none());
        assert_eq!(own.parent, TraceParent::parse(EXAMPLE).unwrap());
    }

    #[test]
    fn traceparent_continues_under_the_calls_span() {
        let ctx = TraceContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0x1122334455667788,
            parent_span_id: 1,
            sampled: true,
            tracestate: None,
        };
        assert_eq!(
            ctx.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1122334455667788-01"
        );
    }
}
