//! App secrets: hashed with argon2id into PHC strings, verified against them.
//!
//! Plaintext secrets are never stored, logged or put into an error message: the config holds
//! only hashes (`stardust-registry hash-secret` makes one), and in dev mode the secret an app
//! first logs in with is hashed and kept in memory.

mod pool;

use std::sync::OnceLock;

use argon2::{Algorithm, Params, PasswordHash};

pub(crate) use pool::ArgonPool;

/// Hashes `secret` with argon2id (default parameters, random salt) into a PHC string such as
/// `$argon2id$v=19$m=19456,t=2,p=1$…`, suitable as an app's `secret_hash`.
///
/// This is deliberately slow (tens of milliseconds); call it off the async runtime's worker
/// threads (`tokio::task::spawn_blocking`) in a server.
pub fn hash_secret(secret: &str) -> Result<String, SecretError> {
    // A one-off: its working memory is freed at once (a registry lends its own, see `pool`).
    ArgonPool::new(0).hash(secret)
}

/// Whether `secret` matches `phc_hash` (an argon2 PHC string). A malformed hash never matches.
///
/// Slow by design, like [`hash_secret`].
pub fn verify_secret(secret: &str, phc_hash: &str) -> bool {
    ArgonPool::new(0).verify(secret, phc_hash)
}

/// Checks that `phc_hash` is a well-formed argon2id PHC string with usable parameters.
///
/// The error never repeats the value (a plaintext secret pasted by mistake must not end up in a
/// log).
pub fn validate_hash(phc_hash: &str) -> Result<(), SecretError> {
    let parsed = PasswordHash::new(phc_hash).map_err(|_| SecretError::NotPhc)?;
    match Algorithm::try_from(parsed.algorithm.as_str()) {
        Ok(Algorithm::Argon2id) => {}
        _ => return Err(SecretError::NotArgon2id),
    }
    Params::try_from(&parsed).map_err(|e| SecretError::BadParams(e.to_string()))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(SecretError::NotPhc);
    }
    Ok(())
}

/// Runs a verification against a fixed hash, so that logging in as an unknown app costs the
/// same time as a wrong secret for a known one (no app enumeration by timing).
pub(crate) fn burn_verification(pool: &ArgonPool, secret: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let hash = DUMMY.get_or_init(|| {
        pool.hash("stardust-registry timing equaliser")
            .expect("hashing a constant works")
    });
    let _ = pool.verify(secret, hash);
}

/// Why a secret could not be hashed, or a hash is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret is empty.
    Empty,
    /// Hashing failed (should not happen with default parameters).
    Hashing(String),
    /// The value is not a PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    NotPhc,
    /// A PHC string, but not argon2id.
    NotArgon2id,
    /// Argon2id with parameters out of range.
    BadParams(String),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::Empty => f.write_str("the secret is empty"),
            SecretError::Hashing(e) => write!(f, "hashing the secret failed: {e}"),
            SecretError::NotPhc => f.write_str(
                "not an argon2 PHC hash string (expected `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`; \
                 make one with `stardust-registry hash-secret`; never put a plaintext secret here)",
            ),
            SecretError::NotArgon2id => f.write_str(
                "the hash is not argon2id (make one with `stardust-registry hash-secret`)",
            ),
            SecretError::BadParams(e) => write!(f, "the argon2id parameters are unusable: {e}"),
        }
    }
}

impl std::error::Error for SecretError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verify_validate() {
        let h = hash_secret("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_secret("s3cret", &h));
        assert!(!verify_secret("other", &h));
        assert!(!verify_secret("s3cret", "garbage"));
        validate_hash(&h).unwrap();
        assert_eq!(validate_hash("hunter2"), Err(SecretError::NotPhc));
        assert!(!SecretError::NotPhc.to_string().contains("hunter2"));
        assert_eq!(
            validate_hash("$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
            Err(SecretError::NotArgon2id)
        );
        assert!(matches!(
            validate_hash("$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"),
            Err(SecretError::BadParams(_))
        ));
        assert_eq!(hash_secret(""), Err(SecretError::Empty));
    }
}
