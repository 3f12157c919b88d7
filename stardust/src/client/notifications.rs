//! Notifications pushed by a server to this client.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::error::Error;
use crate::protocol::codec;

/// A one-way message a server pushed on a topic.
#[derive(Debug, Clone)]
pub struct Notification {
    topic: String,
    payload: Bytes,
}

impl Notification {
    pub(crate) fn new(topic: String, payload: Bytes) -> Notification {
        Notification { topic, payload }
    }

    /// The topic the server published on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The raw MessagePack payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes the payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        codec::decode_value(&self.payload)
    }
}

/// A subscription to the notifications a [`Client`](crate::Client)'s connections receive.
///
/// Only notifications that arrive after the subscription was created are seen. A subscriber that
/// falls more than the buffer (1024 notifications) behind skips the oldest ones; that is logged
/// with the number lost, never silent.
#[derive(Debug)]
pub struct Notifications {
    rx: broadcast::Receiver<Notification>,
}

impl Notifications {
    pub(crate) fn new(rx: broadcast::Receiver<Notification>) -> Notifications {
        Notifications { rx }
    }

    /// The next notification; `None` once the client is gone.
    pub async fn recv(&mut self) -> Option<Notification> {
        loop {
            match self.rx.recv().await {
                Ok(n) => return Some(n),
                Err(broadcast::error::RecvError::Lagged(lost)) => {
                    tracing::warn!(
                        lost,
                        "notification subscriber fell behind; oldest notifications skipped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Like [`recv`](Self::recv), but reports a lag (`Err(skipped)`) instead of logging it,
    /// for a subscriber that must repair what it missed.
    pub(crate) async fn recv_or_lag(&mut self) -> Result<Option<Notification>, u64> {
        match self.rx.recv().await {
            Ok(n) => Ok(Some(n)),
            Err(broadcast::error::RecvError::Lagged(lost)) => Err(lost),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
        }
    }
}
