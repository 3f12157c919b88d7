//! `Notify` bodies (`protocol::message::parse_notify`): `[topic, payload]`, then the payload
//! decoded as subscribers decode it, above all the registry's discovery pushes
//! (`DiscoveryEvent` on `stardust.discovery`, which every `Stardust` session decodes).
//!
//! Input: the body. Checks: topic and payload are the body's own bytes, in order, the payload
//! right after the topic; decoded
//! payloads survive re-encoding, and a notification written back with `put_notify` parses to
//! the same topic.

use bytes::BytesMut;
use stardust::discovery::api::{DiscoveryEvent, DiscoveryPush};
use stardust::__wire::frame::{self, DEFAULT_MAX_FRAME};
use stardust::__wire::message;

use super::roundtrip::decodes_stably;
use crate::echo::Record;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok((topic, payload)) = message::parse_notify(data) else {
        return;
    };
    // Topic and payload are the body's own bytes: the payload (exactly the second element;
    // elements after it are not part of it) follows the topic directly.
    assert!(payload.len() < data.len());
    let topic_at = topic.as_ptr() as usize - data.as_ptr() as usize;
    let payload_at = payload.as_ptr() as usize - data.as_ptr() as usize;
    assert_eq!(payload_at, topic_at + topic.len());
    assert!(payload_at + payload.len() <= data.len());

    if let Some(event) = decodes_stably::<DiscoveryEvent>(payload) {
        rewritten(topic, &event);
    }
    if let Some(push) = decodes_stably::<DiscoveryPush>(payload) {
        rewritten(topic, &push);
    }
    if let Some(record) = decodes_stably::<Record>(payload) {
        rewritten(topic, &record);
    }
    let _ = decodes_stably::<Vec<String>>(payload);
}

fn rewritten<T: serde::Serialize>(topic: &str, payload: &T) {
    let mut buf = BytesMut::new();
    message::put_notify(&mut buf, topic, payload, DEFAULT_MAX_FRAME).expect("fits a frame");
    let (back, _) = message::parse_notify(&buf[frame::HEADER_LEN..]).expect("parses again");
    assert_eq!(back, topic);
}
