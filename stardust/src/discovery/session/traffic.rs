//! Following the traffic rules of the services this process calls: asked with `traffic` when a
//! service is first watched (and after every reconnect, and on every pull), then pushed by the
//! registry on [`TRAFFIC_TOPIC`] as they change. Each service's rules go to its watches, which
//! apply them to their instances; calls started after that follow them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Session, SessionConfig};
use crate::discovery::api::{FaultCount, RegistryClient};
use crate::error::Error;
use crate::traffic::{FEATURE_TRAFFIC, ServiceRules, TrafficContext};

/// The services whose rules this process follows, and the rules it holds.
pub(super) struct Followed {
    context: Arc<TrafficContext>,
    /// By service: what is held.
    services: Mutex<HashMap<String, Held>>,
}

/// One followed service's rules.
#[derive(Default)]
struct Held {
    /// `None`: not answered yet.
    rules: Option<ServiceRules>,
    /// Asks in flight.
    asking: u32,
    /// A push arrived while asking: an answer may be older than it (the registry's answer and
    /// its push can cross), so it is taken only if newer.
    pushed: bool,
}

impl Followed {
    pub(super) fn new(app: &str, cfg: &SessionConfig) -> Followed {
        let seed = cfg.traffic_seed.unwrap_or_else(random_seed);
        Followed {
            context: Arc::new(TrafficContext::new(app.to_owned(), cfg.faults, seed)),
            services: Mutex::new(HashMap::new()),
        }
    }

    /// The faults injected since the last report, for the next one.
    pub(super) fn take_injected(&self) -> Vec<FaultCount> {
        self.context
            .take_injected()
            .into_iter()
            .map(|(service, fault, kind, count)| FaultCount {
                service,
                fault,
                kind: kind.to_owned(),
                count,
            })
            .collect()
    }
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness the draws are still fair, only the same in every run.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn speaks_traffic(client: &RegistryClient) -> bool {
    client.client().peer_features().has(FEATURE_TRAFFIC)
}

impl Session {
    /// What calls of `service` share: the caller, the dice, the fault counts.
    pub(crate) fn traffic_context(&self) -> &Arc<TrafficContext> {
        &self.traffic.context
    }

    /// The rules held for `service`, if any were received.
    pub(crate) fn rules_of(&self, service: &str) -> Option<ServiceRules> {
        self.traffic
            .services
            .lock()
            .get(service)
            .and_then(|h| h.rules.clone())
    }

    /// Starts following `service`'s rules (a watch of it was created); asks the registry now
    /// when connected, else on the next resync.
    pub(super) fn follow_traffic(self: &Arc<Self>, service: &str) {
        {
            let mut services = self.traffic.services.lock();
            if services.contains_key(service) {
                return;
            }
            services.insert(service.to_owned(), Held::default());
        }
        let Ok(client) = self.registry() else { return };
        let session = Arc::downgrade(self);
        let service = service.to_owned();
        tokio::spawn(async move {
            let Some(session) = session.upgrade() else {
                return;
            };
            if let Err(e) = session.ask_traffic(&client, &service).await {
                tracing::debug!(service = %service, error = %e, "traffic rules not fetched; the next pull retries");
            }
        });
    }

    /// Stops following `service`'s rules when no watch of it is left.
    pub(super) fn unfollow_traffic(&self, service: &str) {
        if !self.watches.lock().iter().any(|w| w.service == service) {
            self.traffic.services.lock().remove(service);
        }
    }

    /// Asks the registry for `service`'s rules (naming the revision held), following them.
    pub(super) async fn ask_traffic(
        &self,
        client: &RegistryClient,
        service: &str,
    ) -> Result<(), Error> {
        if !speaks_traffic(client) {
            return Ok(());
        }
        let known = match self.traffic.services.lock().get_mut(service) {
            None => return Ok(()), // no longer followed
            Some(held) => {
                if held.asking == 0 {
                    held.pushed = false;
                }
                held.asking += 1;
                held.rules.as_ref().map(|r| r.revision)
            }
        };
        let answer = client.traffic(service.to_owned(), known).await;
        let rules = {
            let mut services = self.traffic.services.lock();
            let Some(held) = services.get_mut(service) else {
                return Ok(());
            };
            held.asking -= 1;
            match answer {
                Ok(Ok(Some(rules))) => rules,
                Ok(Ok(None)) => return Ok(()),
                // A refusal (an app that may not consume the service, too many services
                // followed) leaves the calls without rules; the session itself is fine.
                Ok(Err(e)) => {
                    tracing::debug!(service = %service, error = %e, "traffic rules refused");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        };
        self.apply_rules(service, rules, true);
        Ok(())
    }

    /// Asks for every followed service's rules (after a reconnect, and on every pull).
    pub(super) async fn ask_all_traffic(&self, client: &RegistryClient) -> Result<(), Error> {
        if !speaks_traffic(client) {
            return Ok(());
        }
        let services: Vec<String> = self.traffic.services.lock().keys().cloned().collect();
        for service in services {
            self.ask_traffic(client, &service).await?;
        }
        Ok(())
    }

    /// Takes `rules` for `service` unless older than those held (`answer`: they answer an ask,
    /// which may also bring a registry's rules back to an older revision after a restart
    /// without its rules file).
    pub(super) fn apply_rules(&self, service: &str, rules: ServiceRules, answer: bool) {
        {
            let mut services = self.traffic.services.lock();
            let Some(held) = services.get_mut(service) else {
                return; // no longer followed
            };
            if !answer && held.asking > 0 {
                held.pushed = true;
            }
            // A push is taken only if newer; an answer also when older (a registry restarted
            // without its rules starts over), unless a push crossed it.
            let only_newer = !answer || held.pushed;
            if let Some(h) = &held.rules
                && (h == &rules || (only_newer && h.revision >= rules.revision))
            {
                return;
            }
            tracing::info!(
                service = %service,
                revision = rules.revision,
                routes = rules.routes.len(),
                faults = rules.faults.len(),
                "traffic rules changed"
            );
            held.rules = Some(rules.clone());
            // Still under the lock, so a push and an answer racing cannot leave the watches
            // with the older of the two (lock order: rules, then watches).
            let watches: Vec<_> = self
                .watches
                .lock()
                .iter()
                .filter(|w| w.service == service)
                .cloned()
                .collect();
            for w in watches {
                w.set_rules(Some(rules.clone()));
            }
        }
    }
}
