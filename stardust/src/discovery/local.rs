//! In-process calls through a [`Stardust`] handle: a proxy that calls this process's own
//! instance of its service directly ([`crate::local`]) while that instance is served.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::Stardust;
use crate::client::ServiceClient;
use crate::local::{LocalMode, LocalService};
use crate::server::Server;

impl Stardust {
    /// Like [`Stardust::client`], but while this handle serves `C`'s service itself
    /// ([`Stardust::serve`] before this call), its unary calls go to that instance in-process:
    /// no socket, no serializer ([`LocalMode::Full`]: deadlines, context with this app as the
    /// caller, interceptors and the server's figures still apply; see [`crate::local`]). Once
    /// that provider stops, and for streaming methods, calls go through the registry as
    /// [`Stardust::client`]'s do.
    ///
    /// In-process calls skip serialization, which changes behaviour for types whose encoding
    /// is not the identity (`#[serde(skip)]` fields survive, custom serializers do not run):
    /// hence an opt-in per proxy.
    pub fn local_client<C: ServiceClient>(&self) -> C {
        self.local_client_in::<C>(LocalMode::Full)
    }

    /// [`Stardust::local_client`] with calls made in `mode` ([`LocalMode::Lean`]: the
    /// implementation's future awaited as it is).
    pub fn local_client_in<C: ServiceClient>(&self, mode: LocalMode) -> C {
        let client = self.client::<C>();
        let local = self
            .inner
            .locals
            .lock()
            .iter()
            .rev()
            .find(|l| l.descriptor().name == C::DESCRIPTOR.name && l.is_live())
            .cloned();
        match local {
            Some(local) => {
                let local = local.called_by(self.app()).with_mode(mode);
                C::with_local(client.client().clone(), &local)
            }
            None => client,
        }
    }

    /// Remembers what `server` hosts for in-process calls, while `live` holds.
    pub(super) fn add_locals(&self, server: &Server, live: &Arc<AtomicBool>) {
        let mut locals = self.inner.locals.lock();
        locals.retain(LocalService::is_live);
        locals.extend(
            server
                .local_services()
                .into_iter()
                .map(|l| l.while_live(live.clone())),
        );
    }
}
