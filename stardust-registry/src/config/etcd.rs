//! How a registry node reaches a shared etcd store (`[etcd]`).

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::store::StoreConfig;

/// How a registry node reaches a shared etcd store ([`Config::etcd`](crate::Config::etcd),
/// `[etcd]` in the file).
///
/// TLS (an `etcds://` store URL) needs [`ca_file`](Self::ca_file); a client certificate is for
/// an etcd started with `--client-cert-auth`; `user` and `password_file` for one with
/// authentication enabled (the user's role needs read-write access to the store's prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdAccess {
    /// CA bundle (PEM) that etcd's server certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// etcd user name.
    pub user: Option<String>,
    /// File holding the user's password (one trailing newline is ignored).
    pub password_file: Option<PathBuf>,
}

impl EtcdAccess {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        *self != EtcdAccess::default()
    }

    /// Trusts `ca_file` for etcd's certificate (use with an `etcds://` store).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> EtcdAccess {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key to etcd.
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> EtcdAccess {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Authenticates to etcd as `user`, with the password in `password_file`.
    pub fn with_user(
        mut self,
        user: impl Into<String>,
        password_file: impl Into<PathBuf>,
    ) -> EtcdAccess {
        self.user = Some(user.into());
        self.password_file = Some(password_file.into());
        self
    }

    pub(super) fn validate(&self, store: &StoreConfig) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(m));
        let tls = match store {
            StoreConfig::Etcd { endpoints, .. } => {
                endpoints.iter().any(|e| e.starts_with("https://"))
            }
            _ if self.is_set() => {
                return err(
                    "[etcd] settings are only used with an etcd store (store = \"etcd://...\")"
                        .into(),
                );
            }
            _ => return Ok(()),
        };
        if tls && self.ca_file.is_none() {
            return err(format!(
                "store `{store}` speaks TLS: set [etcd] ca_file to the CA bundle etcd's certificate is issued by"
            ));
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return err(format!(
                "[etcd] ca_file and cert_file need TLS: write the store as `etcds://...` (not `{store}`)"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return err("[etcd] cert_file and key_file go together".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return err("[etcd] user and password_file go together".into());
        }
        if self
            .user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.chars().any(char::is_whitespace))
        {
            return err("[etcd] user must be a non-empty name without whitespace".into());
        }
        Ok(())
    }
}

/// `[etcd]` as written in the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEtcd {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

impl From<RawEtcd> for EtcdAccess {
    fn from(e: RawEtcd) -> EtcdAccess {
        EtcdAccess {
            ca_file: e.ca_file,
            cert_file: e.cert_file,
            key_file: e.key_file,
            user: e.user,
            password_file: e.password_file,
        }
    }
}
