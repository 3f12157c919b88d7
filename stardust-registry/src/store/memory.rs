//! The default store: one registry node, state in this process.
//!
//! Registrations need no copy here: the node's own table is the only one, so writes are
//! [`Written::Local`] (the node applies them at once, under its lock) and lease expiry is the
//! node's sweeper. What this store does keep is the dev-mode apps created by first logins.

use std::collections::HashMap;
use std::sync::Weak;

use parking_lot::Mutex;
use stardust::discovery::api::{Instance, PublicKey};

use super::{BoxFuture, Store, StoreError, View, Written};
use crate::config::AppConfig;

/// Dev-mode apps in memory; registrations in the node's own table.
#[derive(Default)]
pub(crate) struct MemoryStore {
    /// Apps created by dev-mode logins: name to secret hash (until the process ends).
    dev_apps: Mutex<HashMap<String, String>>,
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
