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
//! anonymous callers: [`ServerBuilder::authenticator`](crate::ServerBuilder::authenticator) and
//! [`ServerBuilder::allow_anonymous`](crate::ServerBuilder::allow_anonymous); a server with neither
//! does not start. Clients present tokens with
//! [`ClientBuilder::credentials`](crate::ClientBuilder::credentials).
//!
//! Tokens are secrets: they never appear in logs, error messages or `Debug` output of this crate.

pub mod proof;
pub mod token;
// Verifying registry-signed tokens needs Ed25519: the `registry` feature.
#[cfg(feature = "registry")]
mod verifier;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
#[cfg(not(feature = "registry"))]
pub(crate) use proof::ProofKey;
#[cfg(feature = "registry")]
pub use proof::ProofKey;
#[cfg(feature = "registry")]
pub use verifier::{KeyFetcher, TokenVerifier};

/// Handshake metadata key under which a client presents its token.
pub const TOKEN_KEY: &str = "token";

/// The built-in service every server answers for connection-level requests.
pub const CONNECTION_SERVICE: &str = "stardust.Connection";
/// Method of [`CONNECTION_SERVICE`] that presents a (renewed) token: `authenticate(token: str)`.
pub const AUTHENTICATE_METHOD: &str = "authenticate";

/// What a server without an [`Authenticator`] answers to `stardust.Connection/authenticate`
/// (error code 8). A client seeing it stops renewing its token on that connection: the server
/// never looked at it.
pub const NO_AUTHENTICATOR: &str = "this server does not accept tokens";

/// The reason a server requiring tokens refuses a handshake without one.
pub const TOKEN_REQUIRED: &str =
    "this provider requires an access token; log in to the registry first";

/// A boxed future, as returned by the authentication traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a connection belongs to, once its token was accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    app: Arc<str>,
    expires_at: Option<SystemTime>,
    consume: Option<Arc<[String]>>,
    bound_key: Option<[u8; 32]>,
}

impl Identity {
    /// An identity for application `app`, without expiry or restrictions.
    pub fn new(app: impl Into<Arc<str>>) -> Identity {
        Identity {
            app: app.into(),
            expires_at: None,
            consume: None,
            bound_key: None,
        }
    }

    /// The identity a verified token describes.
    pub fn from_claims(claims: &token::Claims) -> Identity {
        Identity {
            app: claims.app.as_str().into(),
            expires_at: Some(claims.expires_at()),
            consume: claims.consume.as_ref().map(|c| c.clone().into()),
            bound_key: claims.cnf,
        }
    }

    /// Binds the identity to the holder of `key` (proof of possession): a server then accepts
    /// it only from a client that proves it holds the private half.
    pub fn with_bound_key(mut self, key: [u8; 32]) -> Identity {
        self.bound_key = Some(key);
        self
    }

    /// The public key the token was bound to (its `cnf` claim), if it was.
    pub fn bound_key(&self) -> Option<[u8; 32]> {
        self.bound_key
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
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("app", &self.app)
            .field("expires_at", &self.expires_at)
            .field("consume", &self.consume)
            .field("bound", &self.bound_key.is_some())
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

    /// The key the tokens are bound to (proof of possession), if they are: the client proves
    /// it holds it when a server challenges. `None` (the default): bearer tokens.
    #[cfg(feature = "registry")]
    fn proof_key(&self) -> Option<ProofKey> {
        None
    }
}

/// A fixed token (tests, tools); it is never renewed. For a token bound to a key (proof of
/// possession), give the client the key as well:
/// [`ClientBuilder::proof_key`](crate::ClientBuilder::proof_key).
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

/// `err` without `token` in it: if its message quotes the token, the message is withheld.
pub(crate) fn redact(err: Error, token: &str) -> Error {
    if !token.is_empty() && err.message().contains(token) {
        return Error::new(
            err.kind(),
            "the access token was refused (the reason quoted the token and is withheld)",
        );
    }
    err
}

/// An authentication failure that is safe to send and log: an authenticator's error is passed
/// on as `Unauthorized` (or `PermissionDenied` when it said so), never quoting the token.
pub(crate) fn refusal(err: Error, token: &str) -> Error {
    let err = redact(err, token);
    match err.kind() {
        ErrorKind::Unauthorized | ErrorKind::PermissionDenied => err,
        _ => Error::new(ErrorKind::Unauthorized, err.message().to_owned()),
    }
}

/// How a server treats tokens (its builder's choice).
#[derive(Clone)]
pub(crate) struct ServerAuth {
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) allow_anonymous: bool,
    /// Refuse tokens not bound to a key (bearer tokens); on by default.
    pub(crate) require_proof: bool,
    /// Unbound tokens accepted (handshakes and renewals) while `require_proof` is off.
    pub(crate) unbound_accepted: Arc<AtomicU64>,
}

impl Default for ServerAuth {
    fn default() -> ServerAuth {
        ServerAuth {
            authenticator: None,
            allow_anonymous: false,
            require_proof: true,
            unbound_accepted: Arc::default(),
        }
    }
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAuth")
            .field("authenticator", &self.authenticator.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("require_proof", &self.require_proof)
            .finish()
    }
}

impl ServerAuth {
    /// Fails unless the builder chose between tokens and anonymous callers.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.authenticator.is_none() && !self.allow_anonymous {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "no authentication configured: call .authenticator(..) to require registry \
                 tokens, or .allow_anonymous() to accept any caller",
            ));
        }
        Ok(())
    }

    /// Decides whether a handshake presenting `token` is accepted, and as whom (`None`:
    /// anonymous). Errors are `Unauthorized` (or `PermissionDenied`) and never quote the token.
    pub(crate) async fn admit(&self, token: Option<&str>) -> Result<Option<Identity>, Error> {
        match (token, &self.authenticator) {
            (Some(token), Some(auth)) => auth
                .authenticate(token)
                .await
                .map(Some)
                .map_err(|e| refusal(e, token)),
            (None, Some(_)) if !self.allow_anonymous => {
                Err(Error::new(ErrorKind::Unauthorized, TOKEN_REQUIRED))
            }
            // Nothing to verify it with: the connection is anonymous, as configured.
            (Some(_), None) => Ok(None),
            (None, _) => Ok(None),
        }
    }

    /// The key a handshake must prove possession of, given the identity its token proved
    /// (`None`: anonymous) and the key the client announced without a token: the token's key
    /// when it is bound; nothing for an unbound token (refused when proof is required, counted
    /// otherwise); the announced key for an anonymous connection.
    pub(crate) fn key_to_prove(
        &self,
        identity: Option<&Identity>,
        announced: Option<[u8; 32]>,
    ) -> Result<Option<[u8; 32]>, Error> {
        let Some(identity) = identity else {
            return Ok(announced);
        };
        match identity.bound_key() {
            Some(bound) if announced.is_some_and(|a| a != bound) => Err(Error::new(
                ErrorKind::Unauthorized,
                "the key announced in the handshake is not the one the access token is bound to",
            )),
            Some(bound) => Ok(Some(bound)),
            None => self.unbound().map(|()| None),
        }
    }

    /// Checks a renewed token's binding against the key the connection proved: a connection
    /// proves one key for life, and every token it presents must be bound to it.
    pub(crate) fn check_renewal(
        &self,
        identity: &Identity,
        proven: Option<[u8; 32]>,
    ) -> Result<(), Error> {
        let refuse = |why: &str| Err(Error::new(ErrorKind::Unauthorized, why.to_owned()));
        match (identity.bound_key(), proven) {
            (Some(bound), Some(proven)) if bound == proven => Ok(()),
            (Some(_), Some(_)) => refuse(
                "the renewed access token is bound to another key than the one this \
                 connection proved",
            ),
            (Some(_), None) => refuse(
                "a token bound to a key (proof of possession) must be presented in a new \
                 connection's handshake, where the key is proven; reconnect",
            ),
            (None, Some(_)) => refuse(
                "the renewed access token is not bound to a key, and this connection proved \
                 one; present a token bound to the same key",
            ),
            (None, None) => self.unbound(),
        }
    }

    /// An unbound (bearer) token: refused when proof is required, counted when not.
    fn unbound(&self) -> Result<(), Error> {
        if self.require_proof {
            return Err(Error::new(ErrorKind::Unauthorized, proof::PROOF_REQUIRED));
        }
        self.unbound_accepted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The identity of one server connection: set by the handshake, replaced by renewals, read by
/// every call.
///
/// The app id never changes once known (a renewal for another app is refused), so handlers
/// borrow it without locking. The rest (expiry, services allowed) is only read when the identity
/// restricts anything: an anonymous or unrestricted connection pays one atomic load per call.
#[derive(Default)]
pub(crate) struct ConnAuth {
    app: OnceLock<Arc<str>>,
    /// The public key the client proved it holds in the handshake, if it proved one.
    proven: Option<[u8; 32]>,
    /// Whether calls must be checked against `grant`.
    restricted: AtomicBool,
    grant: RwLock<Option<Grant>>,
}

struct Grant {
    identity: Identity,
    /// The expiry on the monotonic clock (converted once, when the identity is set), which is
    /// what every call compares with the time it already read.
    deadline: Option<Instant>,
}

impl fmt::Debug for ConnAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnAuth")
            .field("app", &self.app.get())
            .finish_non_exhaustive()
    }
}

/// `at` on the monotonic clock; `None` if it is too far away to represent.
fn to_instant(at: SystemTime) -> Option<Instant> {
    let (wall, mono) = (SystemTime::now(), Instant::now());
    match at.duration_since(wall) {
        Ok(ahead) => mono.checked_add(ahead),
        Err(past) => Some(mono.checked_sub(past.duration()).unwrap_or(mono)),
    }
}

impl ConnAuth {
    /// A connection that starts with `identity` (`None`: anonymous), whose client proved it
    /// holds `proven` (proof of possession) in the handshake.
    pub(crate) fn new(identity: Option<Identity>, proven: Option<[u8; 32]>) -> ConnAuth {
        let auth = ConnAuth {
            proven,
            ..ConnAuth::default()
        };
        if let Some(identity) = identity {
            auth.set(identity).expect("a new connection has no app yet");
        }
        auth
    }

    /// The app the connection belongs to, if it authenticated.
    #[inline]
    pub(crate) fn app(&self) -> Option<&str> {
        self.app.get().map(|a| &**a)
    }

    /// The key the client proved it holds in the handshake, if it proved one.
    pub(crate) fn proven_key(&self) -> Option<[u8; 32]> {
        self.proven
    }

    /// The current identity, if the connection authenticated.
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.grant.read().as_ref().map(|g| g.identity.clone())
    }

    /// Installs `identity` (a renewal, or the first token of an anonymous connection). A token of
    /// another app than the connection's is refused: a connection belongs to one app for life.
    pub(crate) fn set(&self, identity: Identity) -> Result<(), Error> {
        let deadline = identity.expires_at().and_then(to_instant);
        let restricted = identity.expires_at().is_some() || identity.consume().is_some();
        let mut grant = self.grant.write();
        match self.app.get() {
            Some(app) if **app != *identity.app() => {
                return Err(Error::new(
                    ErrorKind::Unauthorized,
                    format!(
                        "the token is for app `{}` but this connection belongs to app `{app}`; \
                         open a new connection to act as another app",
                        identity.app()
                    ),
                ));
            }
            Some(_) => {}
            None => {
                let _ = self.app.set(identity.app_arc().clone());
            }
        }
        *grant = Some(Grant { identity, deadline });
        self.restricted.store(restricted, Ordering::Release);
        Ok(())
    }

    /// Checks a call to `service` received at `now`: `Unauthorized` once the token expired,
    /// `PermissionDenied` for a service the identity may not call.
    #[inline]
    pub(crate) fn check(&self, service: &str, now: Instant) -> Result<(), Error> {
        if !self.restricted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_grant(service, now)
    }

    #[cold]
    #[inline(never)]
    fn check_grant_failed(identity: &Identity, expired: bool, service: &str) -> Error {
        if expired {
            Error::new(
                ErrorKind::Unauthorized,
                format!(
                    "the access token of app `{}` expired; present a renewed token on this \
                     connection (stardust.Connection/authenticate) or reconnect with a new one",
                    identity.app()
                ),
            )
        } else {
            Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "app `{}` is not allowed to call service `{service}`",
                    identity.app()
                ),
            )
        }
    }

    fn check_grant(&self, service: &str, now: Instant) -> Result<(), Error> {
        let grant = self.grant.read();
        let Some(grant) = grant.as_ref() else {
            return Ok(());
        };
        if let Some(deadline) = grant.deadline
            && now >= deadline
        {
            return Err(Self::check_grant_failed(&grant.identity, true, service));
        }
        if let Some(allowed) = grant.identity.consume()
            && !allowed.iter().any(|s| s == service)
        {
            return Err(Self::check_grant_failed(&grant.identity, false, service));
        }
        Ok(())
    }
}

/// A client's [`Credentials`], shared by its connections; `Debug` prints nothing of them.
#[derive(Clone)]
pub(crate) struct SharedCredentials(pub(crate) Arc<dyn Credentials>);

impl fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ident(app: &str) -> Identity {
        Identity::new(app)
    }

    #[test]
    fn anonymous_connections_are_unrestricted() {
        let auth = ConnAuth::new(None, None);
        assert_eq!(auth.app(), None);
        assert!(auth.identity().is_none());
        assert!(auth.check("any.Service", Instant::now()).is_ok());
    }

    #[test]
    fn expiry_and_consume_list_are_checked() {
        let now = Instant::now();
        let auth = ConnAuth::new(
            Some(
                ident("web")
                    .with_expiry(SystemTime::now() + Duration::from_secs(60))
                    .with_consume(vec!["calc.Calculator".into()]),
            ),
            None,
        );
        assert_eq!(auth.app(), Some("web"));
        assert!(auth.check("calc.Calculator", now).is_ok());
        let e = auth.check("admin.Admin", now).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.message().contains("admin.Admin"), "{e}");
        let later = now + Duration::from_secs(61);
        let e = auth.check("calc.Calculator", later).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(e.message().contains("expired"), "{e}");

        // A renewal moves the deadline.
        auth.set(
            ident("web")
                .with_expiry(SystemTime::now() + Duration::from_secs(120))
                .with_consume(vec!["calc.Calculator".into()]),
        )
        .unwrap();
        assert!(auth.check("calc.Calculator", later).is_ok());
    }

    #[test]
    fn renewal_for_another_app_is_refused() {
        let auth = ConnAuth::new(Some(ident("web")), None);
        let e = auth.set(ident("admin")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert_eq!(auth.app(), Some("web"));
        // An anonymous connection may log in once, then is bound to that app.
        let anon = ConnAuth::new(None, None);
        anon.set(ident("web")).unwrap();
        assert_eq!(anon.app(), Some("web"));
        assert!(anon.set(ident("admin")).is_err());
    }

    #[test]
    fn refusals_never_quote_the_token() {
        let token = "sd1.secret.sig";
        let e = refusal(
            Error::new(ErrorKind::Internal, format!("bad token {token}")),
            token,
        );
        assert_eq!(e.kind(), ErrorKind::Unauthorized);
        assert!(!e.message().contains(token));
        let e = refusal(Error::new(ErrorKind::Internal, "registry down"), token);
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Unauthorized, "registry down")
        );
        assert!(!format!("{:?}", StaticToken(token.into())).contains("secret"));
    }

    #[tokio::test]
    async fn admission_follows_the_configuration() {
        let none = ServerAuth::default();
        assert!(
            none.validate()
                .unwrap_err()
                .message()
                .contains(".allow_anonymous()")
        );

        struct AcceptAll;
        impl Authenticator for AcceptAll {
            fn authenticate<'a>(
                &'a self,
                token: &'a str,
            ) -> BoxFuture<'a, Result<Identity, Error>> {
                Box::pin(async move {
                    if token == "good" {
                        Ok(Identity::new("web"))
                    } else {
                        Err(Error::new(ErrorKind::Unauthorized, "bad"))
                    }
                })
            }
        }
        let strict = ServerAuth {
            authenticator: Some(Arc::new(AcceptAll)),
            ..ServerAuth::default()
        };
        let e = strict.admit(None).await.unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Unauthorized, TOKEN_REQUIRED)
        );
        let id = strict.admit(Some("good")).await.unwrap().unwrap();
        assert_eq!(id.app(), "web");
        assert!(strict.admit(Some("evil")).await.is_err());

        let both = ServerAuth {
            allow_anonymous: true,
            ..strict
        };
        assert!(both.admit(None).await.unwrap().is_none());
        assert!(both.admit(Some("evil")).await.is_err());

        let anonymous = ServerAuth {
            allow_anonymous: true,
            ..ServerAuth::default()
        };
        anonymous.validate().unwrap();
        assert!(anonymous.admit(Some("anything")).await.unwrap().is_none());
    }

    #[test]
    fn what_a_handshake_must_prove() {
        let strict = ServerAuth::default();
        let bound = ident("web").with_bound_key([1; 32]);
        let unbound = ident("web");
        // A bound token: its key, whatever else was announced (as long as it agrees).
        let prove = |auth: &ServerAuth, id: Option<&Identity>, announced| {
            auth.key_to_prove(id, announced).unwrap()
        };
        assert_eq!(prove(&strict, Some(&bound), None), Some([1; 32]));
        assert_eq!(prove(&strict, Some(&bound), Some([1; 32])), Some([1; 32]));
        assert!(strict.key_to_prove(Some(&bound), Some([2; 32])).is_err());
        // An unbound token: refused by default, counted when proof is not required.
        let e = strict.key_to_prove(Some(&unbound), None).unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::Unauthorized, proof::PROOF_REQUIRED)
        );
        let lenient = ServerAuth {
            require_proof: false,
            ..ServerAuth::default()
        };
        assert_eq!(prove(&lenient, Some(&unbound), Some([3; 32])), None);
        assert_eq!(lenient.unbound_accepted.load(Ordering::Relaxed), 1);
        // Anonymous: the announced key, if any.
        assert_eq!(prove(&strict, None, Some([3; 32])), Some([3; 32]));
        assert_eq!(prove(&strict, None, None), None);
    }

    #[test]
    fn renewals_keep_the_key_the_connection_proved() {
        let strict = ServerAuth::default();
        let bound = |k| ident("web").with_bound_key([k; 32]);
        assert!(strict.check_renewal(&bound(1), Some([1; 32])).is_ok());
        for (identity, proven) in [
            (bound(2), Some([1; 32])),
            (bound(1), None),
            (ident("web"), Some([1; 32])),
            (ident("web"), None),
        ] {
            let e = strict.check_renewal(&identity, proven).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
        }
        let lenient = ServerAuth {
            require_proof: false,
            ..ServerAuth::default()
        };
        assert!(lenient.check_renewal(&ident("web"), None).is_ok());
        assert_eq!(lenient.unbound_accepted.load(Ordering::Relaxed), 1);
    }
}
