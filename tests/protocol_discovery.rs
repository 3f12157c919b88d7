//! Checks the dumps of `docs/PROTOCOL.md` about optional features and revisioned discovery
//! (§3 Features, §17.3) against the implementation, byte for byte.

#[path = "common/doc_frames.rs"]
mod doc_frames;

use bytes::BytesMut;
use doc_frames::check;
use stardust::__wire::{codec, frame, message};
use stardust::discovery::api::{
    DELTA_TOPIC, DiscoveryDelta, DiscoveryPush, FEATURE_DELTA, FEATURE_RESUME, RegistryError,
    Revision, WatchReply,
};

#[test]
fn hello_ack_features() {
    // What the registry's server sends: the runtime's HelloAck with the registry's features.
    let ack = message::HelloAck {
        version: 1,
        agent: "stardust-rust/0.1.0".to_owned(),
        max_frame: frame::DEFAULT_MAX_FRAME,
        features: vec![FEATURE_DELTA.into(), FEATURE_RESUME.into()],
        stream_window: None,
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, frame::Kind::HelloAck, &ack).unwrap();
    check(
        "hello_ack_features",
        &buf,
        "
        00 00 00 67 02 00 00 00 00 00 00 00 00 00
        84
        a7 76 65 72 73 69 6f 6e 01
        a5 61 67 65 6e 74
        b3 73 74 61 72 64 75 73 74 2d 72 75 73 74 2f 30 2e 31 2e 30
        a9 6d 61 78 5f 66 72 61 6d 65 ce 01 00 00 00
        a8 66 65 61 74 75 72 65 73 92
        af 64 69 73 63 6f 76 65 72 79 2e 64 65 6c 74 61
        af 72 65 67 69 73 74 72 79 2e 72 65 73 75 6d 65
        ",
    );
    // An older client reads it and ignores the key.
    #[derive(serde::Deserialize)]
    struct OldAck {
        version: u32,
        max_frame: u32,
    }
    let old: OldAck = codec::decode_value(&buf[frame::HEADER_LEN..]).unwrap();
    assert_eq!((old.version, old.max_frame), (1, frame::DEFAULT_MAX_FRAME));
}

#[test]
fn notify_delta() {
    let push = DiscoveryPush::Delta(DiscoveryDelta {
        service: "calc.C".into(),
        version_req: "*".into(),
        epoch: 7,
        from: 41,
        to: 42,
        upserted: Vec::new(),
        removed: vec!["10.0.0.5:7000".into()],
    });
    let mut buf = BytesMut::new();
    message::put_notify(&mut buf, DELTA_TOPIC, &push, frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "notify_delta",
        &buf,
        "
        00 00 00 7b 07 00 00 00 00 00 00 00 00 00
        92
        b8 73 74 61 72 64 75 73 74 2e 64 69 73 63 6f 76 65 72 79 2e 64 65 6c 74 61
        81 a5 44 65 6c 74 61
        87
        a7 73 65 72 76 69 63 65 a6 63 61 6c 63 2e 43
        ab 76 65 72 73 69 6f 6e 5f 72 65 71 a1 2a
        a5 65 70 6f 63 68 07
        a4 66 72 6f 6d 29
        a2 74 6f 2a
        a8 75 70 73 65 72 74 65 64 90
        a7 72 65 6d 6f 76 65 64 91 ad 31 30 2e 30 2e 30 2e 35 3a 37 30 30 30
        ",
    );
    let (topic, payload) = message::parse_notify(&buf[frame::HEADER_LEN..]).unwrap();
    assert_eq!(topic, DELTA_TOPIC);
    assert_eq!(codec::decode_value::<DiscoveryPush>(payload).unwrap(), push);
}

#[test]
fn response_watch_unchanged() {
    let reply: Result<WatchReply, RegistryError> = Ok(WatchReply::Unchanged {
        at: Revision { epoch: 7, rev: 42 },
    });
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, frame::Kind::Response, 0, 5);
    codec::encode_value(&mut buf, &reply).unwrap();
    frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "response_watch_unchanged",
        &buf,
        "
        00 00 00 2a 04 00 00 00 00 00 00 00 00 05
        81 a2 4f 6b
        81 a9 55 6e 63 68 61 6e 67 65 64
        81 a2 61 74
        82 a5 65 70 6f 63 68 07 a3 72 65 76 2a
        ",
    );
}
