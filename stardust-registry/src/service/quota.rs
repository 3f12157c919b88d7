//! The caps that depend on what a session already holds: its registrations
//! ([`Limits::max_registrations`]) and subscriptions ([`Limits::max_subscriptions`]).
//!
//! A session's registrations are counted from the table of leases itself (so leases that
//! expire, are deregistered or taken over stop counting without bookkeeping), plus the
//! registrations it has under way: with a shared store a write reaches the table only when the
//! store's watch brings it back, and a connection may send many `register` calls at once.

use std::net::SocketAddr;
use std::sync::Arc;

use stardust::discovery::api::RegistryError;

use super::{LOG_IN_FIRST, RegistryImpl, Session, Shared, unauthorized};
use crate::config::Limits;

/// A registration under way, counted against its session's cap until it is in the table (or
/// failed): dropping it gives the place back.
pub(super) struct RegistrationSlot {
    shared: Arc<Shared>,
    peer: SocketAddr,
    session: u64,
    /// `false` when the session already held the lease (a refresh takes no new place).
    counted: bool,
}

impl RegistryImpl {
    /// Room for session `session` (of `peer`) to hold the lease `key` (service, endpoint), or
    /// `Invalid` naming the cap. Refreshing a lease the session holds always has room.
    pub(super) fn registration_slot(
        &self,
        peer: SocketAddr,
        session: u64,
        key: &(String, String),
    ) -> Result<RegistrationSlot, RegistryError> {
        let max = self.shared.config.limits.max_registrations;
        let mut state = self.shared.state.lock();
        let refresh = state.leases.get(key).is_some_and(|l| l.session == session);
        // Counting walks the table, as heartbeats do; only a new lease pays for it.
        let held = if refresh {
            0
        } else {
            state
                .leases
                .values()
                .filter(|l| l.session == session)
                .count()
        };
        let Some(s) = state.sessions.get_mut(&peer).filter(|s| s.id == session) else {
            return Err(unauthorized(LOG_IN_FIRST));
        };
        if !refresh {
            let holding = held + s.registering;
            if holding >= max {
                return Err(RegistryError::Invalid(format!(
                    "this connection holds {holding} registrations (counting those under way); \
                     the limit is {max} (limits.max_registrations)"
                )));
            }
            s.registering += 1;
        }
        Ok(RegistrationSlot {
            shared: self.shared.clone(),
            peer,
            session,
            counted: !refresh,
        })
    }
}

impl Drop for RegistrationSlot {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        // Callers drop a slot after releasing the state lock (it is not reentrant).
        let mut state = self.shared.state.lock();
        if let Some(s) = state
            .sessions
            .get_mut(&self.peer)
            .filter(|s| s.id == self.session)
        {
            s.registering -= 1;
        }
    }
}

impl Session {
    /// Room for one more subscription to `service` with `version_req`, or `Invalid` naming the
    /// cap. Subscribing again to the same replaces the earlier one, so it always has room.
    pub(super) fn subscription_room(
        &self,
        limits: &Limits,
        service: &str,
        version_req: &str,
    ) -> Result<(), RegistryError> {
        let max = limits.max_subscriptions;
        let held = self.subscriptions.len();
        if held >= max
            && !self
                .subscriptions
                .iter()
                .any(|sub| sub.service == service && sub.version_req == version_req)
        {
            return Err(RegistryError::Invalid(format!(
                "this connection holds {held} subscriptions; the limit is {max} \
                 (limits.max_subscriptions)"
            )));
        }
        Ok(())
    }
}
