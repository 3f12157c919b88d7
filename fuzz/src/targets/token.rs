//! Access tokens (`auth/token.rs`): `peek` (reading claims before any check) and `verify`
//! (signature, key id, expiry), as a provider runs them on every token a client presents.
//!
//! Input: `[mode, rest...]`.
//! - Even mode: `rest` is the token text, as it arrives in a Hello or an `authenticate` call.
//! - Odd mode: `rest` is the claims' MessagePack; the target signs it with key `k1` the way the
//!   registry does, so verification runs past the signature check on claims of any shape.
//!
//! Checks: every refusal is `Unauthorized`; "unknown key id" only for key ids the verifier
//! lacks; a token verifies exactly when its claims decode, it is signed by the key its `kid`
//! names, and it has not expired, and then `peek` agrees with `verify`.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use stardust::ErrorKind;
use stardust::auth::token::{self, Claims, KeySet};

/// The verifier's clock: fixed, so runs are reproducible.
pub const NOW_MS: u64 = 1_700_000_000_000;

/// The registry's signing key `k1` (a fixed seed: these tokens guard nothing).
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The verifier knows `k1` and `k2`; the target signs with `k1` only.
static KEYS: LazyLock<KeySet> = LazyLock::new(|| {
    let other = SigningKey::from_bytes(&[9; 32]);
    HashMap::from([
        ("k1".to_owned(), signing_key().verifying_key()),
        ("k2".to_owned(), other.verifying_key()),
    ])
});

/// Runs one input.
pub fn run(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    if mode % 2 == 0 {
        check(&String::from_utf8_lossy(rest), None);
    } else {
        let claims = rmp_serde::from_slice::<Claims>(rest).ok();
        check(&sign(rest), Some(claims));
    }
}

/// `sd1.<claims>.<signature>` over raw claim bytes, signed with `k1`, as the registry signs.
pub fn sign(claims: &[u8]) -> String {
    let mut token = format!("sd1.{}", URL_SAFE_NO_PAD.encode(claims));
    let signature = signing_key().sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    token
}

/// Verifies `token`; `signed` holds the claims the target signed itself (`None` for text
/// that came in as it is, `Some(None)` for signed bytes that are no `Claims`).
fn check(token: &str, signed: Option<Option<Claims>>) {
    let now = UNIX_EPOCH + Duration::from_millis(NOW_MS);
    let peeked = token::peek(token);
    if let Err(e) = &peeked {
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
    }
    let verified = token::verify(token, &KEYS, now);
    match &verified {
        Ok(claims) => {
            assert_eq!(
                peeked.as_ref().ok(),
                Some(claims),
                "peek disagrees with verify"
            );
            assert!(claims.exp_ms > NOW_MS, "an expired token verified");
            assert!(KEYS.contains_key(&claims.kid));
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
            if token::is_unknown_key(e) {
                let kid = &peeked.as_ref().expect("a key id was read").kid;
                assert!(
                    !KEYS.contains_key(kid),
                    "known key id `{kid}` called unknown"
                );
            }
        }
    }
    if let Some(claims) = signed {
        let should_pass = claims
            .as_ref()
            .is_some_and(|c| c.kid == "k1" && c.exp_ms > NOW_MS);
        assert_eq!(
            verified.is_ok(),
            should_pass,
            "claims {claims:?} signed by k1 at {NOW_MS}: {verified:?}"
        );
    }
}
