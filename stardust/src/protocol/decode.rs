//! Low-level decoding shared by the frame bodies: metadata under a receiver's limits, and
//! stepping over a MessagePack value without decoding it.
//!
//! Both read what a peer chose to send, before (`Hello`) or without (each request) anything
//! trusting it, so both do work linear in the bytes received and stop at the first limit.
//!
//! Skipping is used where the protocol lets a peer append elements we do not know (a request's elements
//! after `args`, a notification's after the payload, unknown `Hello` keys): we only need to know
//! where the value ends. The walk is a loop, not recursion, so nesting depth costs nothing, and
//! every step consumes at least one byte, so the work is linear in the bytes received, whatever
//! lengths the headers claim (a header announcing four billion elements just runs out of input).

use crate::error::Error;
use crate::metadata::{Metadata, MetadataLimits, SCAN_UP_TO};
use crate::trace_context::{TRACEPARENT, TraceParent};

/// Reads a metadata map (str → str), checking `limits` as it goes: the announced entry count
/// before anything is read, each key and value as it is read. `what` names the map in errors
/// ("call metadata", "connection metadata").
pub(crate) fn read_meta(
    rd: &mut &[u8],
    limits: &MetadataLimits,
    what: &str,
) -> Result<Metadata, Error> {
    let malformed = |e: &dyn std::fmt::Display| Error::protocol(format!("malformed {what}: {e}"));
    let pairs = super::pack::read_map_len(rd).map_err(|e| malformed(&e))? as usize;
    limits.check_count(pairs, what)?;
    let mut total = 0;
    let mut next = |rd: &mut &[u8]| -> Result<(String, String), Error> {
        let (k, rest) = rmp::decode::read_str_from_slice(*rd).map_err(|e| malformed(&e))?;
        let (v, rest) = rmp::decode::read_str_from_slice(rest).map_err(|e| malformed(&e))?;
        *rd = rest;
        limits.check_entry(k, v, &mut total, what)?;
        Ok((k.to_owned(), v.to_owned()))
    };
    if pairs <= SCAN_UP_TO {
        // The usual case (a trace context, a tag or two): straight into place.
        let mut meta = Metadata::with_capacity(pairs);
        for _ in 0..pairs {
            let (k, v) = next(rd)?;
            meta.insert(k, v);
        }
        return Ok(meta);
    }
    let mut entries = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        entries.push(next(rd)?);
    }
    Ok(Metadata::from_received(entries))
}

/// Reads a request's call metadata, taking a valid `traceparent` out of it (parsed: no
/// allocation for it) and dropping a malformed one (the call then starts a new trace).
pub(crate) fn read_call_meta(
    rd: &mut &[u8],
    limits: &MetadataLimits,
) -> Result<(Metadata, Option<TraceParent>), Error> {
    let what = "call metadata";
    let malformed = |e: &dyn std::fmt::Display| Error::protocol(format!("malformed {what}: {e}"));
    let pairs = super::pack::read_map_len(rd).map_err(|e| malformed(&e))? as usize;
    limits.check_count(pairs, what)?;
    let mut total = 0;
    let mut trace = None;
    // Up to `SCAN_UP_TO` entries go straight into place; more are de-duplicated in one pass.
    let mut meta = Metadata::new();
    let mut entries: Vec<(String, String)> = Vec::new();
    for i in 0..pairs {
        // Strings as bytes first: the `traceparent` every request carries is parsed straight
        // from them (a valid one is ASCII), without a separate UTF-8 pass.
        let (k, rest) = raw_str(rd).map_err(|e| malformed(&e))?;
        let (v, rest) = raw_str(rest).map_err(|e| malformed(&e))?;
        *rd = rest;
        if k == TRACEPARENT.as_bytes() {
            limits.check_sizes(TRACEPARENT, v.len(), &mut total, what)?;
            // A repeated key keeps its last value, as for any key; a malformed one is dropped
            // (but text that is not UTF-8 is malformed metadata, as for any key).
            trace = TraceParent::parse_bytes(v);
            if trace.is_none() {
                std::str::from_utf8(v).map_err(|e| malformed(&e))?;
            }
            continue;
        }
        let k = std::str::from_utf8(k).map_err(|e| malformed(&e))?;
        let v = std::str::from_utf8(v).map_err(|e| malformed(&e))?;
        limits.check_entry(k, v, &mut total, what)?;
        let (k, v) = (k.to_owned(), v.to_owned());
        if pairs <= SCAN_UP_TO {
            if meta.is_empty() {
                // Room for the rest at once; none at all for the usual lone `traceparent`.
                meta = Metadata::with_capacity(pairs - i);
            }
            meta.insert(k, v);
        } else {
            if entries.capacity() == 0 {
                entries.reserve_exact(pairs - i);
            }
            entries.push((k, v));
        }
    }
    if pairs > SCAN_UP_TO {
        meta = Metadata::from_received(entries);
    }
    Ok((meta, trace))
}

/// A MessagePack string's bytes (not checked to be UTF-8) and what follows it.
fn raw_str(buf: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let mut rd = buf;
    let len = super::pack::read_str_len(&mut rd).map_err(|e| e.to_string())? as usize;
    if rd.len() < len {
        return Err(format!(
            "a string of {len} bytes with {} bytes left",
            rd.len()
        ));
    }
    Ok(rd.split_at(len))
}

/// Why a value could not be stepped over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipError {
    /// The input ended inside the value.
    Truncated,
    /// The reserved marker byte `0xc1`.
    InvalidMarker,
}

impl std::fmt::Display for SkipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipError::Truncated => "the value is truncated",
            SkipError::InvalidMarker => "the reserved marker 0xc1 is not a value",
        })
    }
}

/// Advances `rd` past one complete MessagePack value (with everything nested in it).
pub fn skip_value(rd: &mut &[u8]) -> Result<(), SkipError> {
    // Values still to step over: one, plus the elements of every container header met so far.
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let (&marker, rest) = rd.split_first().ok_or(SkipError::Truncated)?;
        *rd = rest;
        let (bytes, elements) = match marker {
            // positive/negative fixint, nil, false, true
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return Err(SkipError::InvalidMarker),
            // bin 8/16/32, str 8/16/32
            0xc4 | 0xd9 => (read_len(rd, 1)?, 0),
            0xc5 | 0xda => (read_len(rd, 2)?, 0),
            0xc6 | 0xdb => (read_len(rd, 4)?, 0),
            // ext 8/16/32: the length, then a type byte
            0xc7 => (read_len(rd, 1)? + 1, 0),
            0xc8 => (read_len(rd, 2)? + 1, 0),
            0xc9 => (read_len(rd, 4)?.saturating_add(1), 0),
            // float 32/64, uint 8..64, int 8..64
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            // fixext 1/2/4/8/16: a type byte and the data
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            // array 16/32, map 16/32
            0xdc => (0, read_len(rd, 2)? as u64),
            0xdd => (0, read_len(rd, 4)? as u64),
            0xde => (0, 2 * read_len(rd, 2)? as u64),
            0xdf => (0, 2 * read_len(rd, 4)? as u64),
        };
        if bytes > rd.len() {
            return Err(SkipError::Truncated);
        }
        *rd = &rd[bytes..];
        // At most 2^33 per header and one header per byte: no overflow for any real input.
        pending = pending.saturating_add(elements);
    }
    Ok(())
}

/// A big-endian length of `width` bytes.
fn read_len(rd: &mut &[u8], width: usize) -> Result<usize, SkipError> {
    if rd.len() < width {
        return Err(SkipError::Truncated);
    }
    let (head, rest) = rd.split_at(width);
    *rd = rest;
    Ok(head.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped(bytes: &[u8]) -> Result<usize, SkipError> {
        let mut rd = bytes;
        skip_value(&mut rd)?;
        Ok(bytes.len() - rd.len())
    }

    /// Call metadata as a peer sends it: a valid `traceparent` is taken out, a malformed one
    /// dropped, one that is not UTF-8 refused like any such text; other keys stay.
    #[test]
    fn call_metadata_takes_out_the_traceparent() {
        let limits = MetadataLimits::DEFAULT;
        let encode = |pairs: &[(&[u8], &[u8])]| {
            let mut out = Vec::new();
            rmp::encode::write_map_len(&mut out, pairs.len() as u32).unwrap();
            for (k, v) in pairs {
                rmp::encode::write_str_len(&mut out, k.len() as u32).unwrap();
                out.extend_from_slice(k);
                rmp::encode::write_str_len(&mut out, v.len() as u32).unwrap();
                out.extend_from_slice(v);
            }
            out
        };
        let valid = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = encode(&[(b"traceparent", valid), (b"k", b"v")]);
        let (meta, trace) = read_call_meta(&mut body.as_slice(), &limits).unwrap();
        assert_eq!(trace.unwrap().trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!((meta.len(), meta.get("k")), (1, Some("v")));

        let body = encode(&[(b"traceparent", b"00-not-a-trace")]);
        let (meta, trace) = read_call_meta(&mut body.as_slice(), &limits).unwrap();
        assert_eq!((meta.len(), trace), (0, None));

        for bad in [
            encode(&[(b"traceparent", b"\xff\xfe")]),
            encode(&[(b"k\xff", b"v")]),
            encode(&[(b"k", b"v\xc3")]),
        ] {
            let e = read_call_meta(&mut bad.as_slice(), &limits).unwrap_err();
            assert!(e.message().contains("malformed call metadata"), "{e}");
        }
        // A string announcing more bytes than there are.
        let mut short = encode(&[(b"k", b"value")]);
        short.truncate(short.len() - 2);
        let e = read_call_meta(&mut short.as_slice(), &limits).unwrap_err();
        assert!(e.message().contains("malformed call metadata"), "{e}");
    }

    #[test]
    fn steps_over_each_kind_of_value() {
        let value = (
            1u8,
            -5i64,
            u64::MAX,
            1.5f64,
            "text",
            serde_bytes::ByteBuf::from(vec![1, 2, 3]),
            vec![Some(1u32), None],
            std::collections::BTreeMap::from([("k", vec![true, false])]),
            "x".repeat(300),
        );
        let mut bytes = rmp_serde::to_vec(&value).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&[0xa1, b'z']); // what follows the value is left alone
        assert_eq!(skipped(&bytes), Ok(len));
        // fixext 1 and ext 8
        assert_eq!(skipped(&[0xd4, 0x01, 0xff, 0x00]), Ok(3));
        assert_eq!(skipped(&[0xc7, 0x02, 0x05, 0xaa, 0xbb, 0x00]), Ok(5));
    }

    #[test]
    fn truncated_and_invalid_input_is_an_error_not_a_panic() {
        assert_eq!(skipped(&[]), Err(SkipError::Truncated));
        assert_eq!(skipped(&[0xc1]), Err(SkipError::InvalidMarker));
        assert_eq!(skipped(&[0xdb, 0xff, 0xff]), Err(SkipError::Truncated));
        assert_eq!(
            skipped(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(SkipError::Truncated)
        );
        // Claims four billion elements, holds two: runs out after two steps.
        assert_eq!(
            skipped(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02]),
            Err(SkipError::Truncated)
        );
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        // A million nested one-element arrays around a nil: a recursive walker would overflow.
        let mut bytes = vec![0x91u8; 1_000_000];
        bytes.push(0xc0);
        assert_eq!(skipped(&bytes), Ok(bytes.len()));
    }
}
