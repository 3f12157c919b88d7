//! Server-pushed notifications.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::protocol::message;
use crate::transport::Outbound;

/// Sends one-way notifications to one client connection.
///
/// Obtained from [`Context::notifier`](crate::Context::notifier) inside a handler and kept as
/// long as needed (a subscription). It does not keep the connection alive: once the client is
/// gone, [`Notifier::notify`] fails with `ConnectionClosed` and the subscriber can be forgotten.
///
/// While the application holds one, the connection is not closed as idle
/// ([`ServerBuilder::idle_timeout`](crate::ServerBuilder::idle_timeout)): a subscriber may be
/// waiting for nothing but notifications.
#[derive(Clone)]
pub struct Notifier {
    out: Weak<Outbound>,
    peer: SocketAddr,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Notifier {
    pub(crate) fn new(out: &Arc<Outbound>, peer: SocketAddr) -> Notifier {
        Notifier {
            out: Arc::downgrade(out),
            peer,
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// `true` once the connection is gone or closing.
    pub fn is_closed(&self) -> bool {
        self.out.upgrade().is_none_or(|o| o.is_closed())
    }

    /// Resolves once the connection is gone or closing (to drop a subscription promptly).
    pub async fn closed(&self) {
        if let Some(out) = self.out.upgrade() {
            out.closed().await;
        }
    }

    /// Queues a notification on `topic` with a MessagePack-encoded `payload`.
    ///
    /// Returns once the frame is queued (not when the client has read it); frames on one
    /// connection are delivered in order. While the client is not reading what it is sent
    /// (more than [`ServerBuilder::max_write_buffer`](crate::ServerBuilder::max_write_buffer)
    /// bytes wait for it), notifications are refused with `Overloaded` instead of piling up.
    pub fn notify<T: Serialize + ?Sized>(&self, topic: &str, payload: &T) -> Result<(), Error> {
        let out = self
            .out
            .upgrade()
            .ok_or_else(|| Error::connection_closed("the client has disconnected"))?;
        if out.over_limit() {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "notification on `{topic}` dropped: {} bytes are already waiting for the \
                     client at {}, which is not reading them",
                    out.queued(),
                    self.peer
                ),
            ));
        }
        let max = out.peer_max_frame;
        out.push(|buf| message::put_notify(buf, topic, payload, max))
    }
}
