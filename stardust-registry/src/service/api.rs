//! The [`Registry`] API, method by method.

use std::sync::atomic::Ordering;

use semver::Version;
use stardust::discovery::api::{
    Instance, LoginReply, PublicKey, Registration, Registry, RegistryError, Revision,
    ServiceSummary, Status, VersionDescription, WatchReply,
};

use stardust::traffic::{Rules, RulesEdit, ServiceRules};

use super::checks::{self, parse_req, valid_name, validate_endpoint};
use super::table::{Kind, Lease};
use super::{
    LEASE_EXPIRED, LOG_IN_FIRST, MAX_NAME_LEN, RegistryImpl, STORE_RETRIES, other_app, store_error,
    unauthorized,
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

    async fn resume(&self, token: String) -> Result<LoginReply, RegistryError> {
        let (peer, notifier) = Self::peer()?;
        let app = self.check_resume(&token, peer)?;
        self.bind_session(peer, notifier, &app);
        Ok(self.reply(&app))
    }

    async fn renew(&self) -> Result<LoginReply, RegistryError> {
        let session = self.session()?;
        self.shared.keys.refresh();
        Ok(self.reply(&session.app))
    }

    async fn public_keys(&self) -> Vec<PublicKey> {
        self.shared.keys.refresh();
        self.all_public_keys()
    }

    async fn register(&self, registration: Registration) -> Result<Instance, RegistryError> {
        let session = self.session()?;
        let app = session.app.clone();
        checks::registration_args(&self.shared.config.limits, &registration)?;
        let Registration {
            service,
            version,
            endpoint,
            weight,
            tags,
            tls,
            description,
        } = registration;
        valid_name("service name", &service)?;
        self.check_provide(&app, &service)?;
        let parsed = Version::parse(version.trim()).map_err(|e| {
            RegistryError::Invalid(format!(
                "version `{version}` is not a semantic version like `1.2.3`: {e}"
            ))
        })?;
        validate_endpoint(&endpoint)?;
        // Held until the lease is in the table; declared before any table guard below, so
        // dropped after it.
        let _slot = self.registration_slot(&session, &service, &endpoint)?;
        let instance = Instance {
            app: app.to_string(),
            service: service.clone(),
            version: parsed.to_string(),
            endpoint: endpoint.clone(),
            weight,
            tags,
            tls,
        };
        let written = self.store_put(session.id, &app, &instance).await?;
        if written != Written::Local && session.ended.load(Ordering::SeqCst) {
            // The connection closed while the write was under way, after its session's release:
            // release again, now that the store holds a lease for it.
            self.shared.store.release(session.id);
            return Err(unauthorized(LOG_IN_FIRST));
        }
        // Shared first (a shared store tells this node's view which description it holds, so
        // the first one registered through any node wins here too), then recorded here.
        if let Some(d) = &description
            && !self
                .shared
                .descriptions
                .in_store(&service, &instance.version)
            && let Err(e) = self
                .shared
                .store
                .put_description(&service, &instance.version, &app, d)
                .await
        {
            tracing::debug!(service = ?service, version = %instance.version, error = %e, "could not share the service description through the store; kept on this node");
        }
        self.shared
            .descriptions
            .record(&service, &instance.version, &app, description.as_ref());
        if let Written::At(revision) = written {
            self.shown(revision).await?;
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            return Ok(instance);
        }
        let changed = {
            let mut table = self.shared.table.lock();
            if session.ended.load(Ordering::SeqCst) {
                return Err(unauthorized(LOG_IN_FIRST));
            }
            if let Some(existing) = table.get(&service, &endpoint)
                && existing.instance.app != *app
            {
                return Err(other_app(&service, &endpoint));
            }
            self.shared
                .monitor
                .registered(&instance, session.id, std::time::Instant::now());
            table.put(Lease::new(instance.clone(), parsed, session.id))
        };
        self.shared
            .deadlines
            .track(&session, self.shared.config.lease_ttl);
        if changed {
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, version = %instance.version, "registered");
            self.shared.fanout.wake();
        }
        Ok(instance)
    }

    async fn deregister(&self, service: String, endpoint: String) -> Result<bool, RegistryError> {
        let session = self.session()?;
        let app = session.app.clone();
        checks::service_arg(&self.shared.config.limits, &service)?;
        checks::endpoint_arg(&endpoint)?;
        let mut seen = match self.shared.table.lock().get(&service, &endpoint) {
            Some(l) if l.instance.app == *app => l.revision,
            _ => return Ok(false),
        };
        let mut tries = 0;
        let written = loop {
            match self.shared.store.delete(&service, &endpoint, seen).await {
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
            tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, "deregistered");
            return Ok(true);
        }
        {
            let mut table = self.shared.table.lock();
            if table
                .get(&service, &endpoint)
                .is_none_or(|l| l.instance.app != *app)
            {
                return Ok(false);
            }
            table.remove(&service, &endpoint);
            self.shared
                .monitor
                .removed(&service, &endpoint, std::time::Instant::now());
        }
        tracing::info!(service = ?service, endpoint = ?endpoint, app = ?&*app, "deregistered");
        self.shared.fanout.wake();
        Ok(true)
    }

    async fn heartbeat(&self, status: Status) -> Result<(), RegistryError> {
        let session = self.session()?;
        // Refused whole, leases not renewed: a report over the caps is no heartbeat either.
        checks::report_args(&self.shared.config.limits, &status)?;
        if self.shared.store.is_shared() {
            // The store keeps the session's lease; it says whether it had already expired.
            if !self
                .shared
                .store
                .renew(session.id)
                .await
                .map_err(store_error)?
            {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
        } else {
            if session.lease_expired.swap(false, Ordering::SeqCst) {
                return Err(RegistryError::Invalid(LEASE_EXPIRED.into()));
            }
            // One atomic store: no lock, no walk over the leases.
            self.shared
                .deadlines
                .renew(&session, self.shared.config.lease_ttl);
        }
        // The report's figures, under the monitor's lock only (it ignores a session or
        // instances that ended meanwhile).
        self.shared
            .monitor
            .fold(session.id, &status, std::time::Instant::now());
        Ok(())
    }

    async fn discover(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let session = self.session()?;
        checks::query_args(&self.shared.config.limits, &service, &version_req)?;
        self.check_consume(&session.app, &service)?;
        let req = parse_req(&version_req)?;
        let table = self.shared.table.lock();
        Ok(table
            .matching(&service, &req)
            .map(|l| l.instance.clone())
            .collect())
    }

    async fn subscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError> {
        let session = self.session()?;
        self.join(
            &session,
            &service,
            &version_req,
            Kind::Full,
            |table, req| {
                table
                    .matching(&service, req)
                    .map(|l| l.instance.clone())
                    .collect()
            },
        )
    }

    async fn watch(
        &self,
        service: String,
        version_req: String,
        known: Option<Revision>,
    ) -> Result<WatchReply, RegistryError> {
        let session = self.session()?;
        self.join(&session, &service, &version_req, Kind::Delta, |table, _| {
            table.answer(&service, &version_req, known)
        })
    }

    async fn unsubscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<bool, RegistryError> {
        let session = self.session()?;
        checks::query_args(&self.shared.config.limits, &service, &version_req)?;
        Ok(self
            .shared
            .table
            .lock()
            .leave(&service, &version_req, session.id))
    }

    async fn traffic(
        &self,
        service: String,
        known: Option<u64>,
    ) -> Result<Option<ServiceRules>, RegistryError> {
        self.follow_traffic(service, known)
    }

    async fn rules(&self) -> Result<Rules, RegistryError> {
        self.list_rules()
    }

    async fn edit_rules(
        &self,
        edit: RulesEdit,
        if_revision: Option<u64>,
    ) -> Result<u64, RegistryError> {
        self.edit_traffic(edit, if_revision).await
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, RegistryError> {
        self.list_services()
    }

    async fn describe(&self, service: String) -> Result<Vec<VersionDescription>, RegistryError> {
        self.describe_service(&service)
    }
}

impl RegistryImpl {
    /// Subscribes `session` to `service` with `version_req` (within its subscription cap) and
    /// answers with `reply`, computed under the same lock: the answer and the pushes that
    /// follow it start from the same revision.
    fn join<R>(
        &self,
        session: &super::Session,
        service: &str,
        version_req: &str,
        kind: Kind,
        reply: impl FnOnce(&mut super::table::Table<stardust::Notifier>, &semver::VersionReq) -> R,
    ) -> Result<R, RegistryError> {
        let limits = &self.shared.config.limits;
        checks::query_args(limits, service, version_req)?;
        self.check_consume(&session.app, service)?;
        let req = parse_req(version_req)?;
        let mut table = self.shared.table.lock();
        if session.ended.load(Ordering::SeqCst) {
            return Err(unauthorized(LOG_IN_FIRST));
        }
        let (held, has) = table.subscriptions_of(session.id, service, version_req);
        let max = limits.max_subscriptions;
        if held >= max && !has {
            return Err(RegistryError::Invalid(format!(
                "this connection holds {held} subscriptions; the limit is {max} \
                 (limits.max_subscriptions)"
            )));
        }
        table.join(
            service,
            version_req,
            req.clone(),
            session.id,
            session.notifier.clone(),
            kind,
        );
        let answer = reply(&mut table, &req);
        let pending = table.has_pending();
        drop(table);
        if pending {
            self.shared.fanout.wake();
        }
        Ok(answer)
    }
}
