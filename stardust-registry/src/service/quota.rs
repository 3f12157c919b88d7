//! The cap that depends on what a session already holds: its registrations
//! ([`Limits::max_registrations`]). (Subscriptions are capped where they are made, under the
//! table's lock, in `api`.)
//!
//! A session's registrations are counted from the table (so leases that expire, are
//! deregistered or taken over stop counting without bookkeeping), plus the registrations it has
//! under way: with a shared store a write reaches the table only when the store's watch brings
//! it back, and a connection may send many `register` calls at once.
//!
//! [`Limits::max_registrations`]: crate::Limits::max_registrations

use std::sync::Arc;
use std::sync::atomic::Ordering;

use stardust::discovery::api::RegistryError;

use super::{RegistryImpl, Session};

/// A registration under way, counted against its session's cap until it is in the table (or
/// failed): dropping it gives the place back.
pub(super) struct RegistrationSlot {
    session: Option<Arc<Session>>,
}

impl RegistryImpl {
    /// Room for `session` to hold the lease of `service` at `endpoint`, or `Invalid` naming the
    /// cap. Refreshing a lease the session holds always has room.
    pub(super) fn registration_slot(
        &self,
        session: &Arc<Session>,
        service: &str,
        endpoint: &str,
    ) -> Result<RegistrationSlot, RegistryError> {
        let max = self.shared.config.limits.max_registrations;
        let (refresh, held) = {
            let table = self.shared.table.lock();
            let refresh = table
                .get(service, endpoint)
                .is_some_and(|l| l.session == session.id);
            (refresh, table.leases_of(session.id))
        };
        if refresh {
            return Ok(RegistrationSlot { session: None });
        }
        let under_way = session.registering.fetch_add(1, Ordering::SeqCst);
        let slot = RegistrationSlot {
            session: Some(session.clone()),
        };
        let holding = held + under_way;
        if holding >= max {
            return Err(RegistryError::Invalid(format!(
                "this connection holds {holding} registrations (counting those under way); \
                 the limit is {max} (limits.max_registrations)"
            )));
        }
        Ok(slot)
    }
}

impl Drop for RegistrationSlot {
    fn drop(&mut self) {
        if let Some(session) = &self.session {
            session.registering.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
