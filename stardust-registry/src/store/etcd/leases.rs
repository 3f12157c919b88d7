//! Registrations' etcd leases: one per session, granted with its first registration, renewed
//! by its heartbeats, revoked when it ends.
//!
//! Tying registrations to a lease is what lets a node die without anyone cleaning up after it:
//! it stops renewing, and etcd drops its providers' keys when the TTL runs out. A renewal is one
//! short request per heartbeat rather than a long-lived keep-alive stream per session, so an
//! idle session costs this node no task. ([`keep_alive`] also renews the node's key lease, see
//! `publish`.)

use etcd_client::Client;

use super::{Inner, REQUEST_TIMEOUT, bounded, unavailable};
use crate::store::StoreError;

/// Renews lease `id` once: `Ok(false)` if it has expired (or was revoked).
///
/// Opening etcd-client's keep-alive stream sends one renewal and reads its answer, refusing a
/// lease whose TTL came back as 0; the stream is then dropped (one short-lived stream per
/// heartbeat keeps no per-session task alive).
pub(super) async fn keep_alive(client: &Client, id: i64) -> Result<bool, StoreError> {
    let mut client = client.clone();
    match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(id)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => Ok(false),
        Ok(Err(e)) => Err(unavailable("renew a lease", e)),
        Err(_) => Err(unavailable(
            "renew a lease",
            format!("no answer within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

impl Inner {
    /// The session's lease, granted now if it has none.
    pub(super) async fn session_lease(&self, session: u64) -> Result<i64, StoreError> {
        let slot = self.sessions.lock().entry(session).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let mut client = self.client.clone();
        let granted = bounded(
            "grant a lease",
            client.lease_grant(self.lease_ttl_secs, None),
        )
        .await?;
        // (A session that ended meanwhile is released again by the registry once the write
        // returns, which revokes this lease.)
        *slot = Some(granted.id());
        Ok(granted.id())
    }

    /// Forgets `session`'s lease if it still is `id` (it expired in etcd).
    pub(super) fn forget_lease(&self, session: u64, id: i64) {
        let slot = self.sessions.lock().get(&session).cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && *slot == Some(id)
        {
            *slot = None;
        }
    }

    /// Revokes lease `id` in the background (its keys go at once).
    pub(super) fn revoke(&self, id: i64) {
        let mut client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = bounded("revoke a lease", client.lease_revoke(id)).await {
                // It expires on its own within the lease TTL.
                tracing::debug!(lease = id, error = %e, "lease not revoked");
            }
        });
    }
}
