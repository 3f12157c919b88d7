//! Following etcd: list the prefix once, then watch it from the next revision, reporting every
//! change to the node's [`View`] and to what it learnt (apps, dev apps, public keys), the
//! traffic rules to both the view and the store's [`SeenRules`], and service descriptions to
//! the view.
//!
//! The watch is the only road into the node's table, the node's own writes included: a write
//! returns once the watch has delivered its revision (`applied`, see `wait_applied`), so every
//! node's table changes the same way, in etcd's order. When the watch breaks (etcd restarting,
//! a compaction past the revision it follows), the node keeps serving its last table, reports
//! itself unhealthy, and lists again with backoff: a list replaces the whole table, so nothing
//! missed in between outlives the resync.

use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use stardust::traffic::Rules;

use super::encoding::{Decoded, Deleted};
use super::{Inner, Learnt, SeenRules, bounded, revision_of, unavailable};
use crate::store::{StoreError, View};

impl Inner {
    /// Lists the prefix into `view` and what was learnt; returns the revision listed at.
    async fn list(&self, view: &dyn View) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let listed = bounded(
            "list the registry's keys",
            client.get(self.root.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = revision_of(listed.header());
        let mut records = Vec::new();
        let mut learnt = Learnt::default();
        let rules_key = self.rules_key();
        let (mut rules, mut rules_listed) = (None, false);
        let mut descriptions = Vec::new();
        for kv in listed.kvs() {
            rules_listed |= kv.key() == rules_key.as_bytes();
            match self.decode(kv) {
                Some(Decoded::Instance(r)) => records.push(r),
                Some(Decoded::Rules(r, at)) => rules = Some((r, at)),
                Some(Decoded::Description {
                    service,
                    version,
                    app,
                    description,
                }) => descriptions.push((service, version, app, description)),
                Some(Decoded::App(name, app)) => drop(learnt.apps.insert(name, app)),
                Some(Decoded::DevApp(name, hash)) => drop(learnt.dev_apps.insert(name, hash)),
                Some(Decoded::Key(key, node)) => {
                    drop(learnt.keys.insert(key.kid.clone(), (key, node)))
                }
                None => {}
            }
        }
        *self.learnt.lock() = learnt;
        view.reset(records);
        for (service, version, app, description) in &descriptions {
            view.description(service, version, app, description);
        }
        match rules {
            Some((rules, at)) => self.rules_seen(view, rules, at),
            // Gone while the watch was down.
            None if !rules_listed => self.rules_gone(view),
            // Malformed (logged): the rules held stay.
            None => {}
        }
        *self.watch_down.lock() = None;
        self.applied.send_modify(|a| *a = (*a).max(revision));
        Ok(revision)
    }

    /// Lists, then follows the watch until it breaks or the node stops (`Ok`).
    async fn follow(
        &self,
        view: &Weak<dyn View>,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let revision = {
            let Some(v) = view.upgrade() else {
                return Ok(());
            };
            self.list(&*v).await?
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut client = self.client.clone();
        let mut stream = bounded(
            "watch the registry's keys",
            client.watch(
                self.root.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        let mut stopping = self.stopping.clone();
        loop {
            let message = tokio::select! {
                _ = stopping.wait_for(|s| *s) => return Ok(()),
                m = stream.message() => m,
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => return Err(unavailable("watch", "the watch ended")),
                Err(e) => return Err(unavailable("watch", e)),
            };
            if response.canceled() {
                return Err(unavailable(
                    "watch",
                    format!(
                        "etcd cancelled the watch ({}; compacted at revision {})",
                        response.cancel_reason(),
                        response.compact_revision()
                    ),
                ));
            }
            let Some(view) = view.upgrade() else {
                return Ok(());
            };
            let mut latest = 0;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                latest = latest.max(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => match self.decode(kv) {
                        Some(Decoded::Instance(r)) => view.put(r),
                        Some(Decoded::Rules(rules, at)) => self.rules_seen(&*view, rules, at),
                        Some(Decoded::Description {
                            service,
                            version,
                            app,
                            description,
                        }) => view.description(&service, &version, &app, &description),
                        Some(Decoded::App(name, app)) => {
                            self.learnt.lock().apps.insert(name, app);
                        }
                        Some(Decoded::DevApp(name, hash)) => {
                            self.learnt.lock().dev_apps.insert(name, hash);
                        }
                        Some(Decoded::Key(key, node)) => {
                            self.learnt.lock().keys.insert(key.kid.clone(), (key, node));
                        }
                        None => {}
                    },
                    EventType::Delete => match self.deleted(kv.key()) {
                        Some(Deleted::Instance(service, endpoint)) => {
                            view.delete(&service, &endpoint)
                        }
                        Some(Deleted::App(name)) => drop(self.learnt.lock().apps.remove(&name)),
                        Some(Deleted::DevApp(name)) => {
                            drop(self.learnt.lock().dev_apps.remove(&name))
                        }
                        Some(Deleted::Key(kid)) => drop(self.learnt.lock().keys.remove(&kid)),
                        Some(Deleted::Rules) => self.rules_gone(&*view),
                        None => {}
                    },
                }
            }
            if latest > 0 {
                self.applied.send_modify(|a| *a = (*a).max(latest));
            }
        }
    }

    /// The rules key holds `rules` at revision `at`: kept for the next edit, then reported (in
    /// this order: an edit based on what the view held before is then refused as stale).
    fn rules_seen(&self, view: &dyn View, rules: Rules, at: i64) {
        *self.rules.lock() = SeenRules {
            rules: rules.clone(),
            revision: at,
        };
        view.rules(rules);
    }

    /// The rules key is gone (deleted by hand): the rules are now empty, at the next revision
    /// (so every node and consumer takes the change). Nothing to do if it was absent already.
    fn rules_gone(&self, view: &dyn View) {
        let cleared = {
            let mut held = self.rules.lock();
            if held.revision == 0 {
                return;
            }
            held.revision = 0;
            held.rules = Rules {
                revision: held.rules.revision + 1,
                services: Default::default(),
            };
            held.rules.clone()
        };
        tracing::warn!(store = %self.describe, key = %self.rules_key(), revision = cleared.revision, "the traffic rules were deleted from etcd: serving no rules");
        view.rules(cleared);
    }

    /// The watch's life: follow, and on any break list and follow again, with backoff.
    pub(super) async fn run_watch(
        self: Arc<Self>,
        view: Weak<dyn View>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(100);
        let mut stopping = self.stopping.clone();
        loop {
            match self.follow(&view, &mut ready).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(store = %self.describe, error = %e, retry_in_ms = backoff.as_millis() as u64, "lost the etcd watch; serving the last known registrations until it is back");
                    *self.watch_down.lock() = Some(e.to_string());
                }
            }
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
