//! [`Provider`]: a server registered with the registry, and how it leaves.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Stardust;
use super::session::Session;
use crate::server::Server;

/// A server registered with the registry. [`Provider::shutdown`] deregisters first (consumers
/// stop sending new calls at once) and then shuts the server down gracefully.
#[must_use = "the provider stops when this handle is dropped"]
pub struct Provider {
    pub(super) server: Option<Server>,
    /// Keeps the session (and the registration's heartbeats) alive.
    pub(super) _star: Stardust,
    pub(super) session: Arc<Session>,
    pub(super) endpoint: String,
    pub(super) services: Vec<&'static str>,
    /// Cleared when the provider stops: in-process clients of its services stop calling them
    /// directly ([`Stardust::local_client`]).
    pub(super) live: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("endpoint", &self.endpoint)
            .field("services", &self.services)
            .finish()
    }
}

impl Provider {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .expect("present until shutdown")
            .local_addr()
    }

    /// The address registered for consumers.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Deregisters every service, then shuts the server down gracefully (in-flight calls finish).
    pub async fn shutdown(mut self) {
        self.live.store(false, std::sync::atomic::Ordering::Release);
        for service in std::mem::take(&mut self.services) {
            if let Err(e) = self.session.deregister(service, &self.endpoint).await {
                tracing::warn!(service, error = %e, "deregistration failed; the lease will expire");
            }
        }
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.live.store(false, std::sync::atomic::Ordering::Release);
        // Dropped without shutdown: stop heartbeating for these registrations and remove them
        // in the background, so consumers are not sent to a server that no longer exists.
        let session = self.session.clone();
        let endpoint = self.endpoint.clone();
        let services = std::mem::take(&mut self.services);
        if services.is_empty() {
            return;
        }
        for s in &services {
            session.forget(s, &endpoint);
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for s in services {
                    let _ = session.deregister(s, &endpoint).await;
                }
            });
        }
    }
}
