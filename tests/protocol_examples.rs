//! Checks `docs/PROTOCOL.md` against the implementation: the example frames of section 14.
//!
//! Every hex dump of section 14 is rebuilt here with the runtime's public
//! `stardust::__wire::{frame, message, codec}` API and compared byte for byte with
//! (a) the constant below, kept in the same grouping as the document, and (b) the block of the
//! same name in the document itself (`<!-- frame: NAME -->` followed by a code block), so the
//! document cannot drift from the code. The frames of streaming calls (section 19) and the rules
//! of sections 2-5 are checked in `tests/protocol_frames.rs`, the value encoding and
//! compatibility claims of sections 12 and 13 in `tests/protocol_values.rs`.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use stardust::__wire::{codec, frame, message};
use stardust::{Error, ErrorKind, Metadata};

#[path = "common/doc_frames.rs"]
mod doc_frames;
#[path = "common/protocol.rs"]
mod protocol;
use doc_frames::{DOC, check, hex};
use protocol::{add_head, dec};

// ---------------------------------------------------------------------------------------------
// Section 14: example frames
// ---------------------------------------------------------------------------------------------

#[test]
fn hello() {
    let hello = message::Hello {
        features: Vec::new(),
        protocol: message::PROTOCOL_NAME.to_owned(),
        version: message::PROTOCOL_VERSION,
        agent: "demo".to_owned(),
        max_frame: Some(frame::DEFAULT_MAX_FRAME),
        meta: Metadata::new(),
        stream_window: None,
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, frame::Kind::Hello, &hello).unwrap();
    check(
        "hello",
        &buf,
        "
        00 00 00 46                     # length = 70 = 10 + 60 body bytes
        01                              # kind = 1 Hello
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        85                              # fixmap, 5 entries
        a8 70 72 6f 74 6f 63 6f 6c      #   fixstr(8) \"protocol\"
        a8 73 74 61 72 64 75 73 74      #   fixstr(8) \"stardust\"
        a7 76 65 72 73 69 6f 6e         #   fixstr(7) \"version\"
        01                              #   1
        a5 61 67 65 6e 74               #   fixstr(5) \"agent\"
        a4 64 65 6d 6f                  #   fixstr(4) \"demo\"
        a9 6d 61 78 5f 66 72 61 6d 65   #   fixstr(9) \"max_frame\"
        ce 01 00 00 00                  #   uint32 16777216 (16 MiB)
        a4 6d 65 74 61                  #   fixstr(4) \"meta\"
        80                              #   fixmap, 0 entries
        ",
    );
}

#[test]
fn hello_ack() {
    let ack = message::HelloAck {
        features: Vec::new(),
        version: 1,
        // What `stardust/src/server/connection.rs` sends for the 0.1.0 runtime.
        agent: "stardust-rust/0.1.0".to_owned(),
        max_frame: frame::DEFAULT_MAX_FRAME,
        stream_window: None,
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, frame::Kind::HelloAck, &ack).unwrap();
    check(
        "hello_ack",
        &buf,
        "
        00 00 00 3d                     # length = 61 = 10 + 51
        02                              # kind = 2 HelloAck
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        83                              # fixmap, 3 entries
        a7 76 65 72 73 69 6f 6e         #   fixstr(7) \"version\"
        01                              #   1
        a5 61 67 65 6e 74               #   fixstr(5) \"agent\"
        b3 73 74 61 72 64 75 73 74 2d   #   fixstr(19) \"stardust-\"
           72 75 73 74 2f 30 2e 31 2e 30   #     \"rust/0.1.0\"
        a9 6d 61 78 5f 66 72 61 6d 65   #   fixstr(9) \"max_frame\"
        ce 01 00 00 00                  #   uint32 16777216
        ",
    );
}

const REQUEST_ADD: &str = "
        00 00 00 31                     # length = 49 = 10 + 39
        03                              # kind = 3 Request
        00                              # flags = 0 (not one-way, not idempotent)
        00 00 00 00 00 00 00 01         # id = 1
        96                              # fixarray, 6 elements
        af 63 61 6c 63 2e 43 61 6c 63   #   [0] service: fixstr(15) \"calc.Calc\"
           75 6c 61 74 6f 72            #       \"ulator\"
        a3 61 64 64                     #   [1] method: fixstr(3) \"add\"
        ce 00 4c 4b 40                  #   [2] timeout_us: uint32 5000000 (5 s)
        cf 01 23 45 67 89 ab cd ef      #   [3] trace_id: uint64 0x0123456789abcdef
        80                              #   [4] meta: fixmap, 0 entries
        92                              #   [5] args: fixarray, 2 elements
        01                              #       a = 1
        02                              #       b = 2
";

#[test]
fn request_add() {
    let meta = Metadata::new();
    let mut buf = BytesMut::new();
    message::put_request(
        &mut buf,
        &add_head(&meta),
        &(1i64, 2i64),
        frame::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    check("request_add", &buf, REQUEST_ADD);

    // And the runtime reads it back as documented.
    let req = message::parse_request(&buf[frame::HEADER_LEN..]).unwrap();
    assert_eq!((req.service, req.method), ("calc.Calculator", "add"));
    assert_eq!(req.timeout_us, 5_000_000);
    assert_eq!(req.trace_id, 0x0123_4567_89ab_cdef);
    assert!(req.meta.is_empty());
    assert_eq!(req.args, &[0x92, 0x01, 0x02]);
}

#[test]
fn request_variants_mentioned_in_the_doc() {
    // Metadata {"k": "v"} is element [4] = 81 a1 6b a1 76.
    let meta: Metadata = [("k", "v")].into_iter().collect();
    let mut buf = BytesMut::new();
    message::put_request(
        &mut buf,
        &add_head(&meta),
        &(1i64, 2i64),
        frame::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    let mut expected = hex(REQUEST_ADD);
    let at = expected.len() - 4; // the `80` before `92 01 02`
    assert_eq!(expected[at], 0x80);
    expected.splice(at..=at, [0x81, 0xa1, b'k', 0xa1, b'v']);
    expected[3] += 4;
    assert_eq!(&buf[..], &expected[..]);

    // One-way, as the Rust client sends it: flags 01, id 0.
    let meta = Metadata::new();
    let head = message::RequestHead {
        id: 0,
        flags: frame::FLAG_ONE_WAY,
        ..add_head(&meta)
    };
    let mut buf = BytesMut::new();
    message::put_request(&mut buf, &head, &(1i64, 2i64), frame::DEFAULT_MAX_FRAME).unwrap();
    let mut expected = hex(REQUEST_ADD);
    expected[5] = 0x01;
    expected[6..14].copy_from_slice(&[0; 8]);
    assert_eq!(&buf[..], &expected[..]);

    // Both flags at once.
    assert_eq!(frame::FLAG_ONE_WAY | frame::FLAG_IDEMPOTENT, 0x03);
}

#[test]
fn response_add() {
    // What the server does: header, the encoded return value, patch the length.
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, frame::Kind::Response, 0, 1);
    codec::encode_value(&mut buf, &3i64).unwrap();
    frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "response_add",
        &buf,
        "
        00 00 00 0b                     # length = 11 = 10 + 1
        04                              # kind = 4 Response
        00                              # flags = 0
        00 00 00 00 00 00 00 01         # id = 1 (answers request 1)
        03                              # positive fixint 3: the return value
        ",
    );
}

#[test]
fn error_unknown_method() {
    // The exact error the server builds in `ServerConn::start_call`.
    let err = Error::new(
        ErrorKind::UnknownMethod,
        "service `calc.Calculator` has no method `mul`",
    );
    let mut buf = BytesMut::new();
    message::put_error(&mut buf, frame::Kind::Error, 2, &err);
    check(
        "error_unknown_method",
        &buf,
        "
        00 00 00 3b                     # length = 59 = 10 + 49
        05                              # kind = 5 Error
        00                              # flags = 0
        00 00 00 00 00 00 00 02         # id = 2 (answers request 2)
        92                              # fixarray, 2 elements
        03                              #   code = 3 UnknownMethod
        d9 2d                           #   str8, 45 bytes:
        73 65 72 76 69 63 65 20         #     \"service \"
        60 63 61 6c 63 2e 43 61 6c 63   #     \"`calc.Calc\"
        75 6c 61 74 6f 72 60            #     \"ulator`\"
        20 68 61 73 20 6e 6f 20         #     \" has no \"
        6d 65 74 68 6f 64 20            #     \"method \"
        60 6d 75 6c 60                  #     \"`mul`\"
        ",
    );
    let back = message::parse_error(&buf[frame::HEADER_LEN..]);
    assert_eq!(back.kind(), ErrorKind::UnknownMethod);
    assert_eq!(back.message(), err.message());
}

#[test]
fn cancel() {
    let mut buf = BytesMut::new();
    frame::put_empty(&mut buf, frame::Kind::Cancel, 0, 3);
    check(
        "cancel",
        &buf,
        "
        00 00 00 0a                     # length = 10: header only, empty body
        06                              # kind = 6 Cancel
        00                              # flags = 0
        00 00 00 00 00 00 00 03         # id = 3: the request to cancel
        ",
    );
}

#[test]
fn ping_and_pong() {
    let mut buf = BytesMut::new();
    frame::put_empty(&mut buf, frame::Kind::Ping, 0, 7);
    check(
        "ping",
        &buf,
        "
        00 00 00 0a                     # length = 10: empty body
        08                              # kind = 8 Ping
        00                              # flags = 0
        00 00 00 00 00 00 00 07         # id = nonce 7
        ",
    );
    let mut buf = BytesMut::new();
    frame::put_empty(&mut buf, frame::Kind::Pong, 0, 7);
    check(
        "pong",
        &buf,
        "
        00 00 00 0a                     # length = 10: empty body
        09                              # kind = 9 Pong
        00                              # flags = 0
        00 00 00 00 00 00 00 07         # id = 7, echoed from the Ping
        ",
    );
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Sum {
    sum: i64,
}

#[test]
fn notify() {
    let mut buf = BytesMut::new();
    message::put_notify(
        &mut buf,
        "calc.done",
        &Sum { sum: 3 },
        frame::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    check(
        "notify",
        &buf,
        "
        00 00 00 1b                     # length = 27 = 10 + 17
        07                              # kind = 7 Notify
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        92                              # fixarray, 2 elements
        a9 63 61 6c 63 2e 64 6f 6e 65   #   topic: fixstr(9) \"calc.done\"
        81                              #   payload: fixmap, 1 entry
        a3 73 75 6d                     #     fixstr(3) \"sum\"
        03                              #     3
        ",
    );
    let (topic, payload) = message::parse_notify(&buf[frame::HEADER_LEN..]).unwrap();
    assert_eq!(topic, "calc.done");
    assert_eq!(dec::<Sum>(payload).unwrap(), Sum { sum: 3 });
}

#[test]
fn goaway_shutting_down() {
    // The exact error `ServerConn::begin_drain` sends.
    let err = Error::new(ErrorKind::ShuttingDown, "the server is shutting down");
    let mut buf = BytesMut::new();
    message::put_error(&mut buf, frame::Kind::GoAway, 0, &err);
    check(
        "goaway_shutting_down",
        &buf,
        "
        00 00 00 28                     # length = 40 = 10 + 30
        0a                              # kind = 10 GoAway
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        92                              # fixarray, 2 elements
        0b                              #   code = 11 ShuttingDown
        bb                              #   fixstr(27):
        74 68 65 20 73 65 72 76 65 72   #     \"the server\"
        20 69 73 20 73 68 75 74 74 69   #     \" is shutti\"
        6e 67 20 64 6f 77 6e            #     \"ng down\"
        ",
    );
}

#[test]
fn goaway_token_required() {
    // The exact refusal a server requiring tokens sends for a `Hello` without one.
    let err = Error::new(ErrorKind::Unauthorized, stardust::auth::TOKEN_REQUIRED);
    let mut buf = BytesMut::new();
    message::put_error(&mut buf, frame::Kind::GoAway, 0, &err);
    check(
        "goaway_token_required",
        &buf,
        "
        00 00 00 52                     # length = 82 = 10 + 72
        0a                              # kind = 10 GoAway
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        92                              # fixarray, 2 elements
        08                              #   code = 8 Unauthorized
        d9 44                           #   str8, 68 bytes:
        74 68 69 73 20 70 72 6f 76 69   #     \"this provi\"
        64 65 72 20 72 65 71 75 69 72   #     \"der requir\"
        65 73 20 61 6e 20 61 63 63 65   #     \"es an acce\"
        73 73 20 74 6f 6b 65 6e 3b 20   #     \"ss token; \"
        6c 6f 67 20 69 6e 20 74 6f 20   #     \"log in to \"
        74 68 65 20 72 65 67 69 73 74   #     \"the regist\"
        72 79 20 66 69 72 73 74         #     \"ry first\"
        ",
    );
}

#[test]
fn request_and_response_authenticate() {
    // What the Rust client's token renewal sends (see `ClientConn::renew_once`).
    let meta = Metadata::new();
    let head = message::RequestHead {
        id: 5,
        flags: frame::FLAG_IDEMPOTENT,
        service: stardust::auth::CONNECTION_SERVICE,
        method: stardust::auth::AUTHENTICATE_METHOD,
        timeout_us: 10_000_000,
        trace_id: 0,
        meta: &meta,
    };
    let mut buf = BytesMut::new();
    message::put_request(
        &mut buf,
        &head,
        &("sd1.AAAA.BBBB",),
        frame::DEFAULT_MAX_FRAME,
    )
    .unwrap();
    check(
        "request_authenticate",
        &buf,
        "
        00 00 00 42                     # length = 66 = 10 + 56
        03                              # kind = 3 Request
        02                              # flags = 0x02 IDEMPOTENT
        00 00 00 00 00 00 00 05         # id = 5
        96                              # fixarray, 6 elements
        b3 73 74 61 72 64 75 73 74 2e   #   [0] service: fixstr(19) \"stardust.\"
           43 6f 6e 6e 65 63 74 69 6f   #       \"Connectio\"
           6e                           #       \"n\"
        ac 61 75 74 68 65 6e 74 69 63   #   [1] method: fixstr(12) \"authentic\"
           61 74 65                     #       \"ate\"
        ce 00 98 96 80                  #   [2] timeout_us: uint32 10000000 (10 s)
        00                              #   [3] trace_id: 0 (none)
        80                              #   [4] meta: fixmap, 0 entries
        91                              #   [5] args: fixarray, 1 element
        ad 73 64 31 2e 41 41 41 41 2e   #       token: fixstr(13) \"sd1.AAAA.\"
           42 42 42 42                  #       \"BBBB\"
        ",
    );
    let req = message::parse_request(&buf[frame::HEADER_LEN..]).unwrap();
    let (token,): (String,) = codec::decode_args(req.args, 1).unwrap();
    assert_eq!(token, "sd1.AAAA.BBBB");

    // The answer: `()` is nil.
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, frame::Kind::Response, 0, 5);
    codec::encode_value(&mut buf, &()).unwrap();
    frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "response_authenticate",
        &buf,
        "
        00 00 00 0b                     # length = 11 = 10 + 1
        04                              # kind = 4 Response
        00                              # flags = 0
        00 00 00 00 00 00 00 05         # id = 5
        c0                              # nil: authenticate returns ()
        ",
    );
}

#[test]
fn every_doc_dump_is_tested() {
    // A dump added to the document without a test here would go unchecked.
    // (The dumps of the registry's optional features are tested in tests/protocol_discovery.rs,
    // those of proof of possession in tests/proof.rs, those of streaming calls in
    // tests/protocol_frames.rs.)
    let tested = [
        "challenge",
        "proof",
        "hello_ack_features",
        "hello",
        "hello_ack",
        "request_add",
        "response_add",
        "error_unknown_method",
        "cancel",
        "ping",
        "pong",
        "notify",
        "goaway_shutting_down",
        "goaway_token_required",
        "request_authenticate",
        "response_authenticate",
        "notify_delta",
        "response_watch_unchanged",
        "hello_stream",
        "stream_request_tail",
        "stream_item",
        "stream_credit",
        "stream_end",
        "stream_cancel",
    ];
    let in_doc: Vec<&str> = DOC
        .match_indices("<!-- frame: ")
        .map(|(i, m)| {
            let rest = &DOC[i + m.len()..];
            &rest[..rest.find(" -->").unwrap()]
        })
        .collect();
    assert_eq!(in_doc, tested);
}
