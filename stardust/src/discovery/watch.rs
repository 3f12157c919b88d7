//! The consumer's live view of one service: the instances the registry reported last.

use std::sync::Arc;

use parking_lot::RwLock;

use super::api::Instance;
use super::session::Session;
use crate::auth::BoxFuture;
use crate::balance::Target;
use crate::client::EndpointSource;
use crate::error::{Error, ErrorKind};

/// Instances of `service` matching `version_req`, kept fresh by registry pushes and periodic pulls.
pub(crate) struct ServiceWatch {
    pub(crate) service: String,
    pub(crate) version_req: String,
    /// `None` until the first answer from the registry.
    instances: RwLock<Option<Vec<Instance>>>,
    /// The same instances as balancing targets, handed to calls without copying.
    targets: RwLock<Option<Arc<[Target]>>>,
    session: std::sync::Weak<Session>,
}

impl ServiceWatch {
    pub(crate) fn new(
        service: String,
        version_req: String,
        session: &Arc<Session>,
    ) -> ServiceWatch {
        ServiceWatch {
            service,
            version_req,
            instances: RwLock::new(None),
            targets: RwLock::new(None),
            session: Arc::downgrade(session),
        }
    }

    /// Replaces the known instances (a push or a pull arrived).
    pub(crate) fn update(&self, instances: Vec<Instance>) {
        let mut known = self.instances.write();
        if known.as_ref() == Some(&instances) {
            return;
        }
        tracing::debug!(
            service = %self.service,
            count = instances.len(),
            "discovery: instances changed"
        );
        let session = self.session.upgrade();
        let targets: Arc<[Target]> = instances
            .iter()
            .map(|i| {
                let endpoint: Arc<str> = Arc::from(i.endpoint.as_str());
                let mut target = match &session {
                    Some(s) => {
                        let load = s.pool.load(&endpoint);
                        let figures = s.pool.call_figures(&endpoint, &self.service);
                        let mut t = Target::with_load(endpoint, i.weight, load);
                        t.figures = Some(figures);
                        t
                    }
                    None => Target::new(endpoint, i.weight),
                };
                target.tls = i.tls;
                target
            })
            .collect();
        *self.targets.write() = Some(targets);
        *known = Some(instances);
    }

    /// Whether the registry currently lists a provider at `endpoint`.
    pub(crate) fn lists(&self, endpoint: &str) -> bool {
        self.instances
            .read()
            .as_ref()
            .is_some_and(|list| list.iter().any(|i| i.endpoint == endpoint))
    }
}

impl EndpointSource for ServiceWatch {
    fn known(&self) -> Option<Arc<[Target]>> {
        self.targets.read().clone()
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Arc<[Target]>, Error>> {
        Box::pin(async move {
            if let Some(targets) = self.known() {
                return Ok(targets);
            }
            // First use before the subscription answered: ask the registry now.
            let session = self
                .session
                .upgrade()
                .ok_or_else(|| Error::connection_closed("the Stardust handle was dropped"))?;
            let list = session.discover(&self.service, &self.version_req).await?;
            self.update(list);
            Ok(self.known().unwrap_or_else(|| Arc::from(Vec::new())))
        })
    }

    fn no_provider(&self, detail: &str) -> Error {
        let mut message = format!(
            "no live provider of service `{}` matching `{}`",
            self.service, self.version_req
        );
        if !detail.is_empty() {
            message.push_str(": ");
            message.push_str(detail);
        }
        Error::new(ErrorKind::NoProvider, message)
    }

    fn describe(&self) -> String {
        format!("service {} {}", self.service, self.version_req)
    }
}
