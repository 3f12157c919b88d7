//! Authentication: who is calling, proven by a token the registry signed.
//!
//! - A client presents a token when it connects (handshake metadata key [`TOKEN_KEY`]) and
//!   presents a renewed one on the live connection before it expires (the built-in
//!   `stardust.Connection/authenticate` call), using its [`Credentials`].
//! - A server checks it with its [`Authenticator`] (usually a [`TokenVerifier`] holding the
//!   registry's public keys) and remembers the caller's [`Identity`] for the connection: handlers
//!   see it as [`Context::caller`](crate::Context::caller), and every call is checked against its
//!   expiry and its list of services it may call.
//!
//! Servers refuse connections without a valid token unless their builder explicitly allows
//! anonymous callers.

pub mod token;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;

use crate::error::{Error, ErrorKind};
use token::KeySet;

/// Handshake metadata key under which a client presents its token.
pub const TOKEN_KEY: &str = "token";

/// The built-in service every server answers for connection-level requests.
pub const CONNECTION_SERVICE: &str = "stardust.Connection";
/// Method of [`CONNECTION_SERVICE`] that presents a (renewed) token: `authenticate(token: str)`.
pub const AUTHENTICATE_METHOD: &str = "authenticate";

/// A boxed future, as returned by the authentication traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a connection belongs to, once its token was accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    app: Arc<str>,
    expires_at: Option<SystemTime>,
    consume: Option<Arc<[String]>>,
}

impl Identity {
    /// An identity for application `app`, without expiry or restrictions.
    pub fn new(app: impl Into<Arc<str>>) -> Identity {
        Identity {
            app: app.into(),
            expires_at: None,
            consume: None,
        }
    }

    /// The identity a verified token describes.
    pub fn from_claims(claims: &token::Claims) -> Identity {
        Identity {
            app: claims.app.as_str().into(),
            expires_at: Some(claims.expires_at()),
            consume: claims.consume.as_ref().map(|c| c.clone().into()),
        }
    }

    /// Sets when the identity stops being valid.
    pub fn with_expiry(mut self, at: SystemTime) -> Identity {
        self.expires_at = Some(at);
        self
    }

    /// Restricts the services the identity may call.
    pub fn with_consume(mut self, services: Vec<String>) -> Identity {
        self.consume = Some(services.into());
        self
    }

    /// The application id.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Shared form of the application id (what handlers see as the caller).
    pub fn app_arc(&self) -> &Arc<str> {
        &self.app
    }

    /// When the identity expires, if it does.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The services the identity may call, if restricted.
    pub fn consume(&self) -> Option<&[String]> {
        self.consume.as_deref()
    }

    /// Checks that a call to `service` at `now` is allowed.
    pub fn check(&self, service: &str, now: SystemTime) -> Result<(), Error> {
        if let Some(exp) = self.expires_at
            && now >= exp
        {
            return Err(Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "the token of app `{}` expired; present a renewed token",
                    self.app
                ),
            ));
        }
        if let Some(allowed) = &self.consume
            && !allowed.iter().any(|s| s == service)
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "app `{}` is not allowed to call service `{service}`",
                    self.app
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("app", &self.app)
            .field("expires_at", &self.expires_at)
            .field("consume", &self.consume)
            .finish()
    }
}

/// Checks the token a client presents (server side).
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token`, returning the identity it proves. Errors should be `Unauthorized` with
    /// a message saying what is wrong, never containing the token.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Error>>;
}

/// Supplies the token a client presents (client side).
pub trait Credentials: Send + Sync + 'static {
    /// The current token and when it expires. Called at connect time and again before expiry
    /// to renew it on live connections.
    fn token(&self) -> BoxFuture<'_, Result<(String, Option<SystemTime>), Error>>;
}

/// A fixed token (tests, tools); it is never renewed.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are secrets: never printed.
        f.write_str("StaticToken(..)")
    }
}

impl Credentials for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<(String, Option<SystemTime>), Error>> {
        let expiry = token::peek(&self.0).ok().map(|c| c.expires_at());
        Box::pin(async move { Ok((self.0.clone(), expiry)) })
    }
}

/// Fetches the registry's current public keys (for a key id a verifier has not seen yet).
pub trait KeyFetcher: Send + Sync + 'static {
    /// All keys the registry currently accepts tokens from.
    fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>>;
}

/// An [`Authenticator`] for registry-signed tokens: verifies locally with known public keys and
/// fetches the registry's keys when it meets a key id it does not know (after a key rotation).
pub struct TokenVerifier {
    keys: RwLock<KeySet>,
    fetcher: Option<Arc<dyn KeyFetcher>>,
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
        }
    }

    /// Fetches keys through `fetcher` when a token names an unknown key id.
    pub fn with_fetcher(mut self, fetcher: Arc<dyn KeyFetcher>) -> TokenVerifier {
        self.fetcher = Some(fetcher);
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
}

impl Authenticator for TokenVerifier {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Error>> {
        Box::pin(async move {
            match self.verify(token) {
                Ok(claims) => Ok(Identity::from_claims(&claims)),
                Err(e) if token::is_unknown_key(&e) && self.fetcher.is_some() => {
                    let fetcher = self.fetcher.as_ref().expect("checked");
                    let keys = fetcher.fetch().await.map_err(|fe| {
                        Error::new(
                            ErrorKind::Unauthorized,
                            format!("{}; fetching the registry's keys failed: {fe}", e.message()),
                        )
                    })?;
                    self.set_keys(keys);
                    self.verify(token).map(|c| Identity::from_claims(&c))
                }
                Err(e) => Err(e),
            }
        })
    }
}
