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

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

// Keys, signing and checking proofs: Ed25519, so the `registry` feature. Without it a client has
// no key to prove (its optional key is always `None`), and a server announces no proof support,
// ignores keys announced to it and refuses tokens bound to one ([`PROOF_UNSUPPORTED`]).
#[cfg(feature = "registry")]
mod keys;
#[cfg(feature = "registry")]
pub use keys::ProofKey;
#[cfg(feature = "registry")]
pub(crate) use keys::{nonce, verify};

/// What stands in for the key type without the `registry` feature: no value of it exists.
#[cfg(not(feature = "registry"))]
#[derive(Clone, Debug)]
pub(crate) enum ProofKey {}

#[cfg(not(feature = "registry"))]
impl ProofKey {
    pub(crate) fn public_key(&self) -> [u8; 32] {
        match *self {}
    }

    pub(crate) fn sign_proof(&self, _: &[u8; NONCE_LEN], _: &str, _: &str) -> [u8; 64] {
        match *self {}
    }
}

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

/// The refusal of a token bound to a key by a server built without stardust's `registry`
/// feature, which cannot check proofs of possession (no Ed25519).
#[cfg(not(feature = "registry"))]
pub(crate) const PROOF_UNSUPPORTED: &str = "the access token is bound to its holder's key \
     (proof of possession), and this server cannot check proofs: it was built without \
     stardust's `registry` feature";

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
