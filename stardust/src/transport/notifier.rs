//! Server-pushed notifications.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::Outbound;
use crate::error::{Error, ErrorKind};
use crate::protocol::{codec, message};

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
    /// A notifier of no connection (an in-process caller's): closed from the start.
    pub(crate) fn detached(peer: SocketAddr) -> Notifier {
        Notifier {
            out: std::sync::Weak::new(),
            peer,
        }
    }

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

    /// Queues a notification encoded once with [`EncodedNotification::new`]: for a fan-out to
    /// many connections, each of which only copies the frame into its write buffer. Refused like
    /// [`Notifier::notify`] while the client is not reading, and with `FrameTooLarge` when the
    /// frame exceeds what this client accepts.
    pub fn notify_encoded(&self, notification: &EncodedNotification) -> Result<(), Error> {
        let out = self
            .out
            .upgrade()
            .ok_or_else(|| Error::connection_closed("the client has disconnected"))?;
        let frame = &notification.frame;
        // The frame's length field counts everything after itself.
        let length = frame.len() - 4;
        if length > out.peer_max_frame as usize {
            return Err(Error::new(
                ErrorKind::FrameTooLarge,
                format!(
                    "notification of {length} bytes exceeds the limit of {} bytes of the client at {}",
                    out.peer_max_frame, self.peer
                ),
            ));
        }
        if out.over_limit() {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "notification dropped: {} bytes are already waiting for the client at {}, \
                     which is not reading them",
                    out.queued(),
                    self.peer
                ),
            ));
        }
        out.push(|buf| {
            buf.extend_from_slice(frame);
            Ok(())
        })
    }

    /// Bytes queued for this client and not yet written to its socket (0 once it is gone): how
    /// far behind it is.
    pub fn queued_bytes(&self) -> usize {
        self.out.upgrade().map_or(0, |o| o.queued())
    }

    /// Waits until at most `low` bytes are queued for this client (it caught up). Fails with
    /// `ConnectionClosed` once the connection is gone or closing.
    pub async fn drained(&self, low: usize) -> Result<(), Error> {
        let out = self
            .out
            .upgrade()
            .ok_or_else(|| Error::connection_closed("the client has disconnected"))?;
        out.drained_to(low).await
    }
}

/// A notification encoded once, to be sent to many connections with
/// [`Notifier::notify_encoded`]: the topic and payload are encoded here, and each connection
/// copies the finished frame.
#[derive(Clone)]
pub struct EncodedNotification {
    frame: Bytes,
}

impl EncodedNotification {
    /// Encodes `payload` (MessagePack, like [`Notifier::notify`]) on `topic`.
    pub fn new<T: Serialize + ?Sized>(topic: &str, payload: &T) -> Result<Self, Error> {
        let mut body = BytesMut::new();
        codec::encode_value(&mut body, payload)?;
        Ok(Self::from_payload(topic, &body))
    }

    /// A notification whose payload is already encoded as one MessagePack value.
    pub fn from_payload(topic: &str, payload: &[u8]) -> Self {
        let mut frame = BytesMut::with_capacity(payload.len() + topic.len() + 24);
        message::put_notify_raw(&mut frame, topic, payload, u32::MAX).expect("no limit to exceed");
        EncodedNotification {
            frame: frame.freeze(),
        }
    }

    /// The size of the frame, in bytes.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Always `false`: a frame has a header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for EncodedNotification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedNotification")
            .field("bytes", &self.frame.len())
            .finish()
    }
}
