//! Checking a token's signature and expiry (feature `registry`: Ed25519).

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use super::{Claims, PREFIX, decode_claims, split, unauthorized, unix_ms};
use crate::error::{Error, ErrorKind};

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
    use ed25519_dalek::{Signer, SigningKey};

    use super::super::{encode, peek};
    use super::*;

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
