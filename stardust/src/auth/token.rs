//! Access tokens: what the registry signs and providers verify on their own.
//!
//! A token is three dot-separated parts, `sd1.<claims>.<signature>`: the version tag, the
//! claims as MessagePack in URL-safe base64 (no padding), and the Ed25519 signature of the ASCII
//! bytes `sd1.<claims>` in the same encoding. Providers verify with the registry's public keys,
//! fetched at login: no registry round trip per connection.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

const PREFIX: &str = "sd1.";

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Id of the key that signed the token.
    pub kid: String,
    /// The application the token was issued to.
    pub app: String,
    /// Issued at, milliseconds since the Unix epoch.
    pub iat_ms: u64,
    /// Expires at, milliseconds since the Unix epoch.
    pub exp_ms: u64,
    /// Services the app may call; `None` means any.
    #[serde(default)]
    pub consume: Option<Vec<String>>,
    /// Confirmation key (proof of possession): the Ed25519 public key of the process the token
    /// was issued to. A server accepts a bound token only from a client that proves it holds
    /// the matching private key (see [`proof`](super::proof)). `None`: a bearer token, from an
    /// older client or registry. Encoded as a 32-byte `bin`, absent when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cnf_bytes")]
    pub cnf: Option<[u8; 32]>,
}

/// `cnf` as MessagePack `bin` (not an array of 32 integers).
mod cnf_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        key: &Option<[u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match key {
            Some(k) => s.serialize_bytes(k),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 32]>, D::Error> {
        let bytes: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        bytes
            .map(|b| {
                <[u8; 32]>::try_from(b.as_slice())
                    .map_err(|_| serde::de::Error::custom("cnf must be 32 bytes"))
            })
            .transpose()
    }
}

impl Claims {
    /// Expiry as a `SystemTime`.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.exp_ms)
    }
}

/// Milliseconds since the Unix epoch for `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes `claims` and signs them with `sign`, which returns the 64-byte Ed25519 signature of
/// the bytes it is given. (Signing lives with whoever holds the private key: the registry.)
pub fn encode(claims: &Claims, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> String {
    let body = rmp_serde::to_vec_named(claims).expect("claims always encode");
    let mut token = String::with_capacity(PREFIX.len() + body.len() * 2 + 90);
    token.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(&body, &mut token);
    let signature = sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

fn unauthorized(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthorized, msg.into())
}

/// Reads the claims of a token without checking its signature (to find its key id).
pub fn peek(token: &str) -> Result<Claims, Error> {
    let (signed, _) = split(token)?;
    decode_claims(&signed[PREFIX.len()..])
}

fn split(token: &str) -> Result<(&str, &str), Error> {
    if !token.starts_with(PREFIX) {
        return Err(unauthorized(
            "malformed token: it does not start with `sd1.`",
        ));
    }
    let dot = token
        .rfind('.')
        .filter(|&i| i >= PREFIX.len())
        .ok_or_else(|| unauthorized("malformed token: no signature part"))?;
    Ok((&token[..dot], &token[dot + 1..]))
}

fn decode_claims(b64: &str) -> Result<Claims, Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| unauthorized("malformed token: claims are not base64"))?;
    rmp_serde::from_slice(&bytes).map_err(|_| unauthorized("malformed token: unreadable claims"))
}

/// Public keys by key id.
pub type KeySet = HashMap<String, VerifyingKey>;

/// The longest key id a token may name (the registry's are short).
const MAX_KID_LEN: usize = 128;

/// Checks `token`'s signature against `keys` and its expiry against `now`.
///
/// Errors are `Unauthorized` and say what is wrong (malformed, unknown key id, bad signature,
/// expired) without echoing the token itself. The cheap checks come first: the token's shape,
/// its claims and its expiry are judged before the key id is looked up, so an unknown key id
/// (reported with [`is_unknown_key`] true, so the caller can fetch the registry's keys and try
/// again) is only ever reported for a token that could be genuine.
pub fn verify(token: &str, keys: &KeySet, now: SystemTime) -> Result<Claims, Error> {
    let (signed, sig_b64) = split(token)?;
    let claims = decode_claims(&signed[PREFIX.len()..])?;
    let sig_bytes = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| unauthorized("malformed token: signature is not base64"))?;
    let signature = Signature::from_slice(&sig_bytes)
        .map_err(|_| unauthorized("malformed token: signature has the wrong length"))?;
    if claims.kid.is_empty() || claims.kid.len() > MAX_KID_LEN || claims.app.is_empty() {
        return Err(unauthorized(
            "malformed token: its key id or app is empty or too long",
        ));
    }
    if unix_ms(now) >= claims.exp_ms {
        return Err(unauthorized(format!(
            "token of app `{}` expired {} s ago; log in again",
            claims.app,
            (unix_ms(now) - claims.exp_ms) / 1000
        )));
    }
    let key = keys
        .get(&claims.kid)
        .ok_or_else(|| unauthorized(format!("{UNKNOWN_KEY}`{}`", claims.kid)))?;
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| unauthorized("token signature is invalid (forged or tampered token)"))?;
    Ok(claims)
}

const UNKNOWN_KEY: &str = "token signed with unknown key id ";

/// Whether `err` (from [`verify`]) is about a key id the key set does not have yet.
pub fn is_unknown_key(err: &Error) -> bool {
    err.kind() == ErrorKind::Unauthorized && err.message().starts_with(UNKNOWN_KEY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims(exp_ms: u64) -> Claims {
        Claims {
            kid: "k1".into(),
            app: "web".into(),
            iat_ms: 1,
            exp_ms,
            consume: Some(vec!["calc.Calculator".into()]),
            cnf: None,
        }
    }

    fn keys(k: &SigningKey) -> KeySet {
        [("k1".to_owned(), k.verifying_key())].into_iter().collect()
    }

    #[test]
    fn round_trip_and_failures() {
        let k = key(1);
        let future = unix_ms(SystemTime::now()) + 60_000;
        let token = encode(&claims(future), |m| k.sign(m).to_bytes());
        let got = verify(&token, &keys(&k), SystemTime::now()).unwrap();
        assert_eq!(got, claims(future));
        assert_eq!(peek(&token).unwrap().kid, "k1");

        // Expired (minted already expired, no sleeping).
        let old = encode(&claims(1000), |m| k.sign(m).to_bytes());
        let e = verify(&old, &keys(&k), SystemTime::now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(e.message().contains("expired"), "{e}");

        // Forged: signed by another key under the same key id.
        let forged = encode(&claims(future), |m| key(2).sign(m).to_bytes());
        let e = verify(&forged, &keys(&k), SystemTime::now()).unwrap_err();
        assert!(e.message().contains("signature is invalid"), "{e}");

        // Tampered: claims changed after signing.
        let mut other = claims(future);
        other.app = "admin".into();
        let body = rmp_serde::to_vec_named(&other).unwrap();
        let sig = token.rsplit('.').next().unwrap();
        let tampered = format!("sd1.{}.{sig}", URL_SAFE_NO_PAD.encode(body));
        let e = verify(&tampered, &keys(&k), SystemTime::now()).unwrap_err();
        assert!(e.message().contains("signature is invalid"), "{e}");

        // A bound token carries its key through encoding.
        let mut bound = claims(future);
        bound.cnf = Some([9; 32]);
        let token = encode(&bound, |m| k.sign(m).to_bytes());
        assert_eq!(verify(&token, &keys(&k), SystemTime::now()).unwrap(), bound);

        // Unknown key id.
        let e = verify(&token, &KeySet::new(), SystemTime::now()).unwrap_err();
        assert!(is_unknown_key(&e));

        // Garbage.
        for bad in ["", "Bearer x", "sd1.", "sd1.!!!.???", "sd1.abc"] {
            assert_eq!(
                verify(bad, &keys(&k), SystemTime::now())
                    .unwrap_err()
                    .kind(),
                ErrorKind::Unauthorized
            );
        }
    }
}
