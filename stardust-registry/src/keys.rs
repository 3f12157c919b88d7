//! The registry's Ed25519 signing keys: kept in a key file, rotated, and pruned.
//!
//! The key file is TOML, readable only by its owner (mode 0600):
//!
//! ```toml
//! [[keys]]
//! kid = "q7Yd0Xr9a1Bc"          # key id, as found in tokens
//! created_ms = 1700000000000    # when the key was made
//! retired_ms = 1700003600000    # when a newer key replaced it (absent: the signing key)
//! secret_key = "…"              # the 32-byte Ed25519 secret key, URL-safe base64
//! ```
//!
//! The newest key signs; older ones keep verifying until every token they could have signed has
//! expired (`retired_ms + token_ttl`), after which rotation prunes them. A running registry
//! notices a rotated file (its modification time, size or inode changed) the next time it logs
//! someone in, renews a token or lists its public keys.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use stardust::auth::token::{self, Claims, KeySet};
use stardust::discovery::api::PublicKey;

/// The registry's signing keys, shared between the registry and whoever holds a clone.
///
/// Either file-backed ([`KeyRing::open`]) or in memory ([`KeyRing::in_memory`], dev mode).
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<PathBuf>,
    token_ttl: Duration,
    state: RwLock<State>,
}

struct State {
    /// Oldest first; the last one signs.
    keys: Vec<Key>,
    stamp: Option<FileStamp>,
}

#[derive(Clone)]
struct Key {
    kid: String,
    signing: SigningKey,
    created_ms: u64,
    retired_ms: Option<u64>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.read();
        f.debug_struct("KeyRing")
            .field("file", &self.inner.file)
            .field(
                "kids",
                &state.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What identifies one version of the key file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: std::os::unix::fs::MetadataExt::ino(meta),
        }
    }
}

impl KeyRing {
    /// A ring with one fresh random key that lives only in memory (dev mode, tests).
    pub fn in_memory(token_ttl: Duration) -> Result<KeyRing, KeyError> {
        Ok(KeyRing::from_parts(
            None,
            token_ttl,
            vec![Key::generate()?],
            None,
        ))
    }

    /// Opens the key file at `path`, creating it with a fresh random key (mode 0600) if it does
    /// not exist. `token_ttl` is the lifetime of the tokens the registry issues: it decides how
    /// long a retired key still verifies.
    pub fn open(path: impl AsRef<Path>, token_ttl: Duration) -> Result<KeyRing, KeyError> {
        let path = path.as_ref();
        let (keys, stamp) = match load_file(path)? {
            Some(loaded) => loaded,
            None => {
                create_file(path)?;
                load_file(path)?.ok_or_else(|| KeyError::io(path, "vanished after creation"))?
            }
        };
        Ok(KeyRing::from_parts(
            Some(path.to_owned()),
            token_ttl,
            keys,
            Some(stamp),
        ))
    }

    fn from_parts(
        file: Option<PathBuf>,
        token_ttl: Duration,
        keys: Vec<Key>,
        stamp: Option<FileStamp>,
    ) -> KeyRing {
        KeyRing {
            inner: Arc::new(Inner {
                file,
                token_ttl,
                state: RwLock::new(State { keys, stamp }),
            }),
        }
    }

    /// The key file, if the ring has one.
    pub fn file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// Lifetime of the tokens [`KeyRing::issue`] makes.
    pub fn token_ttl(&self) -> Duration {
        self.inner.token_ttl
    }

    /// Re-reads the key file if it changed on disk since it was last read (cheap otherwise: one
    /// `stat`). A file that cannot be read or parsed is logged and the keys in memory are kept.
    pub fn refresh(&self) {
        let Some(path) = &self.inner.file else { return };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stat the key file; keeping the keys in memory");
                return;
            }
        };
        let stamp = FileStamp::of(&meta);
        if self.inner.state.read().stamp.as_ref() == Some(&stamp) {
            return;
        }
        match load_file(path) {
            Ok(Some((keys, stamp))) => {
                let mut state = self.inner.state.write();
                let before = state.keys.last().map(|k| k.kid.clone());
                state.keys = keys;
                state.stamp = Some(stamp);
                let now = state.keys.last().map(|k| k.kid.clone());
                if before != now {
                    tracing::info!(path = %path.display(), kid = now.as_deref().unwrap_or(""), "key file changed: new signing key");
                } else {
                    tracing::info!(path = %path.display(), "key file changed: reloaded");
                }
            }
            Ok(None) => {
                tracing::warn!(path = %path.display(), "the key file disappeared; keeping the keys in memory")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the key file; keeping the keys in memory")
            }
        }
    }

    /// Id of the key that signs new tokens.
    pub fn signing_kid(&self) -> String {
        self.inner
            .state
            .read()
            .keys
            .last()
            .expect("a key ring is never empty")
            .kid
            .clone()
    }

    /// Every public key still accepted: the signing key, and retired keys until the tokens they
    /// could have signed have expired.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        let now = token::unix_ms(SystemTime::now());
        let ttl = self.inner.token_ttl.as_millis() as u64;
        self.inner
            .state
            .read()
            .keys
            .iter()
            .filter(|k| k.accepted_at(now, ttl))
            .map(|k| PublicKey {
                kid: k.kid.clone(),
                key: ByteBuf::from(k.signing.verifying_key().to_bytes().to_vec()),
            })
            .collect()
    }

    /// [`KeyRing::public_keys`] as a [`KeySet`] for [`token::verify`].
    pub fn key_set(&self) -> KeySet {
        key_set(&self.public_keys())
    }

    /// Signs a token for `app` with the current signing key, valid from now for the ring's
    /// token TTL. Returns the token and its expiry (ms since the Unix epoch).
    pub fn issue(&self, app: &str, consume: Option<Vec<String>>) -> (String, u64) {
        self.issue_bound(app, consume, None)
    }

    /// [`KeyRing::issue`] for a token bound to the holder of `key` (its `cnf` claim: proof of
    /// possession); `None` issues a bearer token.
    pub fn issue_bound(
        &self,
        app: &str,
        consume: Option<Vec<String>>,
        key: Option<[u8; 32]>,
    ) -> (String, u64) {
        let iat = SystemTime::now();
        let exp = iat + self.inner.token_ttl;
        (
            self.mint_bound(app, consume, key, iat, exp),
            token::unix_ms(exp),
        )
    }

    /// Signs a bearer token with chosen issue and expiry times (tests: e.g. an already expired
    /// token).
    pub fn mint(
        &self,
        app: &str,
        consume: Option<Vec<String>>,
        iat: SystemTime,
        exp: SystemTime,
    ) -> String {
        self.mint_bound(app, consume, None, iat, exp)
    }

    /// [`KeyRing::mint`] for a token bound to the holder of `key` (`None`: a bearer token).
    pub fn mint_bound(
        &self,
        app: &str,
        consume: Option<Vec<String>>,
        key: Option<[u8; 32]>,
        iat: SystemTime,
        exp: SystemTime,
    ) -> String {
        let state = self.inner.state.read();
        let signing = state.keys.last().expect("a key ring is never empty");
        let claims = Claims {
            kid: signing.kid.clone(),
            app: app.to_owned(),
            iat_ms: token::unix_ms(iat),
            exp_ms: token::unix_ms(exp),
            consume,
            cnf: key,
        };
        token::encode(&claims, |msg| signing.signing.sign(msg).to_bytes())
    }

    /// Adds a fresh key and makes it the signing key; returns its id. A file-backed ring
    /// rotates its file (see [`rotate_key_file`]) and reloads it; an in-memory ring rotates in
    /// memory. Retired keys past their last token's expiry are pruned.
    pub fn rotate(&self) -> Result<String, KeyError> {
        match &self.inner.file {
            Some(path) => {
                let kid = rotate_key_file(path, self.inner.token_ttl)?;
                self.refresh();
                Ok(kid)
            }
            None => {
                let mut state = self.inner.state.write();
                let new = Key::generate()?;
                let kid = new.kid.clone();
                rotate_keys(&mut state.keys, new, self.inner.token_ttl);
                Ok(kid)
            }
        }
    }
}

/// Converts a list of public keys (as [`LoginReply::keys`](stardust::discovery::api::LoginReply)
/// or `public_keys` return them) into a [`KeySet`] for [`token::verify`]. Keys that are not 32
/// valid Ed25519 bytes are skipped.
pub fn key_set(keys: &[PublicKey]) -> KeySet {
    keys.iter()
        .filter_map(|k| {
            let bytes: [u8; 32] = k.key.as_slice().try_into().ok()?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
            Some((k.kid.clone(), key))
        })
        .collect()
}

/// Rotates the key file at `path`: retires the current signing key, adds a fresh one that signs
/// from now on, and prunes retired keys whose last possible token (signed before retirement,
/// living `token_ttl`) has expired. Creates the file if it does not exist. Returns the new
/// key's id. A running registry using the file picks the change up by itself.
///
/// `token_ttl` must be the registry's token lifetime (or longer), or keys could be pruned while
/// tokens they signed are still valid.
pub fn rotate_key_file(path: impl AsRef<Path>, token_ttl: Duration) -> Result<String, KeyError> {
    let path = path.as_ref();
    let mut keys = match load_file(path)? {
        Some((keys, _)) => keys,
        None => Vec::new(),
    };
    let new = Key::generate()?;
    let kid = new.kid.clone();
    rotate_keys(&mut keys, new, token_ttl);
    write_file(path, &keys)?;
    tracing::info!(path = %path.display(), %kid, "rotated the signing key");
    Ok(kid)
}

fn rotate_keys(keys: &mut Vec<Key>, new: Key, token_ttl: Duration) {
    let now = new.created_ms;
    for k in keys.iter_mut() {
        if k.retired_ms.is_none() {
            k.retired_ms = Some(now);
        }
    }
    let ttl = token_ttl.as_millis() as u64;
    keys.retain(|k| k.accepted_at(now, ttl));
    keys.push(new);
}

impl Key {
    fn generate() -> Result<Key, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError {
            message: format!("no randomness from the OS for a new key: {e}"),
        })?;
        Ok(Key::from_secret(
            secret,
            token::unix_ms(SystemTime::now()),
            None,
        ))
    }

    fn from_secret(secret: [u8; 32], created_ms: u64, retired_ms: Option<u64>) -> Key {
        let signing = SigningKey::from_bytes(&secret);
        // The id is derived from the public key: stable, and unique for all practical purposes.
        let kid = URL_SAFE_NO_PAD.encode(&signing.verifying_key().to_bytes()[..9]);
        Key {
            kid,
            signing,
            created_ms,
            retired_ms,
        }
    }

    /// Whether tokens signed with this key may still be valid at `now`.
    fn accepted_at(&self, now: u64, token_ttl_ms: u64) -> bool {
        self.retired_ms
            .is_none_or(|r| now < r.saturating_add(token_ttl_ms))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    kid: String,
    created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_ms: Option<u64>,
    secret_key: String,
}

const FILE_HEADER: &str = "# Stardust registry signing keys (Ed25519). SECRET: keep this file private (mode 0600).\n\
# Managed by `stardust-registry`; rotate with `stardust-registry rotate-key`.\n\n";

fn load_file(path: &Path) -> Result<Option<(Vec<Key>, FileStamp)>, KeyError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyError::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| KeyError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the key file is readable by other users; `chmod 600` it");
        }
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| KeyError::io(path, e))?;
    let parsed: KeyFile = toml::from_str(&text).map_err(|e| KeyError {
        message: format!(
            "key file {} is not valid: {}",
            path.display(),
            e.message().trim_end()
        ),
    })?;
    let mut keys = Vec::with_capacity(parsed.keys.len());
    for r in parsed.keys {
        let bad = |what: &str| KeyError {
            message: format!("key file {}: key `{}` {what}", path.display(), r.kid),
        };
        let secret: [u8; 32] = URL_SAFE_NO_PAD
            .decode(r.secret_key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                bad("has a malformed secret_key (expected 32 bytes, URL-safe base64)")
            })?;
        let key = Key::from_secret(secret, r.created_ms, r.retired_ms);
        if key.kid != r.kid {
            return Err(bad("does not match its secret_key"));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyError {
            message: format!(
                "key file {} holds no keys; delete it to start with a fresh key, or run `stardust-registry rotate-key`",
                path.display()
            ),
        });
    }
    // The signing key is the newest; order the rest by age for `rotate_keys`.
    keys.sort_by_key(|k| (k.retired_ms.is_none(), k.created_ms));
    Ok(Some((keys, FileStamp::of(&meta))))
}

fn create_file(path: &Path) -> Result<(), KeyError> {
    let key = Key::generate()?;
    let kid = key.kid.clone();
    // Written whole beside the path, then linked in place: `link` fails if the path exists, so
    // when another registry creates the file at the same time theirs wins, and nobody ever reads
    // a file half written (creating the path itself and then writing it would let a registry
    // starting beside this one read it empty).
    let tmp = temp_beside(path)?;
    let text = render(&[key]);
    let created = write_new(&tmp, &text).and_then(|()| match std::fs::hard_link(&tmp, path) {
        // A file system without hard links: create the path itself (the race stays there only).
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => write_new(path, &text),
        linked => linked,
    });
    let _ = std::fs::remove_file(&tmp);
    match created {
        Ok(()) => {
            tracing::info!(path = %path.display(), %kid, "created the key file with a fresh signing key");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(KeyError::io(path, e)),
    }
}

fn render(keys: &[Key]) -> String {
    let file = KeyFile {
        keys: keys
            .iter()
            .map(|k| KeyRecord {
                kid: k.kid.clone(),
                created_ms: k.created_ms,
                retired_ms: k.retired_ms,
                secret_key: URL_SAFE_NO_PAD.encode(k.signing.to_bytes()),
            })
            .collect(),
    };
    let mut text = FILE_HEADER.to_owned();
    text.push_str(&toml::to_string(&file).expect("key files always serialise"));
    text
}

/// Replaces the file atomically: a private temporary file beside it, renamed over it.
fn write_file(path: &Path, keys: &[Key]) -> Result<(), KeyError> {
    let tmp = temp_beside(path)?;
    let result = write_new(&tmp, &render(keys)).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| KeyError::io(path, e))
}

/// A fresh name for a temporary file in the same directory as `path` (so a rename or link to
/// `path` stays on one file system), unique to this process and call.
fn temp_beside(path: &Path) -> Result<PathBuf, KeyError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .ok_or_else(|| KeyError::io(path, "not a file path"))?
        .to_string_lossy();
    let mut nonce = [0u8; 6];
    let _ = getrandom::fill(&mut nonce);
    let tmp_name = format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        URL_SAFE_NO_PAD.encode(nonce)
    );
    Ok(match dir {
        Some(d) => d.join(tmp_name),
        None => PathBuf::from(tmp_name),
    })
}

fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// A key file that cannot be read, parsed or written, or no randomness for a new key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    message: String,
}

impl KeyError {
    fn io(path: &Path, e: impl fmt::Display) -> KeyError {
        KeyError {
            message: format!("key file {}: {e}", path.display()),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn creates_a_private_file_and_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let ring = KeyRing::open(&path, HOUR).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (tok, _) = ring.issue("web", None);
        let again = KeyRing::open(&path, HOUR).unwrap();
        assert_eq!(again.signing_kid(), ring.signing_kid());
        let claims = token::verify(&tok, &again.key_set(), SystemTime::now()).unwrap();
        assert_eq!(claims.app, "web");
    }

    #[test]
    fn registries_creating_one_key_file_at_once_all_read_it_whole() {
        // Several registries starting together on one new key file: one creates it, every one
        // opens the same key, none reads it half written. Repeated, as the race is narrow.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys.toml");
            let start = std::sync::Barrier::new(4);
            let kids: Vec<String> = std::thread::scope(|s| {
                let opens: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            KeyRing::open(&path, HOUR).unwrap().signing_kid()
                        })
                    })
                    .collect();
                opens.into_iter().map(|o| o.join().unwrap()).collect()
            });
            assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(left.len(), 1, "temporary files were left behind");
        }
    }

    #[test]
    fn rotation_keeps_old_keys_until_their_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let ring = KeyRing::open(&path, HOUR).unwrap();
        let old_kid = ring.signing_kid();
        let (old_tok, _) = ring.issue("web", None);
        let new_kid = rotate_key_file(&path, HOUR).unwrap();
        assert_ne!(new_kid, old_kid);
        ring.refresh();
        assert_eq!(ring.signing_kid(), new_kid);
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![old_kid.clone(), new_kid.clone()]);
        token::verify(&old_tok, &ring.key_set(), SystemTime::now()).unwrap();

        // With a zero TTL the retired key's tokens are all expired: the next rotation prunes it.
        let third = rotate_key_file(&path, Duration::ZERO).unwrap();
        let ring = KeyRing::open(&path, Duration::ZERO).unwrap();
        let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![third]);
    }

    #[test]
    fn in_memory_rotation_and_minting() {
        let ring = KeyRing::in_memory(HOUR).unwrap();
        let first = ring.signing_kid();
        let second = ring.rotate().unwrap();
        assert_ne!(first, second);
        assert_eq!(ring.public_keys().len(), 2);
        let past = SystemTime::now() - HOUR;
        let expired = ring.mint("web", None, past, past + Duration::from_secs(1));
        let e = token::verify(&expired, &ring.key_set(), SystemTime::now()).unwrap_err();
        assert!(e.message().contains("expired"), "{e}");
        assert_eq!(token::peek(&expired).unwrap().kid, second);
    }

    #[test]
    fn corrupt_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, "keys = []").unwrap();
        let e = KeyRing::open(&path, HOUR).unwrap_err();
        assert!(e.message().contains("holds no keys"), "{e}");
        std::fs::write(
            &path,
            "[[keys]]\nkid = \"x\"\ncreated_ms = 1\nsecret_key = \"AAAA\"\n",
        )
        .unwrap();
        let e = KeyRing::open(&path, HOUR).unwrap_err();
        assert!(e.message().contains("malformed secret_key"), "{e}");
    }
}
