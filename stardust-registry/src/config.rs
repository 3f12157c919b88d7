//! The registry's configuration: a TOML file, or built in code.
//!
//! ```toml
//! listen = "0.0.0.0:7600"             # the CLI's --listen overrides it
//! http_listen = "127.0.0.1:7601"      # monitoring: /metrics, /api, console; "off" disables it
//! trace_url = "https://jaeger.example/trace/{trace_id}"  # the console's trace links (optional)
//! key_file = "registry-keys.toml"     # relative to this file's directory
//! rules_file = "registry.rules.toml"  # traffic rules (memory store); default: <config stem>.rules.toml
//! token_ttl = "1h"                    # default 1 h
//! lease_ttl = "10s"                   # default 10 s
//! dev = false                         # default false
//! store = "memory"                    # or "etcd://127.0.0.1:2379/stardust": nodes sharing state
//!                                     # ("etcds://..." over TLS, with [etcd] below)
//!
//! [apps.billing]
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # `stardust-registry hash-secret`
//! provide = ["billing.Invoices"]      # absent: may provide NO service; ["*"]: any
//! consume = ["calc.Calculator"]       # absent or ["*"]: may consume any service
//!
//! [apps.ops]
//! secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! roles = ["admin"]                   # may change traffic rules (`stardust-registry route|fault`)
//!
//! [tls]                               # absent: plaintext (fine on loopback only)
//! cert_file = "registry.crt"          # PEM chain, leaf first; relative to this file's directory
//! key_file = "registry.key"           # PEM private key
//! client_ca_file = "clients-ca.crt"   # optional: require client certificates (mutual TLS)
//! # Every key optional; these are the defaults (see [`LoginThrottle`]).
//! [login_throttle]
//! free_failures = 5           # failed logins per app, per address, per app-and-address before backoff
//! backoff_min = "1s"          # the first backoff; doubles with every further failure
//! backoff_max = "5m"          # the longest backoff
//! forget_after = "1h"         # failures (and addresses an app logged in from) are forgotten after this
//! attempt_burst = 20          # logins one address may start at once...
//! attempts_per_second = 5.0   # ...and then per second
//! max_tracked = 10000         # apps, addresses and pairs remembered (each table; oldest go first)
//! # max_concurrent_hashes = 1 # secrets checked at once; default: half the CPUs, at least 1
//! max_queued = 64             # logins that may wait for a check; more are refused at once
//! queue_timeout = "2s"        # longest wait for a check before the login is refused
//!
//! # Every key optional; these are the defaults (see [`Limits`]).
//! [limits]                    # what one connection may send and make the registry keep
//! max_subscriptions = 1024    # subscriptions per connection
//! max_registrations = 256     # registrations (service + endpoint) per connection
//! max_name_len = 256          # bytes in a service name (and a reported method name)
//! max_version_len = 128       # bytes in a version or version requirement
//! max_tags = 32               # tags per registration
//! max_tag_len = 256           # bytes in a tag key, and in a tag value
//! max_report_entries = 16384  # served + called entries in one heartbeat's status report
//!
//! [etcd]                      # how to reach a shared etcd store (all optional)
//! ca_file = "etcd-ca.crt"     # etcds:// only: the CA bundle etcd's certificate is checked against
//! cert_file = "etcd-client.crt"   # a client certificate, for etcd's --client-cert-auth
//! key_file = "etcd-client.key"
//! user = "stardust"           # etcd authentication (a role with read-write on the prefix)
//! password_file = "etcd-password" # the password, alone in a file (never in this one)
//! ```
//!
//! Unknown keys are rejected, naming the key and its line.

mod apps;
mod etcd;
mod limits;
mod login_throttle;
// Not re-exported here: `StoreConfig` has always been public at the crate root alone, so lib.rs
// re-exports it from this module's path (hence `pub(crate)`).
pub(crate) mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use self::apps::RawApp;
pub use self::apps::{ADMIN_ROLE, AppConfig, ROLES};
pub use self::etcd::EtcdAccess;
use self::etcd::RawEtcd;
pub use self::limits::Limits;
use self::limits::RawLimits;
pub use self::login_throttle::LoginThrottle;
use self::login_throttle::RawThrottle;
use self::store::StoreConfig;
use crate::secret::{self, SecretError};

/// Default token lifetime: one hour.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Default lease lifetime without a heartbeat: ten seconds.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Listen address when neither the config nor the command line names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
/// Where the binary serves monitoring over HTTP (`/metrics`, `/api/...`, the console) when
/// neither the config nor the command line says.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7601";
/// Longest app name (bytes): longer names are refused at login without any work.
pub const MAX_APP_NAME_LEN: usize = 256;

/// Registry configuration.
///
/// Build one in code ([`Config::new`], [`Config::dev`] and the `with_*` methods) or read a file
/// ([`Config::load`], [`Config::from_toml`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to listen on (`host:port`); the binary's `--listen` overrides it.
    pub listen: Option<String>,
    /// Where to serve monitoring over HTTP: `/metrics` (Prometheus), `/api/...` (JSON) and the
    /// web console at `/`. `None` (not set): the `stardust-registry` binary serves it on
    /// [`DEFAULT_HTTP_LISTEN`], an embedded [`RegistryNode`](crate::RegistryNode) serves none
    /// (unless its builder says [`http_listen`](crate::RegistryNodeBuilder::http_listen)).
    /// The binary's `--http-listen` overrides it.
    pub http_listen: Option<HttpListen>,
    /// The console links trace ids to this URL template, its `{trace_id}` replaced by the
    /// 32-digit W3C trace id (e.g. `https://jaeger.example/trace/{trace_id}`); `http://` or
    /// `https://` only. `None`: `STARDUST_TRACE_URL` from the environment, if set, else no links.
    pub trace_url: Option<String>,
    /// Where the Ed25519 signing keys are kept (created on first start). Required outside dev
    /// mode; without it (dev mode) keys live in memory and tokens die with the process.
    pub key_file: Option<PathBuf>,
    /// Where the traffic rules are kept on a single node (memory store), so they survive a
    /// restart; with etcd they live there instead. `Config::load` defaults it to
    /// `<config stem>.rules.toml` next to the config file; `None`: in memory only.
    pub rules_file: Option<PathBuf>,
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
    /// How logins are throttled and how many secrets are checked at once (`[login_throttle]`).
    pub login_throttle: LoginThrottle,
    /// What one connection may send and make the registry keep (`[limits]`).
    pub limits: Limits,
    /// Where registrations, dev apps and public keys are kept: this process (the default), or
    /// an etcd shared by several registry nodes (`store = "etcd://127.0.0.1:2379/stardust"`;
    /// needs the `etcd` cargo feature). The binary's `--store` overrides it.
    pub store: StoreConfig,
    /// How to reach an etcd store: TLS files and credentials (`[etcd]`).
    pub etcd: EtcdAccess,
}

/// Whether and where the registry serves monitoring over HTTP ([`Config::http_listen`]).
///
/// The server is read-only and unauthenticated: keep it on loopback (the default) or behind
/// something that controls access. The registry logs a warning at start-up when it listens
/// anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpListen {
    /// No HTTP server.
    Off,
    /// Serve on this address (`host:port`; port 0 picks a free port, see
    /// [`RegistryNode::http_addr`](crate::RegistryNode::http_addr)).
    On(String),
}

impl HttpListen {
    /// `"off"` (any case) is [`HttpListen::Off`], anything else an address.
    pub fn parse(text: &str) -> HttpListen {
        let t = text.trim();
        if t.eq_ignore_ascii_case("off") {
            HttpListen::Off
        } else {
            HttpListen::On(t.to_owned())
        }
    }

    /// The address, unless off.
    pub fn addr(&self) -> Option<&str> {
        match self {
            HttpListen::Off => None,
            HttpListen::On(a) => Some(a),
        }
    }
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

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

impl Config {
    /// Production defaults: no apps, no key file (set one), token TTL 1 h, lease TTL 10 s,
    /// dev mode off, login throttling with [`LoginThrottle::default`].
    pub fn new() -> Config {
        Config {
            listen: None,
            http_listen: None,
            trace_url: None,
            key_file: None,
            rules_file: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            dev: false,
            apps: BTreeMap::new(),
            tls: None,
            login_throttle: LoginThrottle::default(),
            limits: Limits::default(),
            store: StoreConfig::Memory,
            etcd: EtcdAccess::default(),
        }
    }

    /// A development registry that needs no configuration: dev mode on (any app name can log
    /// in; its first secret becomes its secret until restart) and an in-memory signing key.
    /// Logins are throttled as in production. Never use it where untrusted clients can reach
    /// the registry.
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

    /// Keeps registrations, dev apps and public keys in `store` (see [`Config::store`]).
    pub fn with_store(mut self, store: StoreConfig) -> Config {
        self.store = store;
        self
    }

    /// Reaches the etcd store with these TLS files and credentials (see [`Config::etcd`]).
    pub fn with_etcd_access(mut self, access: EtcdAccess) -> Config {
        self.etcd = access;
        self
    }

    /// Sets the listen address.
    pub fn with_listen(mut self, addr: impl Into<String>) -> Config {
        self.listen = Some(addr.into());
        self
    }

    /// Sets where monitoring is served over HTTP: an address (`"127.0.0.1:7601"`, port 0 for
    /// any free port), or `"off"`.
    pub fn with_http_listen(mut self, addr: impl AsRef<str>) -> Config {
        self.http_listen = Some(HttpListen::parse(addr.as_ref()));
        self
    }

    /// Sets the console's trace UI link template ([`Config::trace_url`]).
    pub fn with_trace_url(mut self, template: impl Into<String>) -> Config {
        self.trace_url = Some(template.into());
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

    /// Sets how logins are throttled.
    pub fn with_login_throttle(mut self, throttle: LoginThrottle) -> Config {
        self.login_throttle = throttle;
        self
    }

    /// Sets what one connection may send and make the registry keep.
    pub fn with_limits(mut self, limits: Limits) -> Config {
        self.limits = limits;
        self
    }

    /// Adds (or replaces) an application.
    pub fn with_app(mut self, name: impl Into<String>, app: AppConfig) -> Config {
        self.apps.insert(name.into(), app);
        self
    }

    /// Reads and validates a config file. Relative paths (`key_file`, `rules_file`, TLS and
    /// etcd files) are taken relative to the directory of `path`; `rules_file` defaults to
    /// `<stem of path>.rules.toml` there.
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
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("registry");
            let rules = cfg
                .rules_file
                .get_or_insert_with(|| PathBuf::from(format!("{stem}.rules.toml")));
            rebase(rules);
            let etcd = &mut cfg.etcd;
            for file in [
                &mut etcd.ca_file,
                &mut etcd.cert_file,
                &mut etcd.key_file,
                &mut etcd.password_file,
            ]
            .into_iter()
            .flatten()
            {
                rebase(file);
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
        cfg.http_listen = raw.http_listen.as_deref().map(HttpListen::parse);
        cfg.trace_url = raw.trace_url;
        cfg.key_file = raw.key_file;
        cfg.rules_file = raw.rules_file;
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
        if let Some(t) = raw.login_throttle {
            t.apply(&mut cfg.login_throttle)?;
        }
        if let Some(store) = raw.store {
            cfg.store = StoreConfig::parse(&store)?;
        }
        if let Some(l) = raw.limits {
            l.apply(&mut cfg.limits);
        }
        if let Some(e) = raw.etcd {
            cfg.etcd = e.into();
        }
        for (name, app) in raw.apps {
            cfg.apps.insert(
                name,
                AppConfig {
                    secret_hash: app.secret_hash,
                    provide: app.provide,
                    consume: app.consume,
                    roles: app.roles,
                },
            );
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the config for mistakes: TTLs, app names, secret hashes, service lists, login
    /// throttling, and a key file outside dev mode. [`RegistryNode`](crate::RegistryNode) runs it before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |message: String| Err(ConfigError { message });
        if self.token_ttl.is_zero() {
            return err("token_ttl must be longer than zero".into());
        }
        if self.lease_ttl.is_zero() {
            return err("lease_ttl must be longer than zero".into());
        }
        self.login_throttle.validate()?;
        self.limits.validate()?;
        if let Some(listen) = &self.listen
            && listen.trim().is_empty()
        {
            return err("listen must be an address like `0.0.0.0:7600`".into());
        }
        if let Some(HttpListen::On(addr)) = &self.http_listen
            && (addr.is_empty() || !addr.contains(':'))
        {
            return err(format!(
                "http_listen must be an address like `127.0.0.1:7601`, or \"off\" (got {addr:?})"
            ));
        }
        if let Some(url) = &self.trace_url
            && !is_trace_url(url)
        {
            return err(format!(
                "trace_url must be an http:// or https:// URL template containing {{trace_id}} \
                 (got {url:?})"
            ));
        }
        if self.store.is_shared() && !cfg!(feature = "etcd") {
            return err(format!(
                "store `{}` needs a registry built with the `etcd` feature \
                 (cargo install stardust-registry --features etcd)",
                self.store
            ));
        }
        self.etcd.validate(&self.store)?;
        if !self.dev && self.key_file.is_none() {
            return err(
                "key_file is required (where the registry keeps its signing keys); \
                 only dev mode may run with an in-memory key"
                    .into(),
            );
        }
        for (name, app) in &self.apps {
            if name.is_empty()
                || name.len() > MAX_APP_NAME_LEN
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return err(format!(
                    "apps.{name:?}: app names must be 1 to {MAX_APP_NAME_LEN} bytes, without whitespace"
                ));
            }
            if let Err(e) = secret::validate_hash(&app.secret_hash) {
                return err(format!("apps.{name}.secret_hash: {e}"));
            }
            if let Some(role) = app.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
                return err(format!(
                    "apps.{name}.roles: unknown role {role:?} (known: {})",
                    ROLES.join(", ")
                ));
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

/// Whether `url` can be the console's trace link template: `http(s)://`, with `{trace_id}`.
pub(crate) fn is_trace_url(url: &str) -> bool {
    (url.starts_with("https://") || url.starts_with("http://")) && url.contains("{trace_id}")
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
    http_listen: Option<String>,
    trace_url: Option<String>,
    key_file: Option<PathBuf>,
    rules_file: Option<PathBuf>,
    token_ttl: Option<String>,
    lease_ttl: Option<String>,
    dev: Option<bool>,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    tls: Option<RawTls>,
    login_throttle: Option<RawThrottle>,
    limits: Option<RawLimits>,
    store: Option<String>,
    etcd: Option<RawEtcd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
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
        assert_eq!(cfg.http_listen, None);
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
    fn login_throttle_table() {
        let cfg = Config::from_toml(
            r#"
key_file = "k"
[login_throttle]
free_failures = 3
backoff_min = "200ms"
backoff_max = "30s"
forget_after = "10m"
attempt_burst = 50
attempts_per_second = 2
max_tracked = 500
max_concurrent_hashes = 3
max_queued = 8
queue_timeout = "500ms"
"#,
        )
        .unwrap();
        assert_eq!(
            cfg.login_throttle,
            LoginThrottle {
                free_failures: 3,
                backoff_min: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
                forget_after: Duration::from_secs(600),
                attempt_burst: 50,
                attempts_per_second: 2.0,
                max_tracked: 500,
                max_concurrent_hashes: Some(3),
                max_queued: 8,
                queue_timeout: Duration::from_millis(500),
            }
        );
        assert_eq!(cfg.login_throttle.concurrent_hashes(), 3);
        // Partial tables keep the other defaults; fractional rates are fine.
        let cfg =
            Config::from_toml("key_file = \"k\"\n[login_throttle]\nattempts_per_second = 0.5")
                .unwrap();
        assert_eq!(cfg.login_throttle.attempts_per_second, 0.5);
        assert_eq!(cfg.login_throttle.free_failures, 5);
        // No table: the defaults, also in dev mode.
        let d = LoginThrottle::default();
        assert_eq!(
            Config::from_toml("key_file = \"k\"")
                .unwrap()
                .login_throttle,
            d
        );
        assert_eq!(Config::dev().login_throttle, d);
        assert_eq!(
            (
                d.free_failures,
                d.backoff_min,
                d.backoff_max,
                d.forget_after
            ),
            (
                5,
                Duration::from_secs(1),
                Duration::from_secs(300),
                Duration::from_secs(3600)
            )
        );
        assert!(d.concurrent_hashes() >= 1);
    }

    #[test]
    fn bad_login_throttle_values() {
        let bad = |table: &str, expect: &str| {
            let text = format!("key_file = \"k\"\n[login_throttle]\n{table}\n");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.message().contains(expect), "{table}: {e}");
        };
        bad("backof_min = \"1s\"", "unknown field `backof_min`");
        bad("backoff_min = \"soon\"", "login_throttle.backoff_min");
        bad(
            "backoff_min = \"0s\"",
            "backoff_min must be longer than zero",
        );
        bad(
            "backoff_min = \"10s\"\nbackoff_max = \"5s\"",
            "backoff_max must be at least backoff_min",
        );
        bad(
            "forget_after = \"1m\"",
            "forget_after must be at least backoff_max",
        );
        bad("attempt_burst = 0", "attempt_burst must be at least 1");
        bad("attempts_per_second = 0", "attempts_per_second");
        bad("attempts_per_second = -1.5", "attempts_per_second");
        bad("max_tracked = 0", "max_tracked");
        bad("max_concurrent_hashes = 0", "max_concurrent_hashes");
        bad("queue_timeout = \"0s\"", "queue_timeout");
        bad("free_failures = -1", "line 3");
    }

    #[test]
    fn limits_table() {
        let cfg = Config::from_toml(
            "key_file = \"k\"\n[limits]\nmax_subscriptions = 10\nmax_registrations = 11\n\
             max_name_len = 12\nmax_version_len = 13\nmax_tags = 14\nmax_tag_len = 15\n\
             max_report_entries = 16\n",
        )
        .unwrap();
        let expected = Limits::default()
            .with_max_subscriptions(10)
            .with_max_registrations(11)
            .with_max_name_len(12)
            .with_max_version_len(13)
            .with_max_tags(14)
            .with_max_tag_len(15)
            .with_max_report_entries(16);
        assert_eq!(cfg.limits, expected);
        assert_eq!(Config::new().with_limits(expected.clone()).limits, expected);

        // Keys left out keep their defaults.
        let cfg = Config::from_toml("key_file = \"k\"\n[limits]\nmax_tags = 4\n").unwrap();
        assert_eq!(cfg.limits, Limits::default().with_max_tags(4));
        assert_eq!(Config::dev().limits, Limits::default());

        let bad = |table: &str, expect: &str| {
            let text = format!("key_file = \"k\"\n[limits]\n{table}\n");
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.message().contains(expect), "{table}: {e}");
        };
        bad("max_subscription = 3", "unknown field `max_subscription`");
        bad("max_tags = 0", "limits.max_tags must be at least 1");
        bad(
            "max_report_entries = 0",
            "limits.max_report_entries must be at least 1",
        );
        bad("max_name_len = -1", "line 3");
        let e = Config::dev()
            .with_limits(Limits::default().with_max_subscriptions(0))
            .validate()
            .unwrap_err();
        assert!(e.message().contains("limits.max_subscriptions"), "{e}");
    }

    #[test]
    fn trace_url() {
        let cfg = Config::from_toml(
            "dev = true\ntrace_url = \"https://jaeger.example/trace/{trace_id}\"",
        )
        .unwrap();
        assert_eq!(
            cfg.trace_url.as_deref(),
            Some("https://jaeger.example/trace/{trace_id}")
        );
        for bad in ["javascript:alert(1)//{trace_id}", "https://jaeger.example/"] {
            let e = Config::from_toml(&format!("dev = true\ntrace_url = {bad:?}")).unwrap_err();
            assert!(
                e.message().contains("trace_url") && e.message().contains("{trace_id}"),
                "{e}"
            );
        }
        assert_eq!(Config::dev().trace_url, None);
    }

    #[test]
    fn http_listen() {
        let cfg = Config::from_toml("dev = true\nhttp_listen = \"0.0.0.0:9100\"").unwrap();
        assert_eq!(cfg.http_listen, Some(HttpListen::On("0.0.0.0:9100".into())));
        let cfg = Config::from_toml("dev = true\nhttp_listen = \"off\"").unwrap();
        assert_eq!(cfg.http_listen, Some(HttpListen::Off));
        assert_eq!(cfg.http_listen.unwrap().addr(), None);
        let e = Config::from_toml("dev = true\nhttp_listen = \"nowhere\"").unwrap_err();
        assert!(e.message().contains("http_listen"), "{e}");
        assert_eq!(
            Config::dev().with_http_listen("127.0.0.1:0").http_listen,
            Some(HttpListen::On("127.0.0.1:0".into()))
        );
        assert_eq!(
            Config::dev().with_http_listen("OFF").http_listen,
            Some(HttpListen::Off)
        );
    }

    #[test]
    fn store() {
        assert_eq!(Config::new().store, StoreConfig::Memory);
        let cfg = Config::from_toml("dev = true\nstore = \"memory\"\n").unwrap();
        assert_eq!(cfg.store, StoreConfig::Memory);
        let text = "dev = true\nstore = \"etcd://10.0.0.1:2379,10.0.0.2:2379/prod\"\n";
        let parsed = Config::from_toml(text);
        assert_eq!(parsed.is_ok(), cfg!(feature = "etcd"), "{parsed:?}");
        match parsed {
            Ok(cfg) => {
                assert_eq!(
                    cfg.store,
                    StoreConfig::Etcd {
                        endpoints: vec![
                            "http://10.0.0.1:2379".into(),
                            "http://10.0.0.2:2379".into()
                        ],
                        prefix: "prod".into(),
                    }
                );
            }
            Err(e) => assert!(e.message().contains("`etcd` feature"), "{e}"),
        }
        let e = Config::from_toml("dev = true\nstore = \"etcd://nowhere\"\n").unwrap_err();
        assert!(e.message().contains("not an etcd endpoint"), "{e}");
    }

    #[test]
    fn etcd_access() {
        if !cfg!(feature = "etcd") {
            return; // an etcd store is refused before [etcd] is looked at
        }
        let toml = |store: &str, etcd: &str| {
            Config::from_toml(&format!("dev = true\nstore = \"{store}\"\n[etcd]\n{etcd}"))
        };
        let cfg = toml(
            "etcds://10.0.0.1:2379/prod",
            "ca_file = \"ca.crt\"\ncert_file = \"c.crt\"\nkey_file = \"c.key\"\n\
             user = \"stardust\"\npassword_file = \"pw\"\n",
        )
        .unwrap();
        assert_eq!(
            cfg.etcd,
            EtcdAccess::default()
                .with_ca_file("ca.crt")
                .with_client_cert("c.crt", "c.key")
                .with_user("stardust", "pw")
        );
        for (store, etcd, says) in [
            ("etcds://h:1", "", "ca_file"),
            ("etcd://h:1", "ca_file = \"ca\"", "etcds://"),
            (
                "etcds://h:1",
                "ca_file = \"ca\"\ncert_file = \"c\"",
                "go together",
            ),
            ("etcd://h:1", "user = \"u\"", "go together"),
            (
                "etcd://h:1",
                "user = \"a b\"\npassword_file = \"p\"",
                "whitespace",
            ),
            (
                "memory",
                "user = \"u\"\npassword_file = \"p\"",
                "only used with an etcd store",
            ),
            ("etcd://h:1", "password = \"inline\"", "unknown field"),
        ] {
            let e = toml(store, etcd).unwrap_err();
            assert!(e.message().contains(says), "{store} / {etcd}: {e}");
        }
    }

    #[test]
    fn etcd_files_follow_the_config() {
        let dir = std::env::temp_dir().join(format!("stardust-etcd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("registry.toml");
        std::fs::write(
            &path,
            "dev = true\nstore = \"etcds://h:1\"\n[etcd]\nca_file = \"ca.crt\"\n\
             user = \"u\"\npassword_file = \"/abs/pw\"\n",
        )
        .unwrap();
        let loaded = Config::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded.is_ok(), cfg!(feature = "etcd"), "{loaded:?}");
        match loaded {
            Ok(cfg) => {
                assert_eq!(cfg.etcd.ca_file, Some(dir.join("ca.crt")));
                assert_eq!(cfg.etcd.password_file, Some(PathBuf::from("/abs/pw")));
            }
            Err(e) => assert!(e.message().contains("`etcd` feature"), "{e}"),
        }
    }

    #[test]
    fn app_names_are_bounded() {
        let long = "a".repeat(MAX_APP_NAME_LEN + 1);
        let cfg = Config::new()
            .with_key_file("k")
            .with_app(long, AppConfig::new(hash()));
        let e = cfg.validate().unwrap_err();
        assert!(e.message().contains("1 to 256 bytes"), "{e}");
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

    #[test]
    fn tls_files_follow_the_config_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(
            &path,
            "dev = true\n[tls]\ncert_file = \"r.crt\"\nkey_file = \"/etc/r.key\"\nclient_ca_file = \"ca.crt\"\n",
        )
        .unwrap();
        let tls = Config::load(&path).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("r.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/etc/r.key"));
        assert_eq!(tls.client_ca_file, Some(dir.path().join("ca.crt")));
        // Loading names the file that is missing.
        let e = tls.load().unwrap_err();
        assert!(e.to_string().contains("r.crt"), "{e}");

        let e = Config::from_toml("[tls]\ncert_file = \"a\"\nkey_file = \"b\"\ncert = \"c\"\n")
            .unwrap_err();
        assert!(e.message().contains("cert"), "{e}");
        assert!(Config::from_toml("[tls]\ncert_file = \"a\"\n").is_err());
    }
}
