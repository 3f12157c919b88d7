//! MessagePack writers for the protocol's own fields (names, numbers, the headers of arrays and
//! maps), appending straight to a `BytesMut`, and readers of their short forms.
//!
//! They write exactly what `rmp::encode`'s functions of the same names write (the smallest
//! encoding of each value; tests below hold them to it), but each is one capacity check and one
//! copy of a few bytes built on the stack: `rmp` writes through `std::io::Write`, a marker and
//! then its payload as separate writes, which on the request path cost several hundred
//! instructions per call. Values the application gives (arguments, results) still go through
//! serde and `rmp_serde`.

use bytes::BytesMut;

/// Appends a header (a marker and up to 8 bytes) and then `payload`, reserving once.
#[inline]
fn put(buf: &mut BytesMut, header: &[u8], payload: &[u8]) {
    buf.reserve(header.len() + payload.len());
    buf.extend_from_slice(header);
    buf.extend_from_slice(payload);
}

/// A marker followed by `n` as a big-endian number of `width` bytes (1, 2, 4 or 8).
#[inline]
fn marked(buf: &mut BytesMut, marker: u8, n: u64, width: usize, payload: &[u8]) {
    let mut head = [0u8; 9];
    head[0] = marker;
    head[1..=width].copy_from_slice(&n.to_be_bytes()[8 - width..]);
    put(buf, &head[..=width], payload);
}

/// An unsigned integer, in its smallest form (`rmp::encode::write_uint`).
#[inline]
pub(crate) fn put_uint(buf: &mut BytesMut, n: u64) {
    match n {
        0..=0x7f => put(buf, &[n as u8], &[]),
        0x80..=0xff => marked(buf, 0xcc, n, 1, &[]),
        0x100..=0xffff => marked(buf, 0xcd, n, 2, &[]),
        0x1_0000..=0xffff_ffff => marked(buf, 0xce, n, 4, &[]),
        _ => marked(buf, 0xcf, n, 8, &[]),
    }
}

/// The header of a string of `len` bytes (`rmp::encode::write_str_len`), then `bytes`.
#[inline]
fn put_str_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len() as u64;
    match len {
        0..=31 => put(buf, &[0xa0 | len as u8], bytes),
        32..=0xff => marked(buf, 0xd9, len, 1, bytes),
        0x100..=0xffff => marked(buf, 0xda, len, 2, bytes),
        _ => marked(buf, 0xdb, len, 4, bytes),
    }
}

/// A string (`rmp::encode::write_str`). Longer than `u32::MAX` bytes is never sent (frames
/// are far smaller); its length would be cut as `rmp`'s is.
#[inline]
pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_str_bytes(buf, s.as_bytes());
}

/// A string already known to be ASCII (formatted here), written without a UTF-8 pass.
#[inline]
pub(crate) fn put_ascii(buf: &mut BytesMut, ascii: &[u8]) {
    debug_assert!(ascii.is_ascii());
    put_str_bytes(buf, ascii);
}

/// A container header for `n` entries: one byte (`fix | n`) up to 15, else a marker and a 16- or
/// 32-bit count.
#[inline]
fn put_count(buf: &mut BytesMut, n: u32, (fix, m16, m32): (u8, u8, u8)) {
    match n {
        0..=15 => put(buf, &[fix | n as u8], &[]),
        16..=0xffff => marked(buf, m16, u64::from(n), 2, &[]),
        _ => marked(buf, m32, u64::from(n), 4, &[]),
    }
}

/// An array header for `n` elements (`rmp::encode::write_array_len`).
#[inline]
pub(crate) fn put_array_len(buf: &mut BytesMut, n: u32) {
    put_count(buf, n, (0x90, 0xdc, 0xdd));
}

/// A map header for `n` pairs (`rmp::encode::write_map_len`).
#[inline]
pub(crate) fn put_map_len(buf: &mut BytesMut, n: u32) {
    put_count(buf, n, (0x80, 0xde, 0xdf));
}

/// The one-byte form of a value (markers `lo..=hi`, its value their offset from `lo`), taken
/// off the front of `rd`; `None` (nothing taken) for any other form.
#[inline]
fn short_form(rd: &mut &[u8], lo: u8, hi: u8) -> Option<u8> {
    let &marker = rd.first()?;
    if !(lo..=hi).contains(&marker) {
        return None;
    }
    *rd = &rd[1..];
    Some(marker - lo)
}

/// Reads the length of a string (`rmp::decode::read_str_len`): the one-byte form here, the
/// others (rare in the protocol's fields) by `rmp`. So are the readers below.
#[inline]
pub(crate) fn read_str_len(rd: &mut &[u8]) -> Result<u32, rmp::decode::ValueReadError> {
    short_form(rd, 0xa0, 0xbf).map_or_else(|| rmp::decode::read_str_len(rd), |n| Ok(n.into()))
}

/// Reads an unsigned integer (`rmp::decode::read_int::<u64, _>`, its conversions and errors).
#[inline]
pub(crate) fn read_u64(rd: &mut &[u8]) -> Result<u64, rmp::decode::NumValueReadError> {
    short_form(rd, 0x00, 0x7f).map_or_else(|| rmp::decode::read_int(rd), |n| Ok(n.into()))
}

/// Reads an array header (`rmp::decode::read_array_len`).
#[inline]
pub(crate) fn read_array_len(rd: &mut &[u8]) -> Result<u32, rmp::decode::ValueReadError> {
    short_form(rd, 0x90, 0x9f).map_or_else(|| rmp::decode::read_array_len(rd), |n| Ok(n.into()))
}

/// Reads a map header (`rmp::decode::read_map_len`).
#[inline]
pub(crate) fn read_map_len(rd: &mut &[u8]) -> Result<u32, rmp::decode::ValueReadError> {
    short_form(rd, 0x80, 0x8f).map_or_else(|| rmp::decode::read_map_len(rd), |n| Ok(n.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every writer against `rmp`'s, at and around each boundary between encodings.
    #[test]
    fn writes_what_rmp_writes() {
        let numbers: Vec<u64> = [
            0u64,
            1,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX - 1,
            u64::MAX,
        ]
        .into();
        for &n in &numbers {
            let mut ours = BytesMut::new();
            put_uint(&mut ours, n);
            let mut theirs = Vec::new();
            rmp::encode::write_uint(&mut theirs, n).unwrap();
            assert_eq!(&ours[..], &theirs[..], "uint {n}");
        }
        for len in [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
            let s = "x".repeat(len);
            let mut ours = BytesMut::new();
            put_str(&mut ours, &s);
            let mut theirs = Vec::new();
            rmp::encode::write_str(&mut theirs, &s).unwrap();
            assert_eq!(&ours[..], &theirs[..], "str of {len}");
            let mut ascii = BytesMut::new();
            put_ascii(&mut ascii, s.as_bytes());
            assert_eq!(&ascii[..], &theirs[..], "ascii of {len}");
        }
        for n in [0u32, 1, 15, 16, 0xffff, 0x1_0000, u32::MAX] {
            let (mut ours, mut theirs) = (BytesMut::new(), Vec::new());
            put_array_len(&mut ours, n);
            rmp::encode::write_array_len(&mut theirs, n).unwrap();
            assert_eq!(&ours[..], &theirs[..], "array of {n}");
            let (mut ours, mut theirs) = (BytesMut::new(), Vec::new());
            put_map_len(&mut ours, n);
            rmp::encode::write_map_len(&mut theirs, n).unwrap();
            assert_eq!(&ours[..], &theirs[..], "map of {n}");
        }
        // And read back as `rmp` reads them (the short forms here, the rest through it).
        for &n in &numbers {
            let mut b = Vec::new();
            rmp::encode::write_uint(&mut b, n).unwrap();
            let mut rd = &b[..];
            assert_eq!(read_u64(&mut rd).unwrap(), n);
            assert!(rd.is_empty());
        }
        let mut b = Vec::new();
        rmp::encode::write_sint(&mut b, -1).unwrap();
        assert!(read_u64(&mut &b[..]).is_err(), "negative");
        for n in [0u32, 15, 16, 40_000] {
            let mut b = Vec::new();
            rmp::encode::write_array_len(&mut b, n).unwrap();
            rmp::encode::write_str_len(&mut b, n).unwrap();
            rmp::encode::write_map_len(&mut b, n).unwrap();
            let mut rd = &b[..];
            assert_eq!(read_array_len(&mut rd).unwrap(), n);
            assert_eq!(read_str_len(&mut rd).unwrap(), n);
            assert_eq!(read_map_len(&mut rd).unwrap(), n);
            assert!(rd.is_empty());
        }
        assert!(read_str_len(&mut &[0x91][..]).is_err());
        assert!(read_array_len(&mut &[0xa1][..]).is_err());
        assert!(read_u64(&mut &[][..]).is_err());
        // Multi-byte characters count in bytes.
        let (mut ours, mut theirs) = (BytesMut::new(), Vec::new());
        put_str(&mut ours, "größe…");
        rmp::encode::write_str(&mut theirs, "größe…").unwrap();
        assert_eq!(&ours[..], &theirs[..]);
    }
}
