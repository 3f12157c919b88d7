//! `Error` and `GoAway` bodies (`protocol::message::parse_error`): `[code, message]`, with
//! codes this side may not know and elements it may not expect.
//!
//! Input: the body. Checks: a body that is not `[code, message]` is a `Protocol` error; a
//! parsed error written back with `put_error` parses to the same kind and (cut to
//! `MAX_ERROR_MESSAGE` bytes) message.

use bytes::BytesMut;
use stardust::ErrorKind;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, MAX_ERROR_MESSAGE};

/// Runs one input.
pub fn run(data: &[u8]) {
    let err = message::parse_error(data);
    let well_formed = rmp::decode::read_array_len(&mut &data[..]).is_ok_and(|n| n >= 2);
    if !well_formed {
        assert_eq!(err.kind(), ErrorKind::Protocol);
    }
    for kind in [Kind::Error, Kind::GoAway] {
        let mut buf = BytesMut::new();
        message::put_error(&mut buf, kind, 7, &err);
        let h = frame::parse_header(&buf, frame::MIN_MAX_FRAME)
            .expect("an error frame fits the smallest limit")
            .expect("a whole frame");
        assert_eq!((h.kind, h.id, h.frame_len()), (kind as u8, 7, buf.len()));
        let back = message::parse_error(&buf[frame::HEADER_LEN..]);
        assert_eq!(back.kind(), err.kind());
        if err.message().len() <= MAX_ERROR_MESSAGE {
            assert_eq!(back.message(), err.message());
        } else {
            assert!(back.message().len() <= MAX_ERROR_MESSAGE);
            assert!(back.message().ends_with('…'));
            let kept = back.message().trim_end_matches('…');
            assert!(err.message().starts_with(kept));
        }
    }
}
