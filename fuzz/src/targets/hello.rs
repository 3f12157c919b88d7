//! The server's handshake read (`server/connection.rs`, `read_hello`): the first frame of a
//! connection, which anyone can send before authenticating, decoded with `rmp_serde` into
//! `protocol::message::Hello` (connection metadata included), then checked.
//!
//! `read_hello` itself is private to a file this target must not change, so its steps are
//! repeated here over the same frame reader and the same decoder; keep them in step.
//!
//! Input: `[chunking, stream...]`. Checks: an accepted Hello names the protocol and a
//! supported version, survives re-encoding unchanged, and its token (if any) can be looked at
//! (`auth::token::peek`) without a panic. A frame after the Hello is read as what a server
//! reads next when it challenges (a `Proof`, from a peer that may have presented no token), and
//! as the `Challenge` a client reads.

use bytes::BytesMut;
use stardust::__fuzz::FrameStream;
use stardust::auth::token;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello, PROTOCOL_NAME};
use stardust::{Error, ErrorKind};

use super::roundtrip::chunking;

/// Runs one input.
pub fn run(data: &[u8]) {
    let [chunks, stream @ ..] = data else {
        return;
    };
    let mut reader = FrameStream::new(stream, &chunking(*chunks), frame::DEFAULT_MAX_FRAME);
    let Ok(mut hello) = read_hello(&mut reader) else {
        return;
    };
    assert_eq!(hello.protocol, PROTOCOL_NAME);
    assert!(hello.version >= 1);
    check_reencodes(&hello);
    // What the server does next: take the token out of the metadata and verify it.
    if let Some(t) = hello.meta.remove("token") {
        let _ = token::peek(&t);
    }
    // The answer to a challenge: a Proof, bounded before anything is kept.
    if let Ok(Some(h)) = next_whole_frame(&mut reader) {
        let body = reader.body(&h);
        if let Ok(proof) = message::parse_proof(body) {
            assert!(proof.target.len() <= 64, "an over-long target was kept");
        }
        let _ = message::parse_challenge(body);
    }
}

/// The next whole frame, reading as needed.
fn next_whole_frame(reader: &mut FrameStream) -> Result<Option<frame::Header>, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => return Ok(Some(h)),
            Ok(None) => {
                if !reader.fill()? {
                    return Ok(None);
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// `read_hello`'s steps: the first whole frame must be a Hello whose body decodes.
fn read_hello(reader: &mut FrameStream) -> Result<Hello, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                if h.kind != Kind::Hello as u8 {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "expected a Hello frame first",
                    ));
                }
                let hello: Hello = rmp_serde::from_slice(reader.body(&h)).map_err(|e| {
                    Error::new(ErrorKind::Protocol, format!("malformed Hello frame: {e}"))
                })?;
                reader.consume(&h);
                if hello.protocol != PROTOCOL_NAME || hello.version < 1 {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "unknown protocol or version",
                    ));
                }
                return Ok(hello);
            }
            Ok(None) => {
                if !reader.fill()? {
                    return Err(Error::new(
                        ErrorKind::Protocol,
                        "closed before the handshake",
                    ));
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// The Hello a client would send with these fields decodes to the same fields.
fn check_reencodes(hello: &Hello) {
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, Kind::Hello, hello).expect("a decoded Hello encodes");
    let back: Hello = rmp_serde::from_slice(&buf[frame::HEADER_LEN..]).expect("decodes again");
    assert_eq!(
        (&back.protocol, back.version, &back.agent, back.max_frame),
        (
            &hello.protocol,
            hello.version,
            &hello.agent,
            hello.max_frame
        )
    );
    assert_eq!(back.meta, hello.meta);
}
