//! The proof of possession in a handshake (feature `registry`): the `Challenge` the server
//! sends, the client's `Proof`, and its check.

use std::net::SocketAddr;

use bytes::BytesMut;

use super::ServerShared;
use crate::auth::proof;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, Kind};
use crate::protocol::message;
use crate::transport::{FrameReader, WriteHalf};

/// Challenges the client to prove it holds `key` (the one its token is bound to, or the one it
/// announced) and checks its proof, which covers the nonce, the address it dialed and `token`.
pub(super) async fn challenge(
    shared: &ServerShared,
    reader: &mut FrameReader,
    wr: &mut WriteHalf,
    speaks_proof: bool,
    key: &[u8; 32],
    token: Option<&str>,
    local: SocketAddr,
) -> Result<(), Error> {
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
        key,
        &nonce,
        &answer.target,
        &accepted,
        token.unwrap_or(""),
        &answer.sig,
    )
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
