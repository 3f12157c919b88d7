//! The Ed25519 side of proof of possession (feature `registry`): the keys clients prove, the
//! challenges servers send and the check of a proof.

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::{NONCE_LEN, encode_key, signed_input};
use crate::error::{Error, ErrorKind};

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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::{decode_key, target_of};
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
}
