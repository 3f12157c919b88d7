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
use crate::protocol::frame::Kind;
use crate::protocol::message::{self, Features, Hello, PROTOCOL_NAME, PROTOCOL_VERSION};
use crate::tls::ServerTls;
use crate::transport::{FrameReader, Stream, WriteHalf};

// Challenging a client for its proof of possession, and checking the proof: Ed25519, so the
// `registry` feature.
#[cfg(feature = "registry")]
mod challenge;
#[cfg(feature = "registry")]
use challenge::challenge;

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
    // Built without the `registry` feature, a server checks no proofs (no Ed25519): it announces
    // no `auth.proof`, and treats every client as not speaking it (announced keys are ignored).
    let speaks_proof = cfg!(feature = "registry") && features.has(proof::FEATURE_PROOF);
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
    challenge(shared, reader, wr, speaks_proof, &key, token, local).await?;
    Ok((identity, Some(key)))
}

/// Without the `registry` feature there is no Ed25519 to check a proof with: a token bound to a
/// key is refused.
#[cfg(not(feature = "registry"))]
async fn challenge(
    _: &ServerShared,
    _: &mut FrameReader,
    _: &mut WriteHalf,
    _speaks_proof: bool,
    _key: &[u8; 32],
    _token: Option<&str>,
    _local: SocketAddr,
) -> Result<(), Error> {
    Err(Error::new(
        ErrorKind::Unauthorized,
        proof::PROOF_UNSUPPORTED,
    ))
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

/// What a server built without the `registry` feature does with proof of possession: it checks
/// none, so it announces none, ignores keys announced to it and refuses tokens bound to a key;
/// an authenticator of the user's own still works.
#[cfg(all(test, not(feature = "registry")))]
mod tests {
    use super::*;
    use crate::auth::{Authenticator, BoxFuture, StaticToken};
    use crate::{Client, Server};

    /// Accepts any token as app `web`, bound to a key when `bound`.
    struct Accept {
        bound: bool,
    }

    impl Authenticator for Accept {
        fn authenticate<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Identity, Error>> {
            let identity = Identity::new("web");
            let identity = match self.bound {
                true => identity.with_bound_key([7; 32]),
                false => identity,
            };
            Box::pin(async move { Ok(identity) })
        }
    }

    async fn server(bound: bool) -> Server {
        Server::builder()
            .authenticator(Accept { bound })
            .allow_anonymous()
            .require_proof(false)
            .bind("127.0.0.1:0")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn tokens_bound_to_a_key_are_refused_and_announced_keys_ignored() {
        let unbound = server(false).await;
        let client = Client::builder()
            .credentials(StaticToken("a token".into()))
            .connect(unbound.local_addr())
            .await
            .unwrap();
        assert!(!client.peer_features().has(proof::FEATURE_PROOF));

        // A key announced for proving, as a registry login does: nothing to prove it with.
        let key = proof::encode_key(&[3; 32]);
        Client::builder()
            .features([proof::FEATURE_PROOF])
            .handshake_metadata(proof::PROOF_KEY_META, key.as_str())
            .connect(unbound.local_addr())
            .await
            .unwrap();

        let bound = server(true).await;
        let e = Client::builder()
            .credentials(StaticToken("a token".into()))
            .connect(bound.local_addr())
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Unauthorized, proof::PROOF_UNSUPPORTED)
        );
    }
}
