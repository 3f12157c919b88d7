//! Shorthands shared by the tests that check `docs/PROTOCOL.md` (`tests/protocol_*.rs`): value
//! encoding and decoding, and the head of section 14's `add(1, 2)` request.
#![allow(dead_code)]

use bytes::BytesMut;
use serde::Serialize;
use stardust::__wire::{codec, message};
use stardust::{Error, Metadata};

pub fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode_value(&mut buf, v).unwrap();
    buf.to_vec()
}

pub fn dec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    codec::decode_value(bytes)
}

pub fn add_head(meta: &Metadata) -> message::RequestHead<'_> {
    message::RequestHead {
        id: 1,
        flags: 0,
        service: "calc.Calculator",
        method: "add",
        timeout_us: 5_000_000,
        trace_id: 0x0123_4567_89ab_cdef,
        meta,
    }
}
