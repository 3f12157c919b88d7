//! Which store a registry node uses (`store = ".."`): the [`StoreConfig`] URL and its parsing.
//!
//! It is a setting like the others, so it lives with them: the `store` module, which opens and
//! runs the store a `StoreConfig` names, sits above `config` and reads it from there, never the
//! other way round. Public at the crate root only (`stardust_registry::StoreConfig`), which is
//! why `config` keeps this module `pub(crate)` and re-exports nothing from it.

use std::fmt;

use super::ConfigError;

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
