//! What this node publishes for the others: the apps of its config file and the public keys of
//! its token-signing ring.
//!
//! App definitions are put without a lease: they outlive the node that published them, so a
//! provider configured on one node can log in through any other. Public keys sit under a lease
//! of the node's own whose TTL outlives every token it signed, renewed every [`KEY_REFRESH`]:
//! a token from a node that died stays verifiable everywhere until it expires (the keys go a
//! few refresh periods later).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use etcd_client::PutOptions;

use super::encoding::{StoredApp, StoredKey};
use super::leases::keep_alive;
use super::{Inner, bounded};
use crate::store::StoreError;

/// How often the node renews its key lease and republishes rotated keys.
const KEY_REFRESH: Duration = Duration::from_secs(5);

impl Inner {
    /// Publishes this node's config apps (without a lease: definitions outlive nodes; a node's
    /// own config always wins over what it reads back).
    pub(super) async fn publish_apps(&self) -> Result<(), StoreError> {
        for (name, app) in &self.apps {
            let value = serde_json::to_vec(&StoredApp::of(app)).expect("serialisable");
            let mut client = self.client.clone();
            bounded(
                "publish an app definition",
                client.put(format!("{}apps/{name}", self.root), value, None),
            )
            .await?;
        }
        Ok(())
    }

    /// The key lease's TTL: it outlives every token this node signed, by a few refresh periods.
    pub(super) fn key_lease_ttl(&self) -> i64 {
        (self.keys.token_ttl() + KEY_REFRESH * 3)
            .as_secs_f64()
            .ceil() as i64
    }

    /// Keeps this node's public keys published (the first round was done by `attach`).
    pub(super) async fn run_key_lease(
        self: Arc<Self>,
        mut lease: Option<i64>,
        mut published: HashSet<String>,
    ) {
        let ttl = self.key_lease_ttl();
        let mut stopping = self.stopping.clone();
        let mut tick = tokio::time::interval(KEY_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // immediate: the first round is done
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh_keys(ttl, &mut lease, &mut published).await {
                tracing::warn!(store = %self.describe, error = %e, "could not publish the signing keys (tokens from this node may be refused by providers logged in elsewhere)");
            }
        }
    }

    pub(super) async fn refresh_keys(
        &self,
        ttl: i64,
        lease: &mut Option<i64>,
        published: &mut HashSet<String>,
    ) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        if let Some(id) = *lease
            && !keep_alive(&client, id).await?
        {
            *lease = None;
        }
        let id = match *lease {
            Some(id) => id,
            None => {
                let id = bounded("grant the key lease", client.lease_grant(ttl, None))
                    .await?
                    .id();
                *lease = Some(id);
                published.clear();
                id
            }
        };
        let own = self.keys.public_keys();
        for key in &own {
            if published.contains(&key.kid) {
                continue;
            }
            let value = serde_json::to_vec(&StoredKey {
                key: URL_SAFE_NO_PAD.encode(&key.key),
                node: self.node.clone(),
            })
            .expect("serialisable");
            bounded(
                "publish a public key",
                client.put(
                    format!("{}keys/{}", self.root, key.kid),
                    value,
                    Some(PutOptions::new().with_lease(id)),
                ),
            )
            .await?;
            published.insert(key.kid.clone());
        }
        // Keys the ring pruned (their tokens have all expired).
        let gone: Vec<String> = published
            .iter()
            .filter(|kid| !own.iter().any(|k| &k.kid == *kid))
            .cloned()
            .collect();
        for kid in gone {
            bounded(
                "withdraw a public key",
                client.delete(format!("{}keys/{kid}", self.root), None),
            )
            .await?;
            published.remove(&kid);
        }
        Ok(())
    }
}
