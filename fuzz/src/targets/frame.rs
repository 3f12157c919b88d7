//! The frame reader and header parser (`protocol/frame.rs`, `transport/reader.rs`): any byte
//! stream, delivered in reads of any size, under any frame limit.
//!
//! Input: `[selector, chunking, stream...]`. The low two bits of the selector pick the frame
//! limit; `chunking` picks the read sizes.
//!
//! Checks: the reader hands out exactly the frames that were sent, in order, each body being
//! the bytes after its header; it reports a clean end only between frames; every refusal is
//! the header parser's verdict on the same bytes, with a typed error.

use bytes::BytesMut;
use stardust::__fuzz::FrameStream;
use stardust::ErrorKind;
use stardust::__wire::frame::{self, HEADER_LEN, Kind, LENGTH_COVERED};

use super::roundtrip::chunking;

/// Frame limits a server may run with: the smallest a peer may announce, a small one, the
/// default (twice: the common case).
const LIMITS: [u32; 4] = [
    frame::MIN_MAX_FRAME,
    64 * 1024,
    frame::DEFAULT_MAX_FRAME,
    frame::DEFAULT_MAX_FRAME,
];

/// Runs one input.
pub fn run(data: &[u8]) {
    let [selector, chunks, stream @ ..] = data else {
        return;
    };
    let max_frame = LIMITS[usize::from(selector & 3)];
    check_header(stream, max_frame);
    read_all(stream, &chunking(*chunks), max_frame);
}

/// The header parser on the start of `stream`, against the layout of PROTOCOL.md §2.
fn check_header(stream: &[u8], max_frame: u32) {
    let parsed = frame::parse_header(stream, max_frame);
    if stream.len() < HEADER_LEN {
        assert_eq!(parsed.unwrap(), None, "a partial header is not a frame yet");
        return;
    }
    let length = u32::from_be_bytes(stream[..4].try_into().unwrap());
    match parsed {
        Ok(Some(h)) => {
            assert!((LENGTH_COVERED..=max_frame).contains(&length));
            assert_eq!(h.body_len + LENGTH_COVERED as usize, length as usize);
            assert_eq!((h.kind, h.flags), (stream[4], stream[5]));
            assert_eq!(h.id, u64::from_be_bytes(stream[6..14].try_into().unwrap()));
            // The writer's side produces the same header for the same frame.
            if let Some(kind) = Kind::from_u8(h.kind)
                && h.body_len <= 64 * 1024
            {
                let mut buf = BytesMut::new();
                let start = frame::begin(&mut buf, kind, h.flags, h.id);
                buf.resize(buf.len() + h.body_len, 0);
                frame::finish(&mut buf, start, max_frame).expect("within the limit");
                assert_eq!(&buf[..HEADER_LEN], &stream[..HEADER_LEN]);
            }
        }
        Ok(None) => panic!("a whole header was not parsed"),
        Err(e) if length < LENGTH_COVERED => assert_eq!(e.kind(), ErrorKind::Protocol),
        Err(e) => {
            assert!(length > max_frame, "refused a length within the limit: {e}");
            assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        }
    }
}

/// Reads `stream` to its end the way a connection's read loop does.
fn read_all(stream: &[u8], chunks: &[usize], max_frame: u32) {
    let mut reader = FrameStream::new(stream, chunks, max_frame);
    // Where the next frame starts in `stream`.
    let mut at = 0;
    let mut take = false;
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                let rest = &stream[at..];
                assert_eq!(
                    frame::parse_header(rest, max_frame).unwrap(),
                    Some(h),
                    "the reader's header is not the one at offset {at}"
                );
                let body = &rest[HEADER_LEN..h.frame_len()];
                // Both ways a read loop takes a frame: borrowing its body, or splitting it off.
                if take {
                    assert_eq!(&reader.take_body(&h)[..], body);
                } else {
                    assert_eq!(reader.body(&h), body);
                    reader.consume(&h);
                }
                take = !take;
                at += h.frame_len();
            }
            Ok(None) => match reader.fill() {
                Ok(true) => {}
                Ok(false) => {
                    assert_eq!(at, stream.len(), "clean end reported inside a frame");
                    return;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::ConnectionClosed, "{e}");
                    assert!(
                        at < stream.len(),
                        "end inside a frame reported after the last"
                    );
                    return;
                }
            },
            Err((h, e)) => {
                let rest = &stream[at..];
                assert!(
                    matches!(e.kind(), ErrorKind::Protocol | ErrorKind::FrameTooLarge),
                    "{e}"
                );
                assert!(frame::parse_header(rest, max_frame).is_err());
                // Kind and id still reported, so a Request can get a typed answer.
                if let Some(h) = h {
                    assert_eq!((h.kind, h.flags), (rest[4], rest[5]));
                    assert_eq!(h.id, u64::from_be_bytes(rest[6..14].try_into().unwrap()));
                }
                return;
            }
        }
    }
}
