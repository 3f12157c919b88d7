//! The pre-authentication side of a connection: reading the `Hello`, and refusing a handshake
//! or a connection the server has no room for.
//!
//! Everything here runs before the peer has proved anything, so each step is bounded: the
//! `Hello` by its own small frame limit and the metadata limits, a refusal's lingering read by
//! time and bytes.

use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::error::Error;
use crate::metadata::MetadataLimits;
use crate::protocol::frame::Kind;
use crate::protocol::message::{self, Hello, PROTOCOL_NAME, PROTOCOL_VERSION};
use crate::tls::ServerTls;
use crate::transport::{FrameReader, Stream, WriteHalf};

pub(super) async fn read_hello(
    reader: &mut FrameReader,
    limits: &MetadataLimits,
) -> Result<Hello, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                if h.kind != Kind::Hello as u8 {
                    return Err(Error::protocol(format!(
                        "expected a Hello frame (kind 1) first, got kind {}",
                        h.kind
                    )));
                }
                let hello = message::parse_hello(reader.body(&h), limits)?;
                reader.consume(&h);
                if hello.protocol != PROTOCOL_NAME {
                    return Err(Error::protocol(format!(
                        "unknown protocol `{}` in Hello (expected `{PROTOCOL_NAME}`)",
                        hello.protocol
                    )));
                }
                if hello.version < 1 {
                    return Err(Error::protocol(format!(
                        "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                        hello.version
                    )));
                }
                return Ok(hello);
            }
            Ok(None) => {
                if !reader.fill().await? {
                    return Err(Error::connection_closed("closed before the handshake"));
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// Sends a final `GoAway` frame explaining why, then closes (used before the writer exists).
pub(super) async fn goaway_and_close(wr: &mut WriteHalf, err: &Error) {
    let mut buf = BytesMut::new();
    message::put_error(&mut buf, Kind::GoAway, 0, err);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = wr.write_all(&buf).await;
        wr.shutdown().await;
    })
    .await;
}

/// Refuses a handshake: the `GoAway` explaining why, then a lingering close. Frames the client
/// pipelined after its `Hello` are read and dropped (never run) until it closes its side, so the
/// kernel does not answer them with a reset that could destroy the `GoAway` before the client
/// reads it. The draining is bounded in time and in bytes: a refused peer that keeps sending
/// gets no more of the server's reading than a well-behaved client's few pipelined requests.
pub(super) async fn refuse(wr: &mut WriteHalf, reader: &mut FrameReader, err: &Error) {
    const DRAIN_BYTES: usize = 256 * 1024;
    goaway_and_close(wr, err).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut drained = 0;
        loop {
            loop {
                match reader.next_frame() {
                    Ok(Some(h)) => {
                        drained += h.frame_len();
                        reader.consume(&h);
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            if drained > DRAIN_BYTES {
                return;
            }
            match reader.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
    })
    .await;
}

/// Turns away a connection the server has no room for (connection cap), with a reason.
///
/// Over TLS the refusal needs a handshake first, bounded tightly: a server this busy does not
/// wait on slow handshakes.
pub(crate) async fn turn_away(
    stream: TcpStream,
    tls: Option<ServerTls>,
    max_frame: u32,
    err: Error,
) {
    let stream = match tls {
        None => Stream::Tcp(stream),
        Some(tls) => match tokio::time::timeout(Duration::from_secs(1), tls.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            _ => return,
        },
    };
    let (rd, mut wr) = stream.split();
    let mut reader = FrameReader::new(rd, max_frame);
    refuse(&mut wr, &mut reader, &err).await;
}
