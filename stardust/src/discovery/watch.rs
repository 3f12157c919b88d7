//! The consumer's live view of one service: the instances the registry reported last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use super::api::Instance;
use super::session::Session;
use crate::auth::BoxFuture;
use crate::client::EndpointSource;
use crate::error::{Error, ErrorKind};

/// Instances of `service` matching `version_req`, kept fresh by registry pushes and periodic pulls.
pub(crate) struct ServiceWatch {
    pub(crate) service: String,
    pub(crate) version_req: String,
    /// `None` until the first answer from the registry.
    instances: RwLock<Option<Vec<Instance>>>,
    /// Rotates the starting point so reconnecting clients spread over the instances.
    next: AtomicUsize,
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
            next: AtomicUsize::new(0),
            session: Arc::downgrade(session),
        }
    }

    /// Replaces the known instances (a push or a pull arrived).
    pub(crate) fn update(&self, instances: Vec<Instance>) {
        let mut known = self.instances.write();
        if known.as_ref() != Some(&instances) {
            tracing::debug!(
                service = %self.service,
                count = instances.len(),
                "discovery: instances changed"
            );
        }
        *known = Some(instances);
    }

    fn no_provider(&self) -> Error {
        Error::new(
            ErrorKind::NoProvider,
            format!(
                "no live provider of service `{}` matching `{}`",
                self.service, self.version_req
            ),
        )
    }
}

impl EndpointSource for ServiceWatch {
    fn candidates(&self) -> BoxFuture<'_, Result<Vec<SocketAddr>, Error>> {
        Box::pin(async move {
            let known = self.instances.read().clone();
            let instances = match known {
                Some(list) => list,
                None => {
                    // First use before the subscription answered: ask the registry now.
                    let session = self.session.upgrade().ok_or_else(|| {
                        Error::connection_closed("the Stardust handle was dropped")
                    })?;
                    let list = session.discover(&self.service, &self.version_req).await?;
                    self.update(list.clone());
                    list
                }
            };
            if instances.is_empty() {
                return Err(self.no_provider());
            }
            let start = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
            let mut addrs = Vec::with_capacity(instances.len());
            for inst in instances[start..].iter().chain(&instances[..start]) {
                match tokio::net::lookup_host(inst.endpoint.as_str()).await {
                    Ok(resolved) => addrs.extend(resolved),
                    Err(e) => tracing::warn!(
                        endpoint = %inst.endpoint,
                        error = %e,
                        "discovery: cannot resolve a provider's endpoint"
                    ),
                }
            }
            if addrs.is_empty() {
                return Err(self.no_provider());
            }
            Ok(addrs)
        })
    }

    fn describe(&self) -> String {
        format!("service {} {}", self.service, self.version_req)
    }
}
