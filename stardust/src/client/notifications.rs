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

    /// A `Notify` frame's body as a notification: the payload shares the body's bytes. It is
    /// exactly the body's second element, wherever that ends: a later protocol revision's
    /// elements after it are not part of it.
    pub(crate) fn from_body(body: &Bytes) -> Result<Notification, Error> {
        let (topic, payload) = crate::protocol::message::parse_notify(body)?;
        let start = payload.as_ptr() as usize - body.as_ptr() as usize;
        Ok(Notification::new(
            topic.to_owned(),
            body.slice(start..start + payload.len()),
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_second_element_even_with_elements_after_it() {
        // [topic, 5, "future"]: before, the payload was taken as the body's last byte(s).
        let mut body = Vec::new();
        rmp::encode::write_array_len(&mut body, 3).unwrap();
        rmp::encode::write_str(&mut body, "calc.done").unwrap();
        rmp::encode::write_uint(&mut body, 5).unwrap();
        rmp::encode::write_str(&mut body, "future").unwrap();
        let n = Notification::from_body(&Bytes::from(body)).unwrap();
        assert_eq!(n.topic(), "calc.done");
        assert_eq!(n.payload(), &[0x05]);
        assert_eq!(n.decode::<u8>().unwrap(), 5);
        // The usual two elements: the payload runs to the end.
        let mut body = Vec::new();
        rmp::encode::write_array_len(&mut body, 2).unwrap();
        rmp::encode::write_str(&mut body, "t").unwrap();
        rmp::encode::write_str(&mut body, "x").unwrap();
        let n = Notification::from_body(&Bytes::from(body)).unwrap();
        assert_eq!(n.decode::<String>().unwrap(), "x");
    }
}
