//! [`TokenVerifier`]: checks registry-signed tokens with the registry's public keys, and fetches
//! those keys again when a token names a key id it has not seen (after a key rotation).
//!
//! A handshake's token comes from a peer nobody has authenticated yet, and its key id is
//! whatever that peer wrote. So a fetch is the last resort, and a cheap one to refuse:
//! - the token must first be well formed, unexpired and carry sane claims ([`token::verify`]
//!   checks all that before it looks the key id up);
//! - one fetch at a time: handshakes that meet an unknown key id while a fetch is running wait
//!   for that fetch instead of starting their own;
//! - a key id the registry did not have either is remembered for a while, and refused without
//!   asking again;
//! - fetches are rate-limited: within the minimum interval after one started, an unknown key
//!   id is refused on the strength of the last answer.
//!
//! So however many bogus tokens arrive, the registry sees at most one key fetch per interval
//! from each provider.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::Shared;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::token::{self, KeySet};
use super::{Authenticator, BoxFuture, Identity};
use crate::error::{Error, ErrorKind};

/// Fetches the registry's current public keys (for a key id a verifier has not seen yet).
pub trait KeyFetcher: Send + Sync + 'static {
    /// All keys the registry currently accepts tokens from.
    fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>>;
}

/// Default for [`TokenVerifier::min_fetch_interval`].
const MIN_FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a key id the registry did not know is refused without asking again.
const UNKNOWN_TTL: Duration = Duration::from_secs(10);
/// Most key ids remembered as unknown; beyond it the oldest half is forgotten.
const UNKNOWN_CAP: usize = 1024;

type FetchResult = Result<KeySet, Error>;

/// An [`Authenticator`] for registry-signed tokens: verifies locally with known public keys and
/// fetches the registry's keys when it meets a key id it does not know (after a key rotation),
/// coalescing and rate-limiting those fetches (see the module notes).
pub struct TokenVerifier {
    keys: RwLock<KeySet>,
    fetcher: Option<Arc<dyn KeyFetcher>>,
    fetches: Arc<Mutex<Fetches>>,
    min_interval: Duration,
}

/// The fetch bookkeeping, behind one lock held only for map operations (never across a wait).
#[derive(Default)]
struct Fetches {
    /// The fetch running now, shared by every handshake waiting on it.
    running: Option<Shared<BoxFuture<'static, FetchResult>>>,
    /// When the last fetch started (the rate limit).
    last_started: Option<Instant>,
    /// Key ids the last fetches did not return, with when that was learned.
    unknown: HashMap<String, Instant>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("key_ids", &self.keys.read().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier trusting `keys`.
    pub fn new(keys: KeySet) -> TokenVerifier {
        TokenVerifier {
            keys: RwLock::new(keys),
            fetcher: None,
            fetches: Arc::default(),
            min_interval: MIN_FETCH_INTERVAL,
        }
    }

    /// Fetches keys through `fetcher` when a token names an unknown key id.
    pub fn with_fetcher(mut self, fetcher: Arc<dyn KeyFetcher>) -> TokenVerifier {
        self.fetcher = Some(fetcher);
        self
    }

    /// The least time between the starts of two key fetches (default 1 s). Within it, a token
    /// with an unknown key id is refused without asking the registry.
    pub fn min_fetch_interval(mut self, interval: Duration) -> TokenVerifier {
        self.min_interval = interval;
        self
    }

    /// Replaces the trusted keys.
    pub fn set_keys(&self, keys: KeySet) {
        *self.keys.write() = keys;
    }

    /// Verifies `token` now (without fetching keys).
    pub fn verify(&self, token: &str) -> Result<token::Claims, Error> {
        token::verify(token, &self.keys.read(), SystemTime::now())
    }

    /// Gets the registry's keys for `kid` if asking is allowed now: joins the running fetch, or
    /// starts one unless `kid` is known to be unknown or the last fetch was too recent.
    async fn fetch_for(&self, fetcher: &Arc<dyn KeyFetcher>, kid: &str) -> Result<(), Error> {
        let fetch = {
            let mut fetches = self.fetches.lock();
            let now = Instant::now();
            if let Some(&seen) = fetches.unknown.get(kid) {
                if now.duration_since(seen) < UNKNOWN_TTL {
                    return Err(unknown(kid, "the registry did not have it either"));
                }
                fetches.unknown.remove(kid);
            }
            match (&fetches.running, fetches.last_started) {
                (Some(running), _) => running.clone(),
                (None, Some(last)) if now.duration_since(last) < self.min_interval => {
                    return Err(unknown(kid, "the registry's keys were fetched moments ago"));
                }
                _ => {
                    let fetcher = fetcher.clone();
                    let state = Arc::downgrade(&self.fetches);
                    let fetch = async move {
                        let result = fetcher.fetch().await;
                        // Done: the next unknown key id may start a fetch (rate permitting).
                        if let Some(state) = state.upgrade() {
                            state.lock().running = None;
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    fetches.running = Some(fetch.clone());
                    fetches.last_started = Some(now);
                    fetch
                }
            }
        };
        let keys = fetch.await.map_err(|e| {
            Error::new(
                ErrorKind::Unauthorized,
                format!("token signed with unknown key id `{kid}`; fetching the registry's keys failed: {e}"),
            )
        })?;
        let known = keys.contains_key(kid);
        self.set_keys(keys);
        if !known {
            let mut fetches = self.fetches.lock();
            if fetches.unknown.len() >= UNKNOWN_CAP {
                forget_oldest_half(&mut fetches.unknown);
            }
            fetches.unknown.insert(kid.to_owned(), Instant::now());
        }
        Ok(())
    }
}

fn unknown(kid: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Unauthorized,
        format!("token signed with unknown key id `{kid}` ({why})"),
    )
}

/// Drops the older half of the remembered unknown key ids (rare: only when the cap is hit, so
/// the cost is amortised over as many insertions).
fn forget_oldest_half(unknown: &mut HashMap<String, Instant>) {
    let mut times: Vec<Instant> = unknown.values().copied().collect();
    let mid = times.len() / 2;
    let (_, &mut cut, _) = times.select_nth_unstable(mid);
    unknown.retain(|_, seen| *seen > cut);
}

impl Authenticator for TokenVerifier {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Error>> {
        Box::pin(async move {
            match self.verify(token) {
                Ok(claims) => Ok(Identity::from_claims(&claims)),
                Err(e) if token::is_unknown_key(&e) => {
                    let Some(fetcher) = &self.fetcher else {
                        return Err(e);
                    };
                    // `verify` checked format, claims and expiry before it looked the key up,
                    // so only a plausible token gets this far.
                    let kid = token::peek(token)?.kid;
                    self.fetch_for(fetcher, &kid).await?;
                    self.verify(token).map(|c| Identity::from_claims(&c))
                }
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn mint(kid: &str, k: &SigningKey) -> String {
        let claims = token::Claims {
            kid: kid.into(),
            app: "web".into(),
            iat_ms: 1,
            exp_ms: token::unix_ms(SystemTime::now()) + 3_600_000,
            consume: None,
            cnf: None,
        };
        token::encode(&claims, |m| k.sign(m).to_bytes())
    }

    /// Serves k1 and k2 after `gate` opens, counting fetches.
    struct Registry {
        fetched: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    impl KeyFetcher for Registry {
        fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>> {
            self.fetched.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let _permit = self.gate.acquire().await.unwrap();
                Ok([("k1", key(1)), ("k2", key(2))]
                    .into_iter()
                    .map(|(kid, k)| (kid.to_owned(), k.verifying_key()))
                    .collect())
            })
        }
    }

    fn setup(open: bool) -> (Arc<Registry>, Arc<TokenVerifier>) {
        let registry = Arc::new(Registry {
            fetched: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(if open { 1000 } else { 0 }),
        });
        let verifier = TokenVerifier::new(KeySet::new()).with_fetcher(registry.clone());
        (registry, Arc::new(verifier))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_unknown_key_ids_share_one_fetch() {
        let (registry, verifier) = setup(false);
        let token = mint("k2", &key(2));
        let waiting: Vec<_> = (0..50)
            .map(|_| {
                let (v, t) = (verifier.clone(), token.clone());
                tokio::spawn(async move { v.authenticate(&t).await })
            })
            .collect();
        // Let every handshake reach the fetch, then answer it once.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        registry.gate.add_permits(1000);
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().app(), "web");
        }
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bogus_key_ids_are_refused_without_a_storm_of_fetches() {
        let (registry, verifier) = setup(true);
        // The first bogus key id costs one fetch; the rest within the interval cost none.
        for i in 0..100 {
            let e = verifier
                .authenticate(&mint(&format!("bogus{i}"), &key(9)))
                .await;
            assert_eq!(e.unwrap_err().kind(), ErrorKind::Unauthorized);
        }
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 1);
        // The same bogus id after the interval: remembered as unknown, still no fetch.
        tokio::time::advance(Duration::from_secs(2)).await;
        let e = verifier
            .authenticate(&mint("bogus0", &key(9)))
            .await
            .unwrap_err();
        assert!(e.message().contains("did not have it either"), "{e}");
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 1);
        // The fetch brought the registry's real keys: k2 verifies without asking.
        let ok = verifier.authenticate(&mint("k2", &key(2))).await.unwrap();
        assert_eq!(ok.app(), "web");
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 1);
        // A new id after the interval may ask again (a real rotation is found within 1 s).
        let e = verifier.authenticate(&mint("bogus-new", &key(9))).await;
        assert!(e.is_err());
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 2);
        // Expired or malformed tokens never fetch, whatever their key id.
        tokio::time::advance(Duration::from_secs(2)).await;
        let expired = token::encode(
            &token::Claims {
                kid: "new".into(),
                app: "web".into(),
                iat_ms: 1,
                exp_ms: 2,
                consume: None,
                cnf: None,
            },
            |m| key(3).sign(m).to_bytes(),
        );
        let e = verifier.authenticate(&expired).await.unwrap_err();
        assert!(e.message().contains("expired"), "{e}");
        assert!(verifier.authenticate("sd1.garbage.x").await.is_err());
        assert_eq!(registry.fetched.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_unknown_cache_stays_bounded() {
        let mut unknown = HashMap::new();
        let start = Instant::now();
        for i in 0..UNKNOWN_CAP {
            unknown.insert(i.to_string(), start + Duration::from_millis(i as u64));
        }
        forget_oldest_half(&mut unknown);
        assert!(unknown.len() <= UNKNOWN_CAP / 2);
        assert!(unknown.contains_key(&(UNKNOWN_CAP - 1).to_string()));
    }
}
