//! The pre-authentication side of a connection: reading the `Hello`, verifying its token and
//! the client's proof of possession, and refusing a handshake or a connection the server has
//! no room for.
//!
//! Everything here runs before the peer has proved anything, so each step is bounded: the
//! `Hello` and `Proof` by their own small frame limit and the metadata limits, the whole
//! exchange by the handshake timeout, a refusal's lingering read by time and bytes. A peer
//! without a valid signed token costs at most one signature check; one with a token, at most
//! one more (its proof).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ServerShared;
use crate::auth::{Identity, TOKEN_KEY, proof};
use crate::error::{Error, ErrorKind};
use crate::metadata::MetadataLimits;
use crate::protocol::frame::{self, Kind};
use crate::protocol::message::{self, Features, Hello, PROTOCOL_NAME, PROTOCOL_VERSION};
use crate::tls::ServerTls;
use crate::transport::{FrameReader, Stream, WriteHalf};

/// What a client proved in its handshake.
pub(super) struct Admitted {
    /// Its `Hello`, without the token and the announced key.
    pub(super) hello: Hello,
    /// Who it is (`None`: anonymous).
    pub(super) identity: Option<Identity>,
    /// The public key it proved it holds, if it proved one.
    pub(super) proven: Option<[u8; 32]>,
}

/// The handshake up to the `HelloAck`: reads the `Hello`, verifies its token and, when there is
/// a key to prove, challenges the client for its proof. On any failure (or when `deadline`
/// passes) the client gets a `GoAway` saying why and `None` is returned.
pub(super) async fn handshake(
    shared: &ServerShared,
    reader: &mut FrameReader,
    wr: &mut WriteHalf,
    peer: SocketAddr,
    local: SocketAddr,
    deadline: Instant,
) -> Option<Admitted> {
    let limits = &shared.config.metadata_limits;
    let mut hello = match tokio::time::timeout_at(deadline, read_hello(reader, limits)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            goaway_and_close(wr, &e).await;
            return None;
        }
        Err(_) => {
            let e = Error::protocol("no handshake received in time");
            tracing::debug!(%peer, "handshake timed out");
            goaway_and_close(wr, &e).await;
            return None;
        }
    };
    // The token never goes further than this: handlers see the identity it proves, not the
    // token, and connection metadata holds no secret.
    let token = hello.meta.remove(TOKEN_KEY);
    let announced = hello.meta.remove(proof::PROOF_KEY_META);
    let features = Features::from(std::mem::take(&mut hello.features));
    let verified = tokio::time::timeout_at(
        deadline,
        authenticate(
            shared,
            reader,
            wr,
            &features,
            token.as_deref(),
            announced,
            local,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Unauthorized,
            "verifying the access token (and its proof of possession) took longer than the \
             handshake timeout",
        ))
    });
    hello.features = features.names().to_vec();
    match verified {
        Ok((identity, proven)) => {
            if let Some(identity) = &identity {
                tracing::debug!(%peer, app = identity.app(), bound = proven.is_some(), "client authenticated");
            }
            Some(Admitted {
                hello,
                identity,
                proven,
            })
        }
        Err(e) => {
            tracing::debug!(%peer, reason = %e, "handshake refused");
            refuse(wr, reader, &e).await;
            None
        }
    }
}

/// Verifies the token and the proof of possession the handshake needs (see
/// [`ServerAuth::key_to_prove`](crate::auth::ServerAuth)): the identity and the proven key.
async fn authenticate(
    shared: &ServerShared,
    reader: &mut FrameReader,
    wr: &mut WriteHalf,
    features: &Features,
    token: Option<&str>,
    announced: Option<String>,
    local: SocketAddr,
) -> Result<(Option<Identity>, Option<[u8; 32]>), Error> {
    let identity = shared.auth.admit(token).await?;
    let speaks_proof = features.has(proof::FEATURE_PROOF);
    // A key announced without a token, by a client that will prove it (a registry connection).
    let announced = match announced {
        Some(text) if speaks_proof && token.is_none() => {
            Some(proof::decode_key(&text).ok_or_else(|| {
                Error::protocol(
                    "malformed `proof-key` in the Hello: expected 32 bytes of URL-safe base64",
                )
            })?)
        }
        _ => None,
    };
    let Some(key) = shared.auth.key_to_prove(identity.as_ref(), announced)? else {
        return Ok((identity, None));
    };
    if !speaks_proof {
        return Err(Error::new(ErrorKind::Unauthorized, proof::PROOF_MISSING));
    }
    let nonce = proof::nonce()?;
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, Kind::Challenge, 0, 0);
    message::put_challenge(&mut buf, &nonce);
    frame::finish(&mut buf, start, u32::MAX)?;
    wr.write_all(&buf)
        .await
        .map_err(|e| Error::connection_closed(format!("sending the challenge failed: {e}")))?;
    let answer = read_proof(reader).await?;
    let accepted = accepted_targets(local, shared.config.advertised);
    proof::verify(
        &key,
        &nonce,
        &answer.target,
        &accepted,
        token.unwrap_or(""),
        &answer.sig,
    )?;
    Ok((identity, Some(key)))
}

/// The addresses a proof may name for this server: the one the connection reached, and the
/// one the server advertises (behind a NAT or a port mapping, what consumers dial).
fn accepted_targets(local: SocketAddr, advertised: Option<SocketAddr>) -> Vec<String> {
    let mut accepted = vec![proof::target_of(local)];
    if let Some(a) = advertised.map(proof::target_of)
        && a != accepted[0]
    {
        accepted.push(a);
    }
    accepted
}

/// Reads the client's answer to the challenge: a `Proof` frame (within the `Hello` limit).
async fn read_proof(reader: &mut FrameReader) -> Result<message::Proof, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                let result = if h.kind == Kind::Proof as u8 {
                    message::parse_proof(reader.body(&h))
                } else if h.kind == Kind::GoAway as u8 {
                    Err(Error::new(
                        ErrorKind::Unauthorized,
                        "the client gave up on the handshake instead of answering the challenge",
                    ))
                } else {
                    Err(Error::protocol(format!(
                        "expected a Proof frame (kind 12) answering the Challenge, got kind {}",
                        h.kind
                    )))
                };
                reader.consume(&h);
                return result;
            }
            Ok(None) => {
                if !reader.fill().await? {
                    return Err(Error::connection_closed(
                        "closed before answering the challenge",
                    ));
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}

async fn read_hello(reader: &mut FrameReader, limits: &MetadataLimits) -> Result<Hello, Error> {
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
