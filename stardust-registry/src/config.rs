//! The registry's configuration: a TOML file, or built in code.
//!
//! ```toml
//! listen = "0.0.0.0:7600"             # the CLI's --listen overrides it
//! key_file = "registry-keys.toml"     # relative to this file's directory
//! token_ttl = "1h"                    # default 1 h
//! lease_ttl = "10s"                   # default 10 s
//! dev = false                         # default false
//!
//! [apps.billing]
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # `stardust-registry hash-secret`
//! provide = ["billing.Invoices"]      # absent: may provide any service
//! consume = ["calc.Calculator"]       # absent: may consume any service
//!
//! [tls]                               # absent: plaintext (fine on loopback only)
//! cert_file = "registry.crt"          # PEM chain, leaf first; relative to this file's directory
//! key_file = "registry.key"           # PEM private key
//! client_ca_file = "clients-ca.crt"   # optional: require client certificates (mutual TLS)
//! ```
//!
//! Unknown keys are rejected, naming the key and its line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{self, SecretError};

/// Default token lifetime: one hour.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Default lease lifetime without a heartbeat: ten seconds.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Listen address when neither the config nor the command line names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";

/// Registry configuration.
///
/// Build one in code ([`Config::new`], [`Config::dev`] and the `with_*` methods) or read a file
/// ([`Config::load`], [`Config::from_toml`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on (`host:port`); the binary's `--listen` overrides it.
    pub listen: Option<String>,
    /// Where the Ed25519 signing keys are kept (created on first start). Required outside dev
    /// mode; without it (dev mode) keys live in memory and tokens die with the process.
    pub key_file: Option<PathBuf>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// How long a registration lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Dev mode: unknown apps are created on their first login (see [`Config::dev`]).
    pub dev: bool,
    /// The applications that may log in, by name.
    pub apps: BTreeMap<String, AppConfig>,
    /// TLS certificate and key files; `None` serves plaintext.
    pub tls: Option<TlsFiles>,
}

/// Where the registry's TLS certificate and key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The certificate's private key.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate issued by a CA in this bundle (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Loads the files into a server TLS config.
    pub fn load(&self) -> Result<stardust::tls::ServerTls, stardust::Error> {
        match &self.client_ca_file {
            None => stardust::tls::ServerTls::from_pem_files(&self.cert_file, &self.key_file),
            Some(ca) => {
                stardust::tls::ServerTls::mutual_from_pem_files(&self.cert_file, &self.key_file, ca)
            }
        }
    }
}

/// One application allowed to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Argon2id PHC hash of the app's secret (never the secret itself).
    pub secret_hash: String,
    /// Services the app may register as a provider; `None` means any.
    pub provide: Option<Vec<String>>,
    /// Services the app may discover and call; `None` means any. Copied into its tokens.
    pub consume: Option<Vec<String>>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not the secret, but there is no reason to spread it around either.
        f.debug_struct("AppConfig")
            .field("secret_hash", &"<argon2id hash>")
            .field("provide", &self.provide)
            .field("consume", &self.consume)
            .finish()
    }
}

impl AppConfig {
    /// An app with the given secret hash (see [`hash_secret`](crate::hash_secret)), allowed to
    /// provide and consume anything.
    pub fn new(secret_hash: impl Into<String>) -> AppConfig {
        AppConfig {
            secret_hash: secret_hash.into(),
            provide: None,
            consume: None,
        }
    }

    /// An app whose secret is `secret`, hashed now (slow: argon2id). Convenient in tests and
    /// embedded setups; config files hold hashes only.
    pub fn with_secret(secret: &str) -> Result<AppConfig, SecretError> {
        Ok(AppConfig::new(secret::hash_secret(secret)?))
    }

    /// Restricts the services the app may provide.
    pub fn provide<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> AppConfig {
        self.provide = Some(services.into_iter().map(Into::into).collect());
        self
    }

    /// Restricts the services the app may consume.
    pub fn consume<S: Into<String>>(mut self, services: impl IntoIterator<Item = S>) -> AppConfig {
        self.consume = Some(services.into_iter().map(Into::into).collect());
        self
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

impl Config {
    /// Production defaults: no apps, no key file (set one), token TTL 1 h, lease TTL 10 s,
    /// dev mode off.
    pub fn new() -> Config {
        Config {
            listen: None,
            key_file: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            dev: false,
            apps: BTreeMap::new(),
            tls: None,
        }
    }

    /// A development registry that needs no configuration: dev mode on (any app name can log
    /// in; its first secret becomes its secret until restart) and an in-memory signing key.
    /// Never use it where untrusted clients can reach the registry.
    pub fn dev() -> Config {
        Config {
            dev: true,
            ..Config::new()
        }
    }

    /// Serves over TLS with the certificate chain and key in these PEM files.
    pub fn with_tls(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Config {
        self.tls = Some(TlsFiles {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
        });
        self
    }

    /// Sets the listen address.
    pub fn with_listen(mut self, addr: impl Into<String>) -> Config {
        self.listen = Some(addr.into());
        self
    }

    /// Sets the key file.
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.key_file = Some(path.into());
        self
    }

    /// Sets the token lifetime.
    pub fn with_token_ttl(mut self, ttl: Duration) -> Config {
        self.token_ttl = ttl;
        self
    }

    /// Sets the lease lifetime.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Config {
        self.lease_ttl = ttl;
        self
    }

    /// Turns dev mode on or off.
    pub fn with_dev(mut self, dev: bool) -> Config {
        self.dev = dev;
        self
    }

    /// Adds (or replaces) an application.
    pub fn with_app(mut self, name: impl Into<String>, app: AppConfig) -> Config {
        self.apps.insert(name.into(), app);
        self
    }

    /// Reads and validates a config file. A relative `key_file` is taken relative to the
    /// directory of `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            message: format!("cannot read config file {}: {e}", path.display()),
        })?;
        let mut cfg = Config::from_toml(&text).map_err(|e| ConfigError {
            message: format!("{}: {}", path.display(), e.message),
        })?;
        if let Some(dir) = path.parent() {
            let rebase = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            if let Some(key_file) = &mut cfg.key_file {
                rebase(key_file);
            }
            if let Some(tls) = &mut cfg.tls {
                rebase(&mut tls.cert_file);
                rebase(&mut tls.key_file);
                if let Some(ca) = &mut tls.client_ca_file {
                    rebase(ca);
                }
            }
        }
        Ok(cfg)
    }

    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // Only the message and the line: toml's own rendering quotes the offending line,
            // which could hold a secret pasted in the wrong place.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError {
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message().trim_end()),
                    None => e.message().trim_end().to_owned(),
                },
            }
        })?;
        let mut cfg = Config::new();
        cfg.listen = raw.listen;
        cfg.key_file = raw.key_file;
        if let Some(t) = raw.token_ttl {
            cfg.token_ttl = parse_duration("token_ttl", &t)?;
        }
        if let Some(t) = raw.lease_ttl {
            cfg.lease_ttl = parse_duration("lease_ttl", &t)?;
        }
        cfg.dev = raw.dev.unwrap_or(false);
        cfg.tls = raw.tls.map(|t| TlsFiles {
            cert_file: t.cert_file,
            key_file: t.key_file,
            client_ca_file: t.client_ca_file,
        });
        for (name, app) in raw.apps {
            cfg.apps.insert(
                name,
                AppConfig {
                    secret_hash: app.secret_hash,
                    provide: app.provide,
                    consume: app.consume,
                },
            );
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the config for mistakes: TTLs, app names, secret hashes, service lists, and a key
    /// file outside dev mode. [`RegistryNode`](crate::RegistryNode) runs it before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |message: String| Err(ConfigError { message });
        if self.token_ttl.is_zero() {
            return err("token_ttl must be longer than zero".into());
        }
        if self.lease_ttl.is_zero() {
            return err("lease_ttl must be longer than zero".into());
        }
        if let Some(listen) = &self.listen
            && listen.trim().is_empty()
        {
            return err("listen must be an address like `0.0.0.0:7600`".into());
        }
        if !self.dev && self.key_file.is_none() {
            return err(
                "key_file is required (where the registry keeps its signing keys); \
                 only dev mode may run with an in-memory key"
                    .into(),
            );
        }
        for (name, app) in &self.apps {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return err(format!(
                    "apps.{name:?}: app names must be non-empty, without whitespace"
                ));
            }
            if let Err(e) = secret::validate_hash(&app.secret_hash) {
                return err(format!("apps.{name}.secret_hash: {e}"));
            }
            for (field, list) in [("provide", &app.provide), ("consume", &app.consume)] {
                for s in list.iter().flatten() {
                    if s.is_empty() || s.chars().any(char::is_whitespace) {
                        return err(format!(
                            "apps.{name}.{field}: service names must be non-empty, without whitespace (got {s:?})"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError {
        message: format!("{field}: `{text}` is not a duration like \"10s\" or \"1h\" ({e})"),
    })
}

/// A config that could not be read or is invalid; the message says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }

    /// What is wrong, and where.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid registry config: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    key_file: Option<PathBuf>,
    token_ttl: Option<String>,
    lease_ttl: Option<String>,
    dev: Option<bool>,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    secret_hash: String,
    provide: Option<Vec<String>>,
    consume: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        secret::hash_secret("pw").unwrap()
    }

    #[test]
    fn full_config() {
        let text = format!(
            r#"
listen = "0.0.0.0:7600"
key_file = "keys.toml"
token_ttl = "2h"
lease_ttl = "500ms"
dev = false

[apps.billing]
secret_hash = "{h}"
provide = ["billing.Invoices"]
consume = ["calc.Calculator", "auth.Users"]

[apps.web]
secret_hash = "{h}"
"#,
            h = hash()
        );
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.listen.as_deref(), Some("0.0.0.0:7600"));
        assert_eq!(cfg.key_file, Some(PathBuf::from("keys.toml")));
        assert_eq!(cfg.token_ttl, Duration::from_secs(7200));
        assert_eq!(cfg.lease_ttl, Duration::from_millis(500));
        assert!(!cfg.dev);
        let billing = &cfg.apps["billing"];
        assert_eq!(billing.provide, Some(vec!["billing.Invoices".to_owned()]));
        assert_eq!(billing.consume.as_ref().unwrap().len(), 2);
        assert_eq!(cfg.apps["web"].provide, None);
        assert_eq!(cfg.apps["web"].consume, None);
    }

    #[test]
    fn defaults() {
        let cfg = Config::from_toml("key_file = \"k\"").unwrap();
        assert_eq!(cfg.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(cfg.lease_ttl, DEFAULT_LEASE_TTL);
        assert!(!cfg.dev && cfg.apps.is_empty() && cfg.listen.is_none());
        let dev = Config::from_toml("dev = true").unwrap();
        assert!(dev.dev && dev.key_file.is_none());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("key_file = \"k\"\nlistn = \"x:1\"").unwrap_err();
        assert!(e.message().contains("unknown field `listn`"), "{e}");
        assert!(e.message().contains("line 2"), "{e}");

        let text = format!(
            "key_file = \"k\"\n[apps.web]\nsecret_hash = \"{}\"\nsecret = \"hunter2\"\n",
            hash()
        );
        let e = Config::from_toml(&text).unwrap_err();
        assert!(e.message().contains("unknown field `secret`"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "the value leaked: {e}");
    }

    #[test]
    fn bad_values() {
        let e = Config::from_toml("key_file = \"k\"\n[apps.web]\nsecret_hash = \"hunter2\"\n")
            .unwrap_err();
        assert!(e.message().contains("apps.web.secret_hash"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "the secret leaked: {e}");

        let e = Config::from_toml("key_file = \"k\"\ntoken_ttl = \"forever\"").unwrap_err();
        assert!(e.message().contains("token_ttl"), "{e}");
        let e = Config::from_toml("key_file = \"k\"\nlease_ttl = \"0s\"").unwrap_err();
        assert!(e.message().contains("lease_ttl"), "{e}");
        let e = Config::from_toml("").unwrap_err();
        assert!(e.message().contains("key_file is required"), "{e}");
        let e = Config::from_toml("dev = \"yes\"").unwrap_err();
        assert!(e.message().contains("line 1"), "{e}");
    }

    #[test]
    fn relative_key_file_follows_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, "key_file = \"keys.toml\"").unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.key_file, Some(dir.path().join("keys.toml")));
        let e = Config::load(dir.path().join("missing.toml")).unwrap_err();
        assert!(e.message().contains("cannot read"), "{e}");
    }
}
