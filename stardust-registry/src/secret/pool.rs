//! Argon2 working memory, lent out from a small pool instead of allocated per secret check.
//!
//! Every argon2 computation needs `m_cost` KiB of working memory: 19 MiB with the default
//! parameters. Allocated per check, as the argon2 crate does, those blocks stay with the
//! allocator after the check (glibc serves them from per-thread arenas once its mmap threshold
//! has risen, and the blocking pool runs checks on many threads): a registry grew by about 9 MiB
//! per login, to hundreds of megabytes. [`ArgonPool`] computes into caller-provided memory
//! (`Argon2::hash_password_into_with_memory`) and keeps the buffers for the next check: at most
//! [`ArgonPool::new`]'s `keep` of them, which the registry sets to the number of secrets it
//! checks at once, so its argon2 memory is `keep` working sets however many logins it serves.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;

use super::SecretError;

/// Reusable argon2 working memory (see the module docs).
pub(crate) struct ArgonPool {
    /// Buffers not in use; each holds at least the blocks of the largest `m_cost` it served.
    idle: Mutex<Vec<Vec<Block>>>,
    /// Buffers kept between checks; more in use at once are freed after use.
    keep: usize,
}

impl ArgonPool {
    /// A pool keeping up to `keep` buffers between checks (0: allocate and free every time, as
    /// a one-off tool may).
    pub(crate) fn new(keep: usize) -> ArgonPool {
        ArgonPool {
            idle: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// Whether `secret` matches `phc_hash` (any argon2 variant and version, with the hash's
    /// own parameters). A malformed hash never matches.
    pub(crate) fn verify(&self, secret: &str, phc_hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc_hash) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let argon = Argon2::new(algorithm, version, params);
        let mut out = [0u8; Output::MAX_LENGTH];
        let Some(out) = out.get_mut(..expected.len()) else {
            return false;
        };
        if self.compute(&argon, secret.as_bytes(), salt, out).is_err() {
            return false;
        }
        // `Output`'s comparison runs in constant time.
        Output::new(out).is_ok_and(|computed| computed == *expected)
    }

    /// Hashes `secret` with argon2id (default parameters, a random salt) into a PHC string.
    pub(crate) fn hash(&self, secret: &str) -> Result<String, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        let failed = |e: &dyn std::fmt::Display| SecretError::Hashing(e.to_string());
        let salt = argon2::password_hash::try_generate_salt().map_err(|e| failed(&e))?;
        let salt = Salt::new(&salt).map_err(|e| failed(&e))?;
        let params = Params::default();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.compute(&argon, secret.as_bytes(), &salt, &mut out)
            .map_err(|e| failed(&e))?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
            salt: Some(salt),
            hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
        };
        Ok(hash.to_string())
    }

    /// Runs `argon` in a pooled buffer.
    fn compute(
        &self,
        argon: &Argon2<'_>,
        pwd: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> argon2::Result<()> {
        let blocks = argon.params().block_count();
        let mut memory = self.idle.lock().pop().unwrap_or_default();
        if memory.len() < blocks {
            // Argon2 writes every block before reading it, so a reused buffer needs no clearing;
            // only a new or smaller one is (once) filled up to the size needed.
            memory.resize(blocks, Block::new());
        }
        let result = argon.hash_password_into_with_memory(pwd, salt, out, &mut memory[..]);
        let mut idle = self.idle.lock();
        if idle.len() < self.keep {
            idle.push(memory);
        }
        result
    }

    /// Buffers kept for the next checks.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    /// Small parameters: these tests check the computation, not its cost.
    fn cheap(algorithm: Algorithm, version: Version, m_cost: u32) -> String {
        use argon2::password_hash::PasswordHasher;
        let params = Params::new(m_cost, 1, 1, None).unwrap();
        Argon2::new(algorithm, version, params)
            .hash_password(b"s3cret")
            .unwrap()
            .to_string()
    }

    #[test]
    fn verifies_exactly_like_the_argon2_crate() {
        let pool = ArgonPool::new(1);
        for algorithm in [Algorithm::Argon2id, Algorithm::Argon2i, Algorithm::Argon2d] {
            for version in [Version::V0x10, Version::V0x13] {
                let phc = cheap(algorithm, version, 64);
                assert!(pool.verify("s3cret", &phc), "{phc}");
                assert!(!pool.verify("s3cret!", &phc), "{phc}");
                let parsed = PasswordHash::new(&phc).unwrap();
                assert!(
                    Argon2::default()
                        .verify_password(b"s3cret", &parsed)
                        .is_ok()
                );
            }
        }
        assert!(!pool.verify("s3cret", "garbage"));
        assert!(!pool.verify("s3cret", "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ"));
    }

    #[test]
    fn hashes_verify_with_the_argon2_crate() {
        let pool = ArgonPool::new(1);
        let phc = pool.hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"s3cret", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"other", &parsed)
                .is_err()
        );
        assert_eq!(pool.hash(""), Err(SecretError::Empty));
    }

    #[test]
    fn keeps_at_most_its_buffers_and_grows_them_for_larger_costs() {
        let none = ArgonPool::new(0);
        assert!(none.verify("s3cret", &cheap(Algorithm::Argon2id, Version::V0x13, 64)));
        assert_eq!(none.idle(), 0);

        let pool = ArgonPool::new(1);
        let (small, large) = (
            cheap(Algorithm::Argon2id, Version::V0x13, 64),
            cheap(Algorithm::Argon2id, Version::V0x13, 256),
        );
        assert!(pool.verify("s3cret", &small));
        assert!(pool.verify("s3cret", &large));
        // The buffer grew for the larger cost, and still serves the smaller one correctly.
        assert_eq!(pool.idle(), 1);
        assert!(pool.idle.lock()[0].len() >= 256);
        assert!(pool.verify("s3cret", &small));
        assert!(!pool.verify("wrong", &small));
        assert_eq!(pool.idle(), 1);
    }
}
