//! What a client reads from a server it dialled (`client/connection.rs`: `read_ack`, then the
//! read loop): the handshake answer, `HelloAck` or `GoAway` with the reason for refusing, then
//! responses, errors, notifications, pings and `GoAway`s, over the same frame reader.
//!
//! The client's loops are private to a file this target must not change, so their decisions
//! are repeated here; keep them in step.
//!
//! Input: `[chunking, stream...]`. Checks: nothing panics, and a malformed refusal is reported
//! as a `Protocol` error. After `GoAway(ShuttingDown)` the client keeps reading (graceful
//! drain), after any other it stops.

use stardust::__fuzz::FrameStream;
use stardust::ErrorKind;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, HelloAck};

use super::roundtrip::chunking;

/// Runs one input.
pub fn run(data: &[u8]) {
    let [chunks, stream @ ..] = data else {
        return;
    };
    let mut reader = FrameStream::new(stream, &chunking(*chunks), frame::DEFAULT_MAX_FRAME);
    let mut handshaken = false;
    loop {
        let h = match reader.next_frame() {
            Ok(Some(h)) => h,
            Ok(None) => match reader.fill() {
                Ok(true) => continue,
                Ok(false) | Err(_) => return,
            },
            Err(_) => return,
        };
        let kind = Kind::from_u8(h.kind);
        if !handshaken {
            match kind {
                Some(Kind::HelloAck) => {
                    if rmp_serde::from_slice::<HelloAck>(reader.body(&h)).is_err() {
                        return;
                    }
                    handshaken = true;
                }
                Some(Kind::GoAway) => {
                    // The refusal's reason becomes the connect error.
                    let refusal = message::parse_error(reader.body(&h));
                    if !is_pair(reader.body(&h)) {
                        assert_eq!(refusal.kind(), ErrorKind::Protocol);
                    }
                    return;
                }
                _ => return,
            }
            reader.consume(&h);
            continue;
        }
        match kind {
            Some(Kind::Response) => drop(reader.take_body(&h)),
            Some(Kind::Error) => {
                let _ = message::parse_error(reader.body(&h));
                reader.consume(&h);
            }
            Some(Kind::Notify) => {
                let body = reader.take_body(&h);
                if let Ok((_, payload)) = message::parse_notify(&body) {
                    // The notification keeps the payload as a slice of the body: exactly the
                    // second element, even with elements after it (the client once took the
                    // body's tail instead; this target found it).
                    let start = payload.as_ptr() as usize - body.as_ptr() as usize;
                    assert_eq!(&body.slice(start..start + payload.len())[..], payload);
                }
            }
            Some(Kind::Ping) | Some(Kind::Pong) => reader.consume(&h),
            // Streaming calls: an item, credit (a malformed grant closes the connection), or
            // the server's request to stop sending input.
            Some(Kind::Item) => drop(reader.take_body(&h)),
            Some(Kind::Credit) => {
                if stardust::__wire::stream::parse_credit(reader.body(&h)).is_err() {
                    return;
                }
                reader.consume(&h);
            }
            Some(Kind::Cancel) => reader.consume(&h),
            Some(Kind::GoAway) => {
                let reason = message::parse_error(reader.body(&h));
                reader.consume(&h);
                if reason.kind() != ErrorKind::ShuttingDown {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Whether `body` starts with an array of at least two elements, as `[code, message]` does.
fn is_pair(body: &[u8]) -> bool {
    rmp::decode::read_array_len(&mut &body[..]).is_ok_and(|n| n >= 2)
}
