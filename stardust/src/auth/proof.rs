//! Proof of possession: tokens only their owner can use.
//!
//! A bearer token works for whoever holds it, so a rogue provider that collects consumers'
//! tokens could replay them to the real providers. Instead, each consumer process (each
//! [`Stardust`](crate::Stardust) handle, each agent) makes an Ed25519 key pair, a [`ProofKey`],
//! when it starts. The registry binds the public half into every token it issues to that
//! process (the `cnf` claim), and a provider that receives a bound token sends a fresh
//! challenge in the handshake, which only the holder of the private half can sign.
//!
//! The signature covers the challenge, the address the consumer dialed and the token
//! ([`signed_input`]), so it is worthless anywhere else: a rogue provider that relays a real
//! provider's challenge to its victim gets back a signature naming the rogue's own address,
//! which the real provider refuses. Verification is local (one signature check per
//! connection, nothing per call); the wire format is in `docs/PROTOCOL.md`, section 4.1.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::{Error, ErrorKind};

/// The handshake feature (`features` of `Hello` and `HelloAck`) saying a peer speaks proof of
/// possession: a client that announces it answers a `Challenge` frame with a `Proof` frame.
pub const FEATURE_PROOF: &str = "auth.proof";

/// Handshake metadata key under which a client without a token announces the public key it
/// will prove (URL-safe base64, no padding): how a registry connection proves the key its
/// tokens get bound to.
pub const PROOF_KEY_META: &str = "proof-key";

/// The first bytes of every signed input: names the protocol and its version, so a signature
/// made for anything else can never pass for a proof.
pub const DOMAIN: &[u8] = b"stardust proof v1\0";

/// Length of a challenge's nonce, in bytes.
pub const NONCE_LEN: usize = 32;

/// The refusal of a bound token whose holder offered no proof (a replayed token, or a client
/// that did not announce [`FEATURE_PROOF`]).
pub const PROOF_MISSING: &str = "the access token is bound to its holder's key (proof of \
     possession) and this client offered no proof: a token works only for the process it was \
     issued to";

/// The refusal of an unbound (bearer) token by a server that requires proof of possession.
pub const PROOF_REQUIRED: &str = "this provider requires proof of possession and the access \
     token is not bound to a key (it was issued to an older client, or by an older registry); \
     upgrade the client and the registry, or turn require_proof off on the provider while the \
     fleet migrates";

/// An Ed25519 key pair whose public half tokens are bound to.
///
/// Cheap to clone (shared). `Debug` shows only a short fingerprint of the public key: the
/// private half never appears in logs.
#[derive(Clone)]
pub struct ProofKey(Arc<SigningKey>);

impl ProofKey {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<ProofKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("no randomness from the OS for a proof key: {e}"),
            )
        })?;
        Ok(ProofKey::from_seed(seed))
    }

    /// The key pair derived from a 32-byte secret seed (tests, and tools that keep a key).
    pub fn from_seed(seed: [u8; 32]) -> ProofKey {
        ProofKey(Arc::new(SigningKey::from_bytes(&seed)))
    }

    /// The public key, as bound into tokens (`cnf`).
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs a proof for a challenge: see [`signed_input`].
    pub fn sign_proof(&self, nonce: &[u8; NONCE_LEN], target: &str, token: &str) -> [u8; 64] {
        self.0.sign(&signed_input(nonce, target, token)).to_bytes()
    }
}

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProofKey({}..)", &encode_key(&self.public_key())[..8])
    }
}

/// The bytes a proof signs:
///
/// ```text
/// "stardust proof v1\0"             18 bytes (DOMAIN)
/// nonce                             32 bytes, from the server's Challenge
/// u32 big-endian length, target     the server address as the client dialed it: "ip:port"
///                                   ("[v6]:port" for IPv6; an IPv4-mapped v6 address as v4)
/// u32 big-endian length, token      the token presented in the Hello (empty without one)
/// ```
pub fn signed_input(nonce: &[u8; NONCE_LEN], target: &str, token: &str) -> Vec<u8> {
    let mut input = Vec::with_capacity(DOMAIN.len() + NONCE_LEN + 8 + target.len() + token.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(nonce);
    input.extend_from_slice(&(target.len() as u32).to_be_bytes());
    input.extend_from_slice(target.as_bytes());
    input.extend_from_slice(&(token.len() as u32).to_be_bytes());
    input.extend_from_slice(token.as_bytes());
    input
}

/// How an address is named in a proof: `ip:port`, an IPv4-mapped IPv6 address as IPv4 (a
/// dual-stack listener sees IPv4 clients' connections that way).
pub fn target_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()).to_string(),
            None => addr.to_string(),
        },
        SocketAddr::V4(_) => addr.to_string(),
    }
}

/// A fresh challenge nonce.
pub(crate) fn nonce() -> Result<[u8; NONCE_LEN], Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("no randomness from the OS for a challenge: {e}"),
        )
    })?;
    Ok(nonce)
}

fn failed(why: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unauthorized,
        format!("proof of possession failed: {why}"),
    )
}

/// Checks a proof: `target` must name one of `accepted` (this server's addresses), and
/// `signature` must verify with `key` over [`signed_input`]. Errors are `Unauthorized` and say
/// which check failed (naming addresses, never the token).
pub(crate) fn verify(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    target: &str,
    accepted: &[String],
    token: &str,
    signature: &[u8; 64],
) -> Result<(), Error> {
    if !accepted.iter().any(|a| a == target) {
        return Err(failed(format_args!(
            "the proof was made for {target:?}, and this server is {}: a proof is good only for \
             the server the client dialed (a relayed challenge?)",
            accepted.join(" / ")
        )));
    }
    let key = VerifyingKey::from_bytes(key)
        .map_err(|_| failed("the key the token is bound to is not a valid Ed25519 key"))?;
    key.verify(
        &signed_input(nonce, target, token),
        &Signature::from_bytes(signature),
    )
    .map_err(|_| failed("the signature does not verify with the key the token is bound to"))
}

/// A public key as text (handshake metadata): URL-safe base64 without padding.
pub fn encode_key(key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Parses [`encode_key`]'s text; `None` unless it is exactly 32 bytes of base64.
pub(crate) fn decode_key(text: &str) -> Option<[u8; 32]> {
    if text.len() != 43 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_nonce_target_token_and_key() {
        let key = ProofKey::from_seed([7; 32]);
        let nonce = [1; NONCE_LEN];
        let accepted = vec!["127.0.0.1:7000".to_owned()];
        let sig = key.sign_proof(&nonce, "127.0.0.1:7000", "sd1.t.s");
        let ok = verify(
            &key.public_key(),
            &nonce,
            "127.0.0.1:7000",
            &accepted,
            "sd1.t.s",
            &sig,
        );
        assert!(ok.is_ok(), "{ok:?}");
        let bad = |nonce: [u8; 32], target: &str, token: &str, pk: [u8; 32]| {
            verify(&pk, &nonce, target, &accepted, token, &sig).unwrap_err()
        };
        let e = bad([2; 32], "127.0.0.1:7000", "sd1.t.s", key.public_key());
        assert!(e.message().contains("does not verify"), "{e}");
        let e = bad(nonce, "127.0.0.1:7000", "sd1.other", key.public_key());
        assert!(e.message().contains("does not verify"), "{e}");
        let other = ProofKey::from_seed([8; 32]).public_key();
        let e = bad(nonce, "127.0.0.1:7000", "sd1.t.s", other);
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        // Made for another server: refused before any signature work.
        let relayed = key.sign_proof(&nonce, "10.0.0.9:7000", "sd1.t.s");
        let e = verify(
            &key.public_key(),
            &nonce,
            "10.0.0.9:7000",
            &accepted,
            "sd1.t.s",
            &relayed,
        )
        .unwrap_err();
        assert!(e.message().contains("relayed"), "{e}");
        assert!(!e.message().contains("sd1.t.s"), "{e}");
    }

    #[test]
    fn targets_name_v4_mapped_addresses_as_v4_and_keys_round_trip() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7000".parse().unwrap();
        assert_eq!(target_of(mapped), "127.0.0.1:7000");
        let v6: SocketAddr = "[::1]:7000".parse().unwrap();
        assert_eq!(target_of(v6), "[::1]:7000");
        let key = ProofKey::from_seed([3; 32]);
        let text = encode_key(&key.public_key());
        assert_eq!(decode_key(&text), Some(key.public_key()));
        assert_eq!(decode_key("short"), None);
        assert_eq!(decode_key(&"!".repeat(43)), None);
        let shown = format!("{key:?}");
        assert!(
            shown.starts_with("ProofKey(") && shown.len() <= 20,
            "{shown}"
        );
    }

    #[test]
    fn the_signed_input_is_laid_out_as_documented() {
        let input = signed_input(&[0xab; 32], "127.0.0.1:1", "t");
        assert_eq!(&input[..18], b"stardust proof v1\0");
        assert_eq!(&input[18..50], &[0xab; 32]);
        assert_eq!(&input[50..54], &[0, 0, 0, 11]);
        assert_eq!(&input[54..65], b"127.0.0.1:1");
        assert_eq!(&input[65..69], &[0, 0, 0, 1]);
        assert_eq!(&input[69..], b"t");
    }
}
