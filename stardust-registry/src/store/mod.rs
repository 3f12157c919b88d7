//! Where registry nodes keep what they share: registrations, dev-mode apps, app definitions and
//! token-signing public keys.
//!
//! Two stores sit behind one trait, [`Store`]:
//!
//! * [`memory`] (the default): one node, nothing shared. The node's own table of registrations
//!   *is* the truth, leases expire by the node's sweeper, dev apps live in this process.
//! * `etcd` (cargo feature `etcd`): several nodes share one etcd. A registration is a key held
//!   by an etcd lease that the node keeps alive while the provider's connection and heartbeats
//!   live; every node watches the keys and rebuilds its table from what it sees, so a write
//!   through one node reaches the subscribers of all of them. App definitions and public keys
//!   are shared the same way, so a token from one node is accepted everywhere.
//!
//! The registry service (`service.rs`) decides *what* may change (sessions, permissions,
//! validation) and keeps the per-connection parts (sessions, subscriptions); a store decides
//! *where* a change is kept and reports the shared table back through [`View`].

// Without the `etcd` feature only the memory store exists, which never builds records or
// reports to a view.
#![cfg_attr(not(feature = "etcd"), allow(dead_code))]

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use stardust::discovery::api::{Instance, PublicKey};

use crate::config::{AppConfig, ConfigError};

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod memory;

/// Which store a registry node uses ([`Config::store`](crate::Config::store), `store = ".."` in
/// the config file, `--store` on the command line).
///
/// Written as a URL: `memory` (the default), or
/// `etcd://host:port[,host:port...][/prefix]`: the etcd cluster's client endpoints and the key
/// prefix every node of one registry shares (default `stardust`). Different prefixes are
/// independent registries on one etcd. `etcd://` is plain HTTP/2 (for loopback or a trusted
/// network); `etcds://` speaks TLS, with the CA bundle (and optionally a client certificate
/// and an etcd user) in [`EtcdAccess`](crate::EtcdAccess).
///
/// ```
/// use stardust_registry::{Config, StoreConfig};
///
/// let store = StoreConfig::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/prod")?;
/// assert!(store.is_shared());
/// assert_eq!(store.to_string(), "etcd://10.0.0.1:2379,10.0.0.2:2379/prod");
/// // Three nodes started with this config share one registry (with the `etcd` feature).
/// let config = Config::dev().with_store(store);
/// # let _ = config;
/// # Ok::<(), stardust_registry::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreConfig {
    /// Everything in this process (one registry node).
    #[default]
    Memory,
    /// Shared through etcd (several registry nodes; needs the `etcd` cargo feature).
    Etcd {
        /// Client URLs, e.g. `http://127.0.0.1:2379` (`https://` for `etcds://`).
        endpoints: Vec<String>,
        /// Key prefix without a trailing slash, e.g. `stardust`.
        prefix: String,
    },
}

/// The key prefix when an `etcd://` URL names none.
pub const DEFAULT_ETCD_PREFIX: &str = "stardust";

impl StoreConfig {
    /// Parses a store URL: `memory`, or `etcd://host:port[,host:port...][/prefix]` (`etcds://`
    /// for TLS).
    pub fn parse(url: &str) -> Result<StoreConfig, ConfigError> {
        let url = url.trim();
        if url.is_empty() || url == "memory" || url == "memory://" {
            return Ok(StoreConfig::Memory);
        }
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            ("https", rest)
        } else {
            return Err(ConfigError::new(format!(
                "store `{url}` is neither `memory` nor `etcd://host:port[,host:port...][/prefix]` \
                 (`etcds://` for TLS)"
            )));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix.trim_end_matches('/')),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() {
            DEFAULT_ETCD_PREFIX
        } else {
            prefix
        };
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            || prefix.split('/').any(str::is_empty)
        {
            return Err(ConfigError::new(format!(
                "store `{url}`: the key prefix `{prefix}` may only hold letters, digits, `-`, `_`, \
                 `.` and single `/` between parts"
            )));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !port_ok {
                return Err(ConfigError::new(format!(
                    "store `{url}`: `{host}` is not an etcd endpoint like `127.0.0.1:2379`"
                )));
            }
            endpoints.push(format!("{scheme}://{host}"));
        }
        Ok(StoreConfig::Etcd {
            endpoints,
            prefix: prefix.to_owned(),
        })
    }

    /// Whether this store is shared between registry nodes.
    pub fn is_shared(&self) -> bool {
        !matches!(self, StoreConfig::Memory)
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("memory"),
            StoreConfig::Etcd { endpoints, prefix } => {
                let tls = endpoints.iter().any(|e| e.starts_with("https://"));
                let hosts: Vec<&str> = endpoints
                    .iter()
                    .map(|e| e.split_once("://").map_or(e.as_str(), |(_, h)| h))
                    .collect();
                let scheme = if tls { "etcds" } else { "etcd" };
                write!(f, "{scheme}://{}/{prefix}", hosts.join(","))
            }
        }
    }
}

/// A boxed future (the trait is used as `dyn Store`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a store took a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Not shared: the node applies the change to its own table now (memory store).
    Local,
    /// Stored at this revision: the node's table shows it once the store reported that far
    /// ([`Store::wait_applied`]).
    At(i64),
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// The entry changed since the caller looked (another node wrote it): here is what it is
    /// now (`None`: gone), with its revision.
    Conflict(Option<(Box<Instance>, i64)>),
    /// The store cannot be reached or refused the request; the message says which.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(_) => f.write_str("changed concurrently by another registry node"),
            StoreError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// One registration as a shared store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) instance: Instance,
    /// The registry node that holds its lease.
    pub(crate) node: String,
    /// That node's session (connection) the lease belongs to.
    pub(crate) session: u64,
    /// The store's revision of this version of the entry.
    pub(crate) revision: i64,
}

/// The node's table of registrations, as a shared store keeps it up to date.
///
/// Calls come from the store's watch task, in the store's order; the node pushes what changed
/// to its subscribers.
pub(crate) trait View: Send + Sync + 'static {
    /// The whole set of registrations (after the watch (re)started).
    fn reset(&self, records: Vec<Record>);
    /// One registration was written (created or replaced).
    fn put(&self, record: Record);
    /// One registration is gone (deregistered, its session ended, or its lease expired).
    fn delete(&self, service: &str, endpoint: &str);
}

/// What registry nodes share: see the [module docs](self).
///
/// Writes of registrations name the revision the caller last saw (`None`: none), so two nodes
/// racing on one entry cannot overwrite each other unseen: the loser gets
/// [`StoreError::Conflict`] with the entry as it is now.
pub(crate) trait Store: Send + Sync + 'static {
    /// For logs: `memory`, `etcd://...`.
    fn describe(&self) -> String;

    /// Whether several nodes share this store (registrations then reach the node's table through
    /// [`View`], never directly).
    fn is_shared(&self) -> bool;

    /// Starts reporting the shared table to `view` and returns once it has been reported in
    /// full once. The memory store has nothing to report.
    fn attach(&self, view: std::sync::Weak<dyn View>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores `instance`, owned by the node's `session`; `seen` is the revision of the entry the
    /// caller saw (`None`: it saw none).
    fn put(
        &self,
        session: u64,
        instance: &Instance,
        seen: Option<i64>,
    ) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Removes the entry of `service` at `endpoint` if it is still at revision `seen`.
    fn delete(
        &self,
        service: &str,
        endpoint: &str,
        seen: i64,
    ) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Keeps `session`'s registrations alive (a heartbeat arrived). `Ok(false)`: they already
    /// expired in the store, the provider must register again.
    fn renew(&self, session: u64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The node's `session` ended: its registrations go now. Does not wait.
    fn release(&self, session: u64);

    /// Waits (bounded) until the node's table shows revision `revision`.
    fn wait_applied(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The secret hash of a dev-mode app created by an earlier login (on any node).
    fn dev_app(&self, name: &str) -> Option<String>;

    /// Creates dev-mode app `name` with `hash`, unless someone created it first: then returns
    /// theirs.
    fn create_dev_app(
        &self,
        name: &str,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// An app defined by another node's config (this node's own config comes first).
    fn shared_app(&self, name: &str) -> Option<AppConfig>;

    /// Public keys other nodes sign tokens with (this node's own come from its key ring).
    fn shared_keys(&self) -> Vec<PublicKey>;

    /// `Err(why)` while the node cannot follow the store (it then serves the last table it
    /// had, and refuses writes): for health checks.
    fn health(&self) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(StoreConfig::parse("memory").unwrap(), StoreConfig::Memory);
        assert_eq!(StoreConfig::parse("").unwrap(), StoreConfig::Memory);
        let one = StoreConfig::parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(
            one,
            StoreConfig::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "stardust".into()
            }
        );
        assert_eq!(one.to_string(), "etcd://127.0.0.1:2379/stardust");
        let three = StoreConfig::parse("etcd://a:1,b:2, c:3/team/registry/").unwrap();
        assert_eq!(
            three,
            StoreConfig::Etcd {
                endpoints: vec![
                    "http://a:1".into(),
                    "http://b:2".into(),
                    "http://c:3".into()
                ],
                prefix: "team/registry".into()
            }
        );
        assert!(three.is_shared());
        let tls = StoreConfig::parse("etcds://etcd-1:2379/prod").unwrap();
        assert_eq!(
            tls,
            StoreConfig::Etcd {
                endpoints: vec!["https://etcd-1:2379".into()],
                prefix: "prod".into()
            }
        );
        assert_eq!(tls.to_string(), "etcds://etcd-1:2379/prod");
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://:2379",
            "etcd://h:1/a//b",
            "etcd://h:1/sp ace",
            "redis://h:1",
        ] {
            let e = StoreConfig::parse(bad).expect_err(bad);
            assert!(e.message().contains("store"), "{bad}: {e}");
        }
    }
}
