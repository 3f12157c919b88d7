//! The default store: one registry node, state in this process.
//!
//! Registrations need no copy here: the node's own table is the only one, so writes are
//! [`Written::Local`] (the node applies them at once, under its lock) and lease expiry is the
//! node's sweeper. What this store does keep is the dev-mode apps created by first logins, and
//! the traffic rules, in memory and (when the node has a rules file) on disk, so they survive
//! a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Weak;

use parking_lot::Mutex;
use stardust::discovery::api::{Instance, PublicKey, ServiceDescription};
use stardust::traffic::Rules;

use super::{BoxFuture, Store, StoreError, View, Written};
use crate::config::AppConfig;

/// Dev-mode apps in memory; registrations in the node's own table; traffic rules in memory and
/// in the rules file.
#[derive(Default)]
pub(crate) struct MemoryStore {
    /// Apps created by dev-mode logins: name to secret hash (until the process ends).
    dev_apps: Mutex<HashMap<String, String>>,
    rules: Mutex<Rules>,
    /// Where the rules are kept (`None`: in memory only).
    rules_file: Option<PathBuf>,
}

impl MemoryStore {
    /// A store keeping the rules in `rules_file` (read now if it exists).
    pub(crate) fn open(rules_file: Option<PathBuf>) -> Result<MemoryStore, String> {
        let rules = match &rules_file {
            Some(path) if path.exists() => read_rules(path)?,
            _ => Rules::default(),
        };
        Ok(MemoryStore {
            dev_apps: Mutex::default(),
            rules: Mutex::new(rules),
            rules_file,
        })
    }
}

/// Reads and validates a rules file.
fn read_rules(path: &Path) -> Result<Rules, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the rules file {}: {e}", path.display()))?;
    let rules: Rules = toml::from_str(&text).map_err(|e| {
        format!(
            "the rules file {} is not valid: {}",
            path.display(),
            e.message()
        )
    })?;
    rules
        .validate()
        .map_err(|e| format!("the rules file {}: {}", path.display(), e.message()))?;
    Ok(rules)
}

/// Writes the rules file whole: to a temporary file first, renamed over the old one, so a
/// crash leaves either version, never half of one.
fn write_rules(path: &Path, rules: &Rules) -> Result<(), String> {
    let text = toml::to_string(rules).map_err(|e| format!("cannot encode the rules: {e}"))?;
    let text = format!(
        "# Traffic rules of this Stardust registry. Written by the registry on every change\n\
         # (`stardust-registry route|fault set|rm`); edit it only while the registry is stopped.\n\n{text}"
    );
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write the rules file {}: {e}", path.display()))
}

impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn attach(&self, _view: Weak<dyn View>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn put(
        &self,
        _session: u64,
        _instance: &Instance,
        _seen: Option<i64>,
    ) -> BoxFuture<'_, Result<Written, StoreError>> {
        Box::pin(async { Ok(Written::Local) })
    }

    fn delete(
        &self,
        _service: &str,
        _endpoint: &str,
        _seen: i64,
    ) -> BoxFuture<'_, Result<Written, StoreError>> {
        Box::pin(async { Ok(Written::Local) })
    }

    fn renew(&self, _session: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        // The node's table keeps the lease times itself.
        Box::pin(async { Ok(true) })
    }

    fn release(&self, _session: u64) {}

    fn wait_applied(&self, _revision: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn dev_app(&self, name: &str) -> Option<String> {
        self.dev_apps.lock().get(name).cloned()
    }

    fn create_dev_app(
        &self,
        name: &str,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let existing = {
            let mut apps = self.dev_apps.lock();
            match apps.get(name) {
                Some(h) => Some(h.clone()),
                None => {
                    apps.insert(name.to_owned(), hash);
                    None
                }
            }
        };
        Box::pin(async move { Ok(existing) })
    }

    fn shared_app(&self, _name: &str) -> Option<AppConfig> {
        None
    }

    fn shared_keys(&self) -> Vec<PublicKey> {
        Vec::new()
    }

    fn rules(&self) -> Rules {
        self.rules.lock().clone()
    }

    fn put_rules(&self, rules: &Rules, seen: u64) -> BoxFuture<'_, Result<Written, StoreError>> {
        let result = {
            let mut held = self.rules.lock();
            if held.revision != seen {
                Err(StoreError::Conflict(None))
            } else {
                // Written before it is taken: an edit the file cannot keep is refused, not
                // lost at the next restart.
                let written = match &self.rules_file {
                    Some(path) => write_rules(path, rules).map_err(StoreError::Unavailable),
                    None => Ok(()),
                };
                written.map(|()| {
                    *held = rules.clone();
                    Written::Local
                })
            }
        };
        Box::pin(async move { result })
    }

    fn put_description(
        &self,
        _service: &str,
        _version: &str,
        _app: &str,
        _description: &ServiceDescription,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        // One node: its own `Descriptions` is the only record.
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dev_apps_are_created_once() {
        let store = MemoryStore::default();
        assert_eq!(store.dev_app("calc"), None);
        assert_eq!(store.create_dev_app("calc", "h1".into()).await, Ok(None));
        // A second creation loses to the first and learns its hash.
        assert_eq!(
            store.create_dev_app("calc", "h2".into()).await,
            Ok(Some("h1".into()))
        );
        assert_eq!(store.dev_app("calc").as_deref(), Some("h1"));
    }
}
