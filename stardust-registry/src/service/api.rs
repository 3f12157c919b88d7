//! The [`Registry`] API, method by method.

use std::collections::BTreeSet;

use semver::Version;
use stardust::discovery::api::{
    Instance, LoginReply, PublicKey, Registration, Registry, RegistryError, Status,
};
use tokio::time::Instant;

use super::checks::{self, parse_req, valid_name, validate_endpoint};
use super::table::{fingerprint, matching, publish};
use super::{
    LEASE_EXPIRED, LOG_IN_FIRST, Lease, MAX_NAME_LEN, RegistryImpl, STORE_RETRIES, Subscription,
    allowed, other_app, store_error, unauthorized,
};
use crate::store::{StoreError, Written};

impl Registry for RegistryImpl {
    async fn login(&self, app: String, secret: String) -> Result<LoginReply, RegistryError> {
        let (peer, notifier) = Self::peer()?;
        if let Err(e) = self.authenticate(&app, secret, peer).await {
            // Throttled logins are not logged one by one (a flood must not flood the log); the
            // refused ones are bounded by the throttle.
            let app = if app.len() <= MAX_NAME_LEN {
                app.as_str()
            } else {
                "<oversized>"
            };
            match &e {
                RegistryError::Unauthorized(_) => {
                    tracing::info!(app = ?app, %peer, "login refused")
                }
                RegistryError::Throttled { .. } => {}
                _ => tracing::debug!(app = ?app, %peer, error = %e, "login refused"),
            }
            return Err(e);
        }
        self.shared.keys.refresh();
        self.bind_session(peer, notifier, &app);
        Ok(self.reply(&app))
    }

    async fn renew(&self) -> Result<LoginReply, RegistryError> {
        let (_, _, app) = self.session()?;
        self.shared.keys.refresh();
        Ok(self.reply(&app))
    }

    async fn public_keys(&self) -> Vec<PublicKey> {
        self.shared.keys.refresh();
        self.all_public_keys()
    }

    async fn register(&self, registration: Registration) -> Result<Instance, RegistryError> {
        let (peer, session, app) = self.session()?;
        checks::registration_args(&self.shared.config.limits, &registration)?;
        let Registration {
            service,
            version,
            endpoint,
            weight,
            tags,
            tls,
        } = registration;
        valid_name("service name", &service)?;
        let config = self.app_config(&app);
        let provide = config.as_ref().and_then(|a| a.provide.as_deref());
        if !allowed(provide, &service) {
            return Err(RegistryError::PermissionDenied(format!(
                "app `{app}` may not provide service `{service}`"
            )));
        }
        let parsed = Version::parse(version.trim()).map_err(|e| {
            RegistryError::Invalid(format!(
                "version `{version}` is not a semantic version like `1.2.3`: {e}"
            ))
        })?;
        validate_endpoint(&endpoint)?;
        let key = (service.clone(), endpoint.clone());
        // Held until the lease is in the table; declared before any state lock guard below,
        // so dropped after it.
        let _slot = self.registration_slot(peer, session, &key)?;
        let instance = Instance {
            app: app.to_string(),
            service: service.clone(),
            version: parsed.to_string(),
            endpoint: endpoint.clone(),
            weight,
            tags,
            tls,
        };
        let written = self.store_put(session, &app, &instance).await?;
        if written != Written::Local && !self.session_alive(session) {
            // The connection closed while the write was under way, after its session's release:
            // release again, now that the store holds a lease for it.
            self.shared.store.release(session);
            return Err(unauthorized(LOG_IN_FIRST));
        }
        if let Written::At(revision) = written {
            self.shown(revision).await?;
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            return Ok(instance);
        }
        let mut state = self.shared.state.lock();
        if let Some(existing) = state.leases.get(&key)
            && existing.instance.app != *app
        {
            return Err(other_app(&service, &endpoint));
        }
        let expires = Instant::now() + self.shared.config.lease_ttl;
        let previous = state.leases.insert(
            key,
            Lease {
                instance: instance.clone(),
                version: parsed,
                session,
                expires: Some(expires),
                revision: 0,
                node: None,
            },
        );
        self.shared
            .monitor
            .registered(&instance, session, std::time::Instant::now());
        if previous.as_ref().is_none_or(|p| p.instance != instance) {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            publish(&mut state, &BTreeSet::from([service]));
        }
        drop(state);
        self.shared.sweeper_wake.notify_one();
        Ok(instance)
    }

    async fn deregister(&self, service: String, endpoint: String) -> Result<bool, RegistryError> {
        let (_, _, app) = self.session()?;
        checks::service_arg(&self.shared.config.limits, &service)?;
        checks::endpoint_arg(&endpoint)?;
        let key = (service, endpoint);
        let mut seen = match self.shared.state.lock().leases.get(&key) {
            Some(l) if l.instance.app == *app => l.revision,
            _ => return Ok(false),
        };
        let mut tries = 0;
        let written = loop {
            match self.shared.store.delete(&key.0, &key.1, seen).await {
                Ok(w) => break w,
                Err(StoreError::Conflict(Some((now, revision)))) if now.app == *app => {
                    seen = revision;
                }
                // Gone already, or someone else's by now.
                Err(StoreError::Conflict(_)) => return Ok(false),
                Err(e) => return Err(store_error(e)),
            }
            tries += 1;
            if tries >= STORE_RETRIES {
                return Err(store_error(StoreError::Conflict(None)));
            }
        };
        if let Written::At(revision) = written {
            self.shown(revision).await?;
            tracing::info!(service = ?key.0, endpoint = ?key.1, app = ?&*app, "deregistered");
            return Ok(true);
        }
        let mut state = self.shared.state.lock();
        if state
            .leases
            .get(&key)
            .is_none_or(|l| l.instance.app != *app)
        {
            return Ok(false);
        }
        state.leases.remove(&key);
        self.shared
            .monitor
            .removed(&key.0, &key.1, std::time::Instant::now());
        tracing::info!(service = ?key.0, endpoint = ?key.1, app = ?&*app, "deregistered");
        publish(&mut state, &BTreeSet::from([key.0]));
        Ok(true)
    }

    async fn heartbeat(&self, status: Status) -> Result<(), RegistryError> {
        let (_, session, _) = self.session()?;
        // Refused whole, leases not renewed: a report over the caps is no heartbeat either.
        checks::report_args(&self.shared.config.limits, &status)?;
        if self.shared.store.is_shared() {
            // The store keeps the session's lease; it says whether it had already expired.
            if !self
                .shared
                .store
                .renew(session)
                .await
                .map_err(store_error)?
            {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
        } else {
            let expires = Instant::now() + self.shared.config.lease_ttl;
            let mut state = self.shared.state.lock();
            if state.expired.remove(&session) {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
            for lease in state.leases.values_mut() {
                if lease.session == session {
                    lease.expires = Some(expires);
                }
            }
        }
        // The report's figures, outside the state lock (the monitor ignores a session or
        // instances that ended meanwhile).
        self.shared
            .monitor
            .fold(session, &status, std::time::Instant::now());
        Ok(())
    }

    async fn discover(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let (_, _, app) = self.session()?;
        checks::query_args(&self.shared.config.limits, &service, &version_req)?;
        self.check_consume(&app, &service)?;
        let req = parse_req(&version_req)?;
        let state = self.shared.state.lock();
        Ok(matching(&state, &service, &req).cloned().collect())
    }

    async fn subscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let (peer, session, app) = self.session()?;
        let limits = &self.shared.config.limits;
        checks::query_args(limits, &service, &version_req)?;
        self.check_consume(&app, &service)?;
        let req = parse_req(&version_req)?;
        let mut state = self.shared.state.lock();
        match state.sessions.get(&peer).filter(|s| s.id == session) {
            Some(s) => s.subscription_room(limits, &service, &version_req)?,
            None => return Err(unauthorized(LOG_IN_FIRST)),
        }
        let list: Vec<Instance> = matching(&state, &service, &req).cloned().collect();
        let last = fingerprint(&state.fingerprints, list.iter());
        let s = state
            .sessions
            .get_mut(&peer)
            .expect("found under this lock");
        s.subscriptions
            .retain(|sub| !(sub.service == service && sub.version_req == version_req));
        s.subscriptions.push(Subscription {
            service,
            version_req,
            req,
            last,
        });
        Ok(list)
    }

    async fn unsubscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<bool, RegistryError> {
        let (peer, session, _) = self.session()?;
        checks::query_args(&self.shared.config.limits, &service, &version_req)?;
        let mut state = self.shared.state.lock();
        let Some(s) = state.sessions.get_mut(&peer).filter(|s| s.id == session) else {
            return Err(unauthorized(LOG_IN_FIRST));
        };
        let before = s.subscriptions.len();
        s.subscriptions
            .retain(|sub| !(sub.service == service && sub.version_req == version_req));
        Ok(s.subscriptions.len() < before)
    }
}
