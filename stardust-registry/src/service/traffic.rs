//! The traffic rules: kept in the store, changed by admins one edit at a time, pushed to the
//! connections that follow a service's rules (`traffic`) whenever that service's rules change.
//!
//! A change costs one push per follower of the services it touches, never a walk over every
//! session or every service. Pushes go out outside every lock, like discovery's.

use std::collections::HashMap;

use parking_lot::Mutex;
use stardust::Notifier;
use stardust::discovery::api::RegistryError;
use stardust::traffic::{Rules, RulesEdit, ServiceRules, TRAFFIC_TOPIC, TrafficPush};

use super::checks::valid_name;
use super::{RegistryImpl, Shared, store_error};
use crate::config::ADMIN_ROLE;
use crate::store::{StoreError, Written};

/// The rules this node serves and who follows which service's.
pub(crate) struct TrafficHub {
    state: Mutex<HubState>,
    /// One edit at a time on this node (another node's edits are refused by the store when
    /// they race).
    editing: tokio::sync::Mutex<()>,
}

struct HubState {
    rules: Rules,
    /// By service: the following sessions' notifiers, by session id.
    followers: HashMap<String, HashMap<u64, Notifier>>,
    /// By session id: the services it follows (to forget them when it ends).
    by_session: HashMap<u64, Vec<String>>,
}

impl TrafficHub {
    pub(crate) fn new(rules: Rules) -> TrafficHub {
        TrafficHub {
            state: Mutex::new(HubState {
                rules,
                followers: HashMap::new(),
                by_session: HashMap::new(),
            }),
            editing: tokio::sync::Mutex::new(()),
        }
    }

    /// The rules now.
    pub(crate) fn rules(&self) -> Rules {
        self.state.lock().rules.clone()
    }

    /// Makes `session` follow `service`'s rules (at most `max` services per session) and returns
    /// them: both under one lock, so no change falls between the answer and the pushes.
    fn follow(
        &self,
        session: u64,
        notifier: &Notifier,
        service: &str,
        max: usize,
    ) -> Result<ServiceRules, RegistryError> {
        let mut st = self.state.lock();
        let followed = st.by_session.entry(session).or_default();
        if !followed.iter().any(|s| s == service) {
            if followed.len() >= max {
                return Err(RegistryError::Invalid(format!(
                    "this connection already follows the traffic rules of {max} services (the \
                     registry's `limits.max_subscriptions`)"
                )));
            }
            followed.push(service.to_owned());
            st.followers
                .entry(service.to_owned())
                .or_default()
                .insert(session, notifier.clone());
        }
        Ok(st.rules.service(service))
    }

    /// Forgets what `session` followed.
    pub(crate) fn end_session(&self, session: u64) {
        let mut st = self.state.lock();
        for service in st.by_session.remove(&session).unwrap_or_default() {
            if let Some(f) = st.followers.get_mut(&service) {
                f.remove(&session);
                if f.is_empty() {
                    st.followers.remove(&service);
                }
            }
        }
    }

    /// Takes `rules` (if newer than those held) and pushes each changed service's rules to its
    /// followers.
    pub(crate) fn replace(&self, rules: Rules) {
        let pushes: Vec<(Vec<Notifier>, TrafficPush)> = {
            let mut st = self.state.lock();
            if rules.revision < st.rules.revision {
                // An older set (a store watch replaying what this node already applied).
                return;
            }
            let old = std::mem::replace(&mut st.rules, rules);
            let new = &st.rules;
            let changed = old
                .services
                .keys()
                .chain(new.services.keys())
                .filter(|s| old.services.get(*s) != new.services.get(*s));
            let mut pushes = Vec::new();
            for service in changed {
                let Some(followers) = st.followers.get(service) else {
                    continue;
                };
                let mut rules = new.service(service);
                // A service whose last rule went: empty rules, at the revision that removed it.
                rules.revision = rules.revision.max(new.revision);
                pushes.push((
                    followers.values().cloned().collect(),
                    TrafficPush {
                        service: service.clone(),
                        rules,
                    },
                ));
            }
            pushes
        };
        for (followers, push) in pushes {
            for n in followers {
                // A follower whose queue is full or gone catches up on its next pull.
                let _ = n.notify(TRAFFIC_TOPIC, &push);
            }
        }
    }
}

impl RegistryImpl {
    /// The rules this node serves.
    pub(crate) fn current_rules(&self) -> Rules {
        self.shared.traffic.rules()
    }

    /// `traffic`: follow a service's rules; `None` when the caller holds them already.
    pub(crate) fn follow_traffic(
        &self,
        service: String,
        known: Option<u64>,
    ) -> Result<Option<ServiceRules>, RegistryError> {
        let session = self.session()?;
        valid_name("service name", &service)?;
        self.check_consume(&session.app, &service)?;
        let max = self.shared.config.limits.max_subscriptions;
        let rules = self
            .shared
            .traffic
            .follow(session.id, &session.notifier, &service, max)?;
        Ok((known != Some(rules.revision)).then_some(rules))
    }

    /// `rules`: every service's rules, for any logged-in app.
    pub(crate) fn list_rules(&self) -> Result<Rules, RegistryError> {
        self.session()?;
        Ok(self.shared.traffic.rules())
    }

    /// `edit_rules`: one change, by an admin, optionally only at `if_revision`.
    pub(crate) async fn edit_traffic(
        &self,
        edit: RulesEdit,
        if_revision: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let session = self.session()?;
        let app = &*session.app;
        if !self.app_config(app).is_some_and(|a| a.is_admin()) {
            return Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not change traffic rules: only apps with the `{ADMIN_ROLE}` role \
                 may (`roles = [\"{ADMIN_ROLE}\"]` under `[apps.{app}]` in the registry's config)"
            )));
        }
        valid_name("service name", edit.service())?;
        let _one_at_a_time = self.shared.traffic.editing.lock().await;
        let current = self.shared.traffic.rules();
        if let Some(expected) = if_revision
            && expected != current.revision
        {
            return Err(RegistryError::Invalid(format!(
                "the rules are at revision {}, not {expected} (--if-revision): someone changed \
                 them since; list them again and retry",
                current.revision
            )));
        }
        let next = current
            .edited(&edit)
            .map_err(|e| RegistryError::Invalid(e.message().to_owned()))?;
        match self.shared.store.put_rules(&next, current.revision).await {
            Ok(Written::Local) => self.shared.traffic.replace(next.clone()),
            Ok(Written::At(revision)) => self.shown(revision).await?,
            Err(StoreError::Conflict(_)) => {
                return Err(RegistryError::Invalid(
                    "the rules changed concurrently through another registry node; list them \
                     again and retry"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        tracing::info!(app = ?app, service = ?edit.service(), revision = next.revision, edit = edit_kind(&edit), "traffic rules changed");
        Ok(next.revision)
    }
}

fn edit_kind(edit: &RulesEdit) -> &'static str {
    match edit {
        RulesEdit::SetRoute { .. } => "set route",
        RulesEdit::RemoveRoute { .. } => "remove route",
        RulesEdit::SetFault { .. } => "set fault",
        RulesEdit::RemoveFault { .. } => "remove fault",
    }
}

impl Shared {
    /// The store reports the rules (etcd: written through some node).
    pub(crate) fn rules_reported(&self, rules: Rules) {
        self.traffic.replace(rules);
    }
}
