//! Following the registry's lists: subscribing, applying its pushes, pulling as a safety net.
//!
//! With a registry that announced `discovery.delta`, a watch subscribes with `watch` (a
//! snapshot, then deltas on [`DELTA_TOPIC`]) and the periodic pull sends the revision it holds,
//! so an unchanged list costs a few bytes. With an older registry it subscribes with
//! `subscribe` and takes the whole list every time, as before.

use std::sync::Arc;

use super::Session;
use crate::discovery::api::{
    DELTA_TOPIC, DISCOVERY_TOPIC, DiscoveryEvent, DiscoveryPush, FEATURE_DELTA, Instance,
    RegistryClient,
};
use crate::discovery::watch::{Applied, ServiceWatch};
use crate::error::Error;
use crate::traffic::{TRAFFIC_TOPIC, TrafficPush};

/// How many times one bring-up-to-date asks again when answers keep leaving gaps (changes
/// racing with it); the next push or pull continues from there.
const MAX_ASKS: usize = 3;

fn speaks_deltas(client: &RegistryClient) -> bool {
    client.client().peer_features().has(FEATURE_DELTA)
}

impl Session {
    /// Registers everything this process provides and subscribes to everything it consumes, on
    /// a freshly logged-in connection; the pushes then flow into the watches.
    pub(crate) async fn resync(self: &Arc<Self>, client: &RegistryClient) -> Result<(), Error> {
        self.follow_pushes(client);
        let registrations = self.registrations.lock().clone();
        for r in registrations {
            client.register(r).await?.map_err(Error::from)?;
        }
        let watches = self.watches.lock().clone();
        for w in watches {
            self.bring_up_to_date(client, &w).await?;
        }
        self.ask_all_traffic(client).await?;
        self.drain_removed();
        Ok(())
    }

    /// Applies the pushes `client`'s connection receives, until it closes.
    fn follow_pushes(self: &Arc<Self>, client: &RegistryClient) {
        let mut notes = client.client().notifications();
        let weak = Arc::downgrade(self);
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let note = match notes.recv_or_lag().await {
                    Ok(Some(n)) => n,
                    Ok(None) => return,
                    Err(lost) => {
                        // Pushes were skipped here, not by the registry: every watch asks.
                        tracing::warn!(lost, "discovery pushes skipped locally; asking again");
                        let Some(session) = weak.upgrade() else {
                            return;
                        };
                        for w in session.watches.lock().clone() {
                            session.ask_later(&client, w);
                        }
                        continue;
                    }
                };
                let Some(session) = weak.upgrade() else {
                    return;
                };
                match note.topic() {
                    DELTA_TOPIC => match note.decode::<DiscoveryPush>() {
                        Ok(push) => session.apply_push(&client, push),
                        Err(e) => tracing::warn!(error = %e, "malformed discovery push"),
                    },
                    DISCOVERY_TOPIC => match note.decode::<DiscoveryEvent>() {
                        Ok(event) => session.apply_list(event),
                        Err(e) => tracing::warn!(error = %e, "malformed discovery event"),
                    },
                    TRAFFIC_TOPIC => match note.decode::<TrafficPush>() {
                        Ok(push) => session.apply_rules(&push.service, push.rules, false),
                        Err(e) => tracing::warn!(error = %e, "malformed traffic rules push"),
                    },
                    _ => {}
                }
            }
        });
    }

    fn watch_of(&self, service: &str, version_req: &str) -> Option<Arc<ServiceWatch>> {
        self.watches
            .lock()
            .iter()
            .find(|w| w.service == service && w.version_req == version_req)
            .cloned()
    }

    fn apply_push(self: &Arc<Self>, client: &RegistryClient, push: DiscoveryPush) {
        let (service, version_req) = match &push {
            DiscoveryPush::Delta(d) => (&d.service, &d.version_req),
            DiscoveryPush::Resync {
                service,
                version_req,
            } => (service, version_req),
        };
        // A push for a watch dropped since: nothing to do.
        let Some(w) = self.watch_of(service, version_req) else {
            return;
        };
        let gap = match push {
            DiscoveryPush::Delta(d) => w.push(d) == Applied::Gap,
            DiscoveryPush::Resync { .. } => true,
        };
        if gap {
            self.ask_later(client, w);
        } else {
            self.drain_removed();
        }
    }

    fn apply_list(&self, event: DiscoveryEvent) {
        if let Some(w) = self.watch_of(&event.service, &event.version_req) {
            w.update(event.instances);
        }
        self.drain_removed();
    }

    /// Brings `w` up to date in the background (a gap, a resync demand).
    fn ask_later(self: &Arc<Self>, client: &RegistryClient, w: Arc<ServiceWatch>) {
        let session = Arc::downgrade(self);
        let client = client.clone();
        tokio::spawn(async move {
            let Some(session) = session.upgrade() else {
                return;
            };
            if let Err(e) = session.bring_up_to_date(&client, &w).await {
                tracing::debug!(service = %w.service, error = %e, "discovery resync failed; the next pull retries");
            }
        });
    }

    /// Subscribes `w` (or checks it, when already subscribed) and applies the answer.
    async fn bring_up_to_date(
        &self,
        client: &RegistryClient,
        w: &ServiceWatch,
    ) -> Result<(), Error> {
        let (service, version_req) = (w.service.clone(), w.version_req.clone());
        if !speaks_deltas(client) {
            let list = client
                .subscribe(service, version_req)
                .await?
                .map_err(Error::from)?;
            w.update(list);
            return Ok(());
        }
        for _ in 0..MAX_ASKS {
            let known = w.begin_ask();
            let answer = client
                .watch(service.clone(), version_req.clone(), known)
                .await;
            let reply = match answer {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    w.end_ask(None);
                    return Err(e.into());
                }
                Err(e) => {
                    w.end_ask(None);
                    return Err(e);
                }
            };
            if !w.end_ask(Some(reply)) {
                break;
            }
        }
        self.drain_removed();
        Ok(())
    }

    /// Drains pooled connections to providers no watch lists any more: no new calls go there,
    /// the calls in flight finish, then the connection closes.
    pub(crate) fn drain_removed(&self) {
        let watches = self.watches.lock().clone();
        self.pool
            .retain(|endpoint| watches.iter().any(|w| w.lists(endpoint)));
    }

    /// The safety net behind the pushes: every watch checked with the registry.
    pub(super) async fn pull_all(&self) -> Result<(), Error> {
        let client = self.registry()?;
        let watches = self.watches.lock().clone();
        for w in watches {
            if speaks_deltas(&client) {
                self.bring_up_to_date(&client, &w).await?;
            } else {
                let list = client
                    .discover(w.service.clone(), w.version_req.clone())
                    .await?
                    .map_err(Error::from)?;
                w.update(list);
            }
        }
        self.ask_all_traffic(&client).await?;
        self.drain_removed();
        Ok(())
    }

    /// Asks the registry for the instances of a service (used on a watch's first use).
    pub(crate) async fn discover(
        &self,
        service: &str,
        version_req: &str,
    ) -> Result<Vec<Instance>, Error> {
        let client = self.registry()?;
        client
            .discover(service.to_owned(), version_req.to_owned())
            .await?
            .map_err(Error::from)
    }

    /// The watch for `service`/`version_req`, subscribing on first use.
    pub(crate) fn watch(self: &Arc<Self>, service: &str, version_req: &str) -> Arc<ServiceWatch> {
        let mut watches = self.watches.lock();
        if let Some(w) = watches
            .iter()
            .find(|w| w.service == service && w.version_req == version_req)
        {
            return w.clone();
        }
        let w = Arc::new(ServiceWatch::new(
            service.to_owned(),
            version_req.to_owned(),
            self,
        ));
        watches.push(w.clone());
        drop(watches);
        w.set_rules(self.rules_of(service));
        self.follow_traffic(service);
        // Subscribe now if connected (otherwise the next resync does).
        if let Ok(client) = self.registry() {
            let session = self.clone();
            let w2 = w.clone();
            tokio::spawn(async move {
                if let Err(e) = session.bring_up_to_date(&client, &w2).await {
                    tracing::warn!(service = %w2.service, error = %e, "subscribe failed; retried on the next pull or reconnect");
                }
            });
        }
        w
    }

    /// Stops keeping `watch` fresh (an agent evicting a service it no longer routes): it is no
    /// longer pulled nor re-subscribed after a reconnect, and connections to providers no other
    /// watch lists are drained. Calls still holding it finish with its last list.
    pub(crate) fn unwatch(&self, watch: &Arc<ServiceWatch>) {
        self.watches.lock().retain(|w| !Arc::ptr_eq(w, watch));
        self.unfollow_traffic(&watch.service);
        self.drain_removed();
        // And the registry stops pushing it (best effort: a reconnect drops it anyway).
        if let Ok(client) = self.registry() {
            let (service, version_req) = (watch.service.clone(), watch.version_req.clone());
            tokio::spawn(async move {
                match client.unsubscribe(service.clone(), version_req).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(service = %service, error = %e, "unsubscribe refused")
                    }
                    // An older registry without `unsubscribe` (UnknownMethod), or the
                    // connection went: either way nothing is left to undo.
                    Err(e) => tracing::debug!(service = %service, error = %e, "unsubscribe failed"),
                }
            });
        }
    }
}
