//! The Stardust registry: where apps log in, providers register, and consumers discover.
//!
//! It implements the [`Registry`](stardust::discovery::api::Registry) service over Stardust
//! itself. Apps log in with a name and secret (checked against argon2id hashes) and get an
//! Ed25519-signed token that providers verify on their own; providers register leased instances
//! of their services and keep them alive with heartbeats; consumers discover instances by
//! semver requirement, or subscribe and get the full list pushed whenever it changes.
//!
//! Run it as a program (`stardust-registry serve --config registry.toml`) or embed it:
//!
//! ```
//! use stardust::discovery::api::{Registration, RegistryClient};
//! use stardust_registry::{Config, RegistryNode};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A dev-mode registry: no config, any app may log in (created on its first login).
//! let node = RegistryNode::builder()
//!     .config(Config::dev())
//!     .bind("127.0.0.1:0")
//!     .await?;
//!
//! let registry = RegistryClient::connect(node.local_addr()).await?;
//! let login = registry.login("calc".into(), "calc-secret".into()).await??;
//! assert_eq!(login.app, "calc");
//!
//! registry
//!     .register(Registration {
//!         service: "calc.Calculator".into(),
//!         version: "1.2.0".into(),
//!         endpoint: "127.0.0.1:9000".into(),
//!         weight: 100,
//!         tags: Default::default(),
//!         tls: false,
//!         description: None,
//!     })
//!     .await??;
//! let found = registry.discover("calc.Calculator".into(), "^1".into()).await??;
//! assert_eq!(found[0].endpoint, "127.0.0.1:9000");
//!
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! For production, build a [`Config`] with apps and a key file (or [`Config::load`] a TOML
//! file; its format is described in [`config`]).
//!
//! # Sessions
//!
//! A registry connection is anonymous until `login`; the registry then remembers the app for
//! that connection and forgets it (with its registrations and subscriptions) when the
//! connection closes. Every call except `login` and `public_keys` needs a logged-in connection.
//! What one connection may send and make the registry keep is capped ([`Limits`], `[limits]` in
//! the config file): a call over a cap is refused with `RegistryError::Invalid` naming the cap,
//! before the registry does anything with it.
//!
//! # Several nodes (etcd)
//!
//! By default a node keeps everything in memory. With the `etcd` cargo feature and
//! [`Config::store`] set to `etcd://host:port[,host:port...][/prefix]` ([`StoreConfig`]),
//! several nodes share one registry: registrations are etcd keys under leases the node a
//! provider is connected to keeps alive with its heartbeats, every node watches them and pushes
//! changes to its own subscribers, and app definitions, dev-mode apps and public signing keys
//! are shared, so a token from any node is accepted everywhere. A node that dies stops renewing;
//! its providers register again through another node (or vanish when their leases expire).
//! [`RegistryNode::registrations`] shows a node's table and which entries it holds.
//!
//! # Login throttling
//!
//! Secrets are checked with argon2id, which is slow on purpose; the registry therefore decides
//! before checking whether to check at all. Failed logins back off per app, per source address
//! and per app-and-address, logins are rate limited per address, and few secrets are checked at
//! once behind a bounded queue; a refused login gets `RegistryError::Throttled` at once, saying
//! when to retry. Heartbeats, discovery and registrations never wait behind secret checks. The
//! knobs and their defaults are on [`LoginThrottle`]; [`RegistryNode::login_stats`] counts what
//! happened.
//!
//! # Monitoring
//!
//! Every heartbeat carries the sender's status report: per service and method, what it served
//! since its last report (calls, errors by kind, in flight, a latency histogram), what it called
//! of each provider (consumers), and process facts. The registry adds them up per instance and
//! serves them over HTTP on a port of its own ([`Config::http_listen`]; the binary's default is
//! `127.0.0.1:7601`, an embedded node serves none unless asked with
//! [`RegistryNodeBuilder::http_listen`]):
//!
//! * `/` — a live web console (one self-contained page);
//! * `/metrics` — Prometheus text format (`stardust_calls_total`, `stardust_errors_total`,
//!   `stardust_call_duration_seconds`, `stardust_consumer_calls_total`, `stardust_instances`,
//!   ...), labelled by service, method and instance (the registered endpoint);
//! * `/api/services`, `/api/services/{name}`, `/api/instances`, `/api/history` — JSON.
//! * `/healthz` — 200 while the node follows its store, 503 with the reason while it cannot
//!   ([`RegistryNode::store_health`]).
//!
//! Instances leave with their lease. The server is read-only and unauthenticated: keep it on
//! loopback (the default), where it only answers requests addressed to a loopback host.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod json;
pub mod keys;
mod monitor;
mod node;
mod secret;
mod service;
mod store;
mod throttle;

pub use config::store::{DEFAULT_ETCD_PREFIX, StoreConfig};
pub use config::{
    AppConfig, Config, ConfigError, EtcdAccess, HttpListen, Limits, LoginThrottle, TlsFiles,
};
pub use keys::{KeyError, KeyRing, key_set, rotate_key_file};
pub use monitor::LoginStats;
pub use node::{Error, RegistryNode, RegistryNodeBuilder};
pub use secret::{SecretError, hash_secret, validate_hash, verify_secret};
pub use service::Registered;

/// Internal request handling for the fuzz targets in `fuzz/`; compiled only with the hidden
/// `fuzzing` feature, so the public API is unchanged without it.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::node::fuzz::MonitorHarness;
}

// The top-level README's Rust examples, compiled (and the self-contained ones run) as doctests
// of this crate, which depends on everything they use: an example a user copies cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
