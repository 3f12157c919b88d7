//! Response bodies, decoded as a client decodes a call's result (`protocol::codec::
//! decode_value`) into the types results really have: the registry API's replies, application
//! `Result`s, structs, collections, scalars; and the handshake's `HelloAck`.
//!
//! Input: `[type selector, body...]`. Checks: whatever decodes survives re-encoding unchanged.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_bytes::ByteBuf;
use stardust::discovery::api::{
    Instance, InstanceList, LoginReply, PublicKey, RegistryError, WatchReply,
};
use stardust::__wire::message::{Hello, HelloAck};

use super::roundtrip::decodes_stably;
use crate::echo::{Record, Scalars};

/// Runs one input.
pub fn run(data: &[u8]) {
    let [selector, body @ ..] = data else {
        return;
    };
    match selector % 17 {
        0 => drop(decodes_stably::<i64>(body)),
        1 => drop(decodes_stably::<()>(body)),
        2 => drop(decodes_stably::<String>(body)),
        3 => drop(decodes_stably::<Result<i64, String>>(body)),
        4 => drop(decodes_stably::<Option<Vec<u8>>>(body)),
        5 => drop(decodes_stably::<ByteBuf>(body)),
        6 => drop(decodes_stably::<BTreeMap<String, Vec<f64>>>(body)),
        7 => drop(decodes_stably::<Record>(body)),
        8 => drop(decodes_stably::<Scalars>(body)),
        9 => drop(decodes_stably::<Result<LoginReply, RegistryError>>(body)),
        10 => drop(decodes_stably::<Vec<PublicKey>>(body)),
        11 => drop(decodes_stably::<Result<Instance, RegistryError>>(body)),
        12 => drop(decodes_stably::<Result<Vec<Instance>, RegistryError>>(body)),
        13 => drop(decodes_stably::<Result<bool, RegistryError>>(body)),
        14 => handshake(body),
        15 => {
            // `watch`'s answer; a snapshot's list is a second MessagePack document inside a bin.
            if let Some(Ok(WatchReply::Snapshot { instances, .. })) =
                decodes_stably::<Result<WatchReply, RegistryError>>(body)
                && let Ok(list) = instances.decode()
            {
                assert_eq!(InstanceList::new(&list).decode().ok(), Some(list));
            }
        }
        _ => {
            // Skipping a value of any shape: what a client does with a one-way call's stray
            // answer or a result it does not read.
            let _ = stardust::__wire::codec::decode_value::<IgnoredAny>(body);
        }
    }
}

/// The handshake's map bodies, decoded as the client (`HelloAck`) and server (`Hello`) do.
fn handshake(body: &[u8]) {
    if let Ok(ack) = rmp_serde::from_slice::<HelloAck>(body) {
        let again = rmp_serde::to_vec_named(&ack).expect("a HelloAck encodes");
        let back: HelloAck = rmp_serde::from_slice(&again).expect("decodes again");
        assert_eq!(
            (back.version, back.agent, back.max_frame),
            (ack.version, ack.agent, ack.max_frame)
        );
    }
    let _ = rmp_serde::from_slice::<Hello>(body);
}
