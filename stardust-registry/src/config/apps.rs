//! The apps a registry knows: their secret hashes, what they may provide and consume, and their
//! roles.

use serde::Deserialize;

use super::SecretError;
use crate::secret;

/// The role that may change the traffic rules (`roles = ["admin"]` under `[apps.NAME]`).
pub const ADMIN_ROLE: &str = "admin";

/// Every role an app may have.
pub const ROLES: &[&str] = &[ADMIN_ROLE];

/// One application allowed to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Argon2id PHC hash of the app's secret (never the secret itself).
    pub secret_hash: String,
    /// Services the app may register as a provider; `"*"` stands for any. `None` (no list in
    /// the config) means **none**: least privilege (dev mode alone lets every app provide
    /// anything).
    pub provide: Option<Vec<String>>,
    /// Services the app may discover and call; `None`, or a list with `"*"`, means any. Copied
    /// into its tokens.
    pub consume: Option<Vec<String>>,
    /// What else the app may do: [`ADMIN_ROLE`] lets it change the traffic rules. None by
    /// default, dev mode included.
    pub roles: Vec<String>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the secret, but there is no reason to spread it around either.
        f.debug_struct("AppConfig")
            .field("secret_hash", &"<argon2id hash>")
            .field("provide", &self.provide)
            .field("consume", &self.consume)
            .field("roles", &self.roles)
            .finish()
    }
}

impl AppConfig {
    /// An app with the given secret hash (see [`hash_secret`](crate::hash_secret)), allowed to
    /// consume anything and to provide nothing until [`provide`](AppConfig::provide) names
    /// what (`["*"]` for anything).
    pub fn new(secret_hash: impl Into<String>) -> AppConfig {
        AppConfig {
            secret_hash: secret_hash.into(),
            provide: None,
            consume: None,
            roles: Vec::new(),
        }
    }

    /// An app whose secret is `secret`, hashed now (slow: argon2id). Convenient in tests and
    /// embedded setups; config files hold hashes only.
    pub fn with_secret(secret: &str) -> Result<AppConfig, SecretError> {
        Ok(AppConfig::new(secret::hash_secret(secret)?))
    }

    /// The services the app may provide (`["*"]`: any).
    pub fn provide<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> AppConfig {
        self.provide = Some(services.into_iter().map(Into::into).collect());
        self
    }

    /// Restricts the services the app may consume.
    pub fn consume<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> AppConfig {
        self.consume = Some(services.into_iter().map(Into::into).collect());
        self
    }

    /// Gives the app these roles (e.g. `[ADMIN_ROLE]`).
    pub fn roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> AppConfig {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the app has the [`ADMIN_ROLE`].
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) secret_hash: String,
    pub(super) provide: Option<Vec<String>>,
    pub(super) consume: Option<Vec<String>>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
}
