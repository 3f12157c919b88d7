//! Access tokens: what the registry signs and providers verify on their own.
//!
//! A token is three dot-separated parts, `sd1.<claims>.<signature>`: the version tag, the
//! claims as MessagePack in URL-safe base64 (no padding), and the Ed25519 signature of the ASCII
//! bytes `sd1.<claims>` in the same encoding. Providers verify with the registry's public keys,
//! fetched at login: no registry round trip per connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};

// Checking a token's signature needs Ed25519: the `registry` feature. The format (claims,
// encoding, reading claims unchecked) does not.
#[cfg(feature = "registry")]
mod signature;
#[cfg(feature = "registry")]
pub use signature::{KeySet, is_unknown_key, verify};

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
