//! Checks `docs/PROTOCOL.md` against the implementation.
//!
//! Every hex dump of section 14 is rebuilt here with the runtime's public
//! `stardust::__wire::{frame, message, codec}` API and compared byte for byte with
//! (a) the constant below, kept in the same grouping as the document, and (b) the block of the
//! same name in the document itself (`<!-- frame: NAME -->` followed by a code block), so the
//! document cannot drift from the code. The remaining tests verify the claims of sections 4, 12
//! and 13 about value encoding and compatibility.

use std::collections::BTreeMap;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use stardust::__wire::{codec, frame, message, stream};
use stardust::{Error, ErrorKind, Metadata};

#[path = "common/doc_frames.rs"]
mod doc_frames;
use doc_frames::{DOC, check, hex};

fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode_value(&mut buf, v).unwrap();
    buf.to_vec()
}

fn dec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    codec::decode_value(bytes)
}

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

fn add_head(meta: &Metadata) -> message::RequestHead<'_> {
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

// ---------------------------------------------------------------------------------------------
// Section 19: streaming calls
// ---------------------------------------------------------------------------------------------

/// The `Hello` of 14.1 announcing `call.stream` (what the Python client sends).
#[test]
fn hello_stream() {
    let hello = message::Hello {
        features: vec![stream::FEATURE_STREAM.to_owned()],
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
        "hello_stream",
        &buf,
        "
        00 00 00 5c                     # length = 92 = 10 + 82
        01                              # kind = 1 Hello
        00                              # flags = 0
        00 00 00 00 00 00 00 00         # id = 0
        86                              # fixmap, 6 entries
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
        a8 66 65 61 74 75 72 65 73      #   fixstr(8) \"features\"
        91                              #   fixarray, 1 element
        ab 63 61 6c 6c 2e 73 74 72 65   #     fixstr(11) \"call.stre\"
           61 6d                           #       \"am\"
        ",
    );
    // The server reads the feature, and the default window when the key is absent.
    let limits = stardust::MetadataLimits::DEFAULT;
    let back = message::parse_hello(&buf[frame::HEADER_LEN..], &limits).unwrap();
    assert_eq!(back.features, vec!["call.stream".to_owned()]);
    assert_eq!(back.stream_window, None);
    assert_eq!(stream::DEFAULT_STREAM_WINDOW, 262_144);

    // "A window of 1 MiB would add the entry ad 73 74 ... ce 00 10 00 00."
    let entry = hex("ad 73 74 72 65 61 6d 5f 77 69 6e 64 6f 77 ce 00 10 00 00");
    let with_window = message::Hello {
        stream_window: Some(1 << 20),
        ..hello
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, frame::Kind::Hello, &with_window).unwrap();
    let mut expected = doc_frames::doc_frame("hello_stream");
    expected[frame::HEADER_LEN] = 0x87;
    expected.extend_from_slice(&entry);
    expected[3] += entry.len() as u8;
    assert_eq!(&buf[..], &expected[..]);
    let back = message::parse_hello(&buf[frame::HEADER_LEN..], &limits).unwrap();
    assert_eq!(back.stream_window, Some(1 << 20));
    // nil is the same as absent.
    let mut nil = expected[frame::HEADER_LEN..expected.len() - 5].to_vec();
    nil.push(0xc0);
    let back = message::parse_hello(&nil, &limits).unwrap();
    assert_eq!(back.stream_window, None);
    // And in a HelloAck.
    let ack = message::HelloAck {
        features: vec![stream::FEATURE_STREAM.to_owned()],
        version: 1,
        agent: String::new(),
        max_frame: frame::DEFAULT_MAX_FRAME,
        stream_window: Some(1 << 20),
    };
    let bytes = enc(&ack);
    assert!(bytes.windows(entry.len()).any(|w| w == &entry[..]));
    let back: message::HelloAck = dec(&bytes).unwrap();
    assert_eq!(back.stream_window, Some(1 << 20));
    let plain: message::HelloAck = dec(&doc_frames::doc_frame("hello_ack")[14..]).unwrap();
    assert_eq!(plain.stream_window, None);
}

#[test]
fn stream_request_tail() {
    let meta = Metadata::new();
    let head = message::RequestHead {
        id: 1,
        flags: stream::FLAG_STREAM,
        service: "logs.Logs",
        method: "tail",
        timeout_us: 60_000_000,
        trace_id: 0x0123_4567_89ab_cdef,
        meta: &meta,
    };
    let mut buf = BytesMut::new();
    // Only the non-stream arguments travel: `tail(file)`.
    message::put_request(&mut buf, &head, &("app.log",), frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "stream_request_tail",
        &buf,
        "
        00 00 00 32                     # length = 50 = 10 + 40
        03                              # kind = 3 Request
        04                              # flags = 0x04 STREAM
        00 00 00 00 00 00 00 01         # id = 1: the call's id, in all its frames
        96                              # fixarray, 6 elements
        a9 6c 6f 67 73 2e 4c 6f 67 73   #   [0] service: fixstr(9) \"logs.Logs\"
        a4 74 61 69 6c                  #   [1] method: fixstr(4) \"tail\"
        ce 03 93 87 00                  #   [2] timeout_us: uint32 60000000 (60 s)
        cf 01 23 45 67 89 ab cd ef      #   [3] trace_id: uint64 0x0123456789abcdef
        80                              #   [4] meta: fixmap, 0 entries
        91                              #   [5] args: fixarray, 1 element
        a7 61 70 70 2e 6c 6f 67         #       file: fixstr(7) \"app.log\"
        ",
    );
    let h = frame::parse_header(&buf, frame::DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(h.flags & stream::FLAG_STREAM, stream::FLAG_STREAM);
    let req = message::parse_request(&buf[frame::HEADER_LEN..]).unwrap();
    assert_eq!((req.service, req.method), ("logs.Logs", "tail"));
    assert_eq!(req.timeout_us, 60_000_000);
    assert_eq!(req.args, &hex("91 a7 61 70 70 2e 6c 6f 67")[..]);
    // "IDEMPOTENT may be combined with it (0x06)."
    assert_eq!(stream::FLAG_STREAM | frame::FLAG_IDEMPOTENT, 0x06);
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Line {
    number: u64,
    text: String,
}

#[test]
fn stream_item() {
    let line = Line {
        number: 1,
        text: "ready".to_owned(),
    };
    let mut buf = BytesMut::new();
    let len = stream::put_item(&mut buf, 1, &line, frame::DEFAULT_MAX_FRAME).unwrap();
    check(
        "stream_item",
        &buf,
        "
        00 00 00 1e                     # length = 30 = 10 + 20: costs 34 bytes of credit
        0d                              # kind = 13 Item
        00                              # flags = 0
        00 00 00 00 00 00 00 01         # id = 1: the call
        82                              # fixmap, 2 entries (Line)
        a6 6e 75 6d 62 65 72            #   fixstr(6) \"number\"
        01                              #   1
        a4 74 65 78 74                  #   fixstr(4) \"text\"
        a5 72 65 61 64 79               #   fixstr(5) \"ready\"
        ",
    );
    // An item costs its whole frame: 4 + length = 14 + body length.
    assert_eq!(len, 34);
    assert_eq!(stream::item_cost(20), 34);
    assert_eq!(stream::item_cost(0), 14);
    assert_eq!(dec::<Line>(&buf[frame::HEADER_LEN..]).unwrap(), line);

    // An item over the receiver's limit is not sent: FrameTooLarge, nothing left behind.
    let mut buf = BytesMut::new();
    let err = stream::put_item(&mut buf, 1, &"x".repeat(2000), 1024).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    assert!(buf.is_empty());
}

#[test]
fn stream_credit() {
    let mut buf = BytesMut::new();
    stream::put_credit(&mut buf, 1, 131_072);
    check(
        "stream_credit",
        &buf,
        "
        00 00 00 0f                     # length = 15 = 10 + 5
        0e                              # kind = 14 Credit
        00                              # flags = 0
        00 00 00 00 00 00 00 01         # id = 1: the call
        ce 00 02 00 00                  # uint32 131072: bytes granted
        ",
    );
    // Half the default window: what a Rust receiver grants at a time.
    assert_eq!(131_072, stream::DEFAULT_STREAM_WINDOW / 2);
    assert_eq!(
        stream::parse_credit(&buf[frame::HEADER_LEN..]).unwrap(),
        131_072
    );
    // A grant is 1 to 2147483647, in any integer format; anything else breaks the protocol.
    assert_eq!(stream::MAX_CREDIT, 2_147_483_647);
    assert_eq!(stream::parse_credit(&[0x01]).unwrap(), 1);
    assert_eq!(stream::parse_credit(&[0xcd, 0x00, 0x07]).unwrap(), 7);
    assert_eq!(
        stream::parse_credit(&[0xce, 0x7f, 0xff, 0xff, 0xff]).unwrap(),
        stream::MAX_CREDIT
    );
    for bad in [
        &[0x00][..],
        &[0xce, 0x80, 0x00, 0x00, 0x00],
        &[0xff],
        &[0xc0],
        &[0xa1, b'1'],
        &[],
    ] {
        assert_eq!(
            stream::parse_credit(bad).unwrap_err().kind(),
            ErrorKind::Protocol,
            "{bad:02x?}"
        );
    }
}

#[test]
fn stream_end() {
    let mut buf = BytesMut::new();
    stream::put_end(&mut buf, 2);
    check(
        "stream_end",
        &buf,
        "
        00 00 00 0a                     # length = 10: empty body
        0f                              # kind = 15 End
        00                              # flags = 0
        00 00 00 00 00 00 00 02         # id = 2: the call whose input is complete
        ",
    );
}

#[test]
fn stream_cancel() {
    // What the server queues when a handler drops its input (`server/call/stream.rs`).
    let mut buf = BytesMut::new();
    frame::put_empty(&mut buf, frame::Kind::Cancel, 0, 3);
    check(
        "stream_cancel",
        &buf,
        "
        00 00 00 0a                     # length = 10: empty body
        06                              # kind = 6 Cancel, server → client
        00                              # flags = 0
        00 00 00 00 00 00 00 03         # id = 3: the call whose input the handler no longer reads
        ",
    );
    // "The same bytes from a client would cancel call 3."
    assert_eq!(&buf[..], &doc_frames::doc_frame("cancel")[..]);
    assert_eq!(stream::FEATURE_STREAM, "call.stream");
}

#[test]
fn every_doc_dump_is_tested() {
    // A dump added to the document without a test here would go unchecked.
    // (The dumps of the registry's optional features are tested in tests/protocol_discovery.rs,
    // those of proof of possession in tests/proof.rs.)
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

// ---------------------------------------------------------------------------------------------
// Sections 2-5: frame kinds, flags, codes, header rules
// ---------------------------------------------------------------------------------------------

#[test]
fn kinds_flags_and_limits() {
    use frame::Kind;
    let kinds = [
        (1, Kind::Hello),
        (2, Kind::HelloAck),
        (3, Kind::Request),
        (4, Kind::Response),
        (5, Kind::Error),
        (6, Kind::Cancel),
        (7, Kind::Notify),
        (8, Kind::Ping),
        (9, Kind::Pong),
        (10, Kind::GoAway),
        (11, Kind::Challenge),
        (12, Kind::Proof),
        (13, Kind::Item),
        (14, Kind::Credit),
        (15, Kind::End),
    ];
    for (byte, kind) in kinds {
        assert_eq!(kind as u8, byte);
        assert_eq!(Kind::from_u8(byte), Some(kind));
    }
    assert_eq!(Kind::from_u8(0), None);
    assert_eq!(Kind::from_u8(16), None);
    assert_eq!(Kind::from_u8(255), None);
    assert_eq!(frame::FLAG_ONE_WAY, 0x01);
    assert_eq!(frame::FLAG_IDEMPOTENT, 0x02);
    assert_eq!(stream::FLAG_STREAM, 0x04);
    assert_eq!(frame::HEADER_LEN, 14);
    assert_eq!(frame::DEFAULT_MAX_FRAME, 16_777_216);
    assert_eq!(message::PROTOCOL_NAME, "stardust");
    assert_eq!(message::PROTOCOL_VERSION, 1);

    // length < 10 is a protocol error; length > limit is FrameTooLarge (decided on the header).
    let mut short = vec![0, 0, 0, 9];
    short.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(
        frame::parse_header(&short, 1024).unwrap_err().kind(),
        ErrorKind::Protocol
    );
    let mut big = vec![0, 0, 0x04, 0x01]; // 1025
    big.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(
        frame::parse_header(&big, 1024).unwrap_err().kind(),
        ErrorKind::FrameTooLarge
    );
    big[3] = 0x00; // exactly 1024 is allowed
    assert_eq!(
        frame::parse_header(&big, 1024).unwrap().unwrap().body_len,
        1014
    );

    // The sender refuses an over-limit request locally and leaves nothing in the buffer.
    let meta = Metadata::new();
    let mut buf = BytesMut::new();
    let err =
        message::put_request(&mut buf, &add_head(&meta), &(vec![0u8; 2000],), 1024).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    assert!(buf.is_empty());
}

#[test]
fn error_codes_table() {
    let table = [
        (1, ErrorKind::Internal),
        (2, ErrorKind::UnknownService),
        (3, ErrorKind::UnknownMethod),
        (4, ErrorKind::InvalidArguments),
        (5, ErrorKind::DeadlineExceeded),
        (6, ErrorKind::Cancelled),
        (7, ErrorKind::Panicked),
        (8, ErrorKind::Unauthorized),
        (9, ErrorKind::PermissionDenied),
        (10, ErrorKind::Overloaded),
        (11, ErrorKind::ShuttingDown),
        (12, ErrorKind::FrameTooLarge),
        (13, ErrorKind::Protocol),
        (14, ErrorKind::Encode),
        (15, ErrorKind::Decode),
        (16, ErrorKind::Connect),
        (17, ErrorKind::ConnectionClosed),
        (18, ErrorKind::NoProvider),
        (19, ErrorKind::Rejected),
        (20, ErrorKind::LimitExceeded),
        (21, ErrorKind::InvalidConfig),
        (22, ErrorKind::Unsupported),
    ];
    for (code, kind) in table {
        assert_eq!(kind.code(), code);
        assert_eq!(ErrorKind::from_code(code), kind);
        // The doc's table lists every code with its kind name.
        let row = format!("| {code:<4} | `{kind:?}`");
        assert!(DOC.contains(&row), "PROTOCOL.md lacks the row {row:?}");
    }
    // Unknown codes are Internal.
    assert_eq!(ErrorKind::from_code(0), ErrorKind::Internal);
    assert_eq!(ErrorKind::from_code(23), ErrorKind::Internal);
    // Error bodies: extra elements ignored; a malformed body is a Protocol error.
    let back = message::parse_error(&[0x93, 0x03, 0xa1, b'x', 0xc0]);
    assert_eq!(
        (back.kind(), back.message()),
        (ErrorKind::UnknownMethod, "x")
    );
    assert_eq!(
        message::parse_error(&[0x91, 0x03]).kind(),
        ErrorKind::Protocol
    );
    // A code the receiver does not know arrives as Internal.
    let back = message::parse_error(&[0x92, 0xcd, 0x03, 0xe7, 0xa0]);
    assert_eq!(back.kind(), ErrorKind::Internal);
}

#[test]
fn request_body_rules() {
    // Elements after the sixth are ignored.
    let body = [
        0x97, 0xa1, b's', 0xa1, b'm', 0x00, 0x00, 0x80, 0x92, 0x01, 0x02, 0xa6, b'f', b'u', b't',
        b'u', b'r', b'e',
    ];
    let req = message::parse_request(&body).unwrap();
    assert_eq!((req.service, req.method), ("s", "m"));
    let args: (i64, i64) = codec::decode_args(req.args, 2).unwrap();
    assert_eq!(args, (1, 2));

    // Any integer format is accepted for timeout_us / trace_id.
    let body = [
        0x96, 0xa1, b's', 0xa1, b'm', 0xcf, 0, 0, 0, 0, 0, 0, 0, 5, 0xd0, 0x07, 0x80, 0x90,
    ];
    let req = message::parse_request(&body).unwrap();
    assert_eq!((req.timeout_us, req.trace_id), (5, 7));

    // Metadata keys and values are strings; order is kept.
    let body = [
        0x96, 0xa1, b's', 0xa1, b'm', 0x00, 0x00, 0x82, 0xa1, b'b', 0xa1, b'2', 0xa1, b'a', 0xa1,
        b'1', 0x90,
    ];
    let req = message::parse_request(&body).unwrap();
    assert_eq!(
        req.meta.iter().collect::<Vec<_>>(),
        [("b", "2"), ("a", "1")]
    );

    // Malformed bodies are Protocol errors: too few elements, bin instead of str, nil metadata
    // value, negative timeout.
    for body in [
        &[0x95, 0xa1, b's', 0xa1, b'm', 0x00, 0x00, 0x80][..],
        &[0x96, 0xc4, 0x01, b's', 0xa1, b'm', 0x00, 0x00, 0x80, 0x90][..],
        &[
            0x96, 0xa1, b's', 0xa1, b'm', 0x00, 0x00, 0x81, 0xa1, b'k', 0xc0, 0x90,
        ][..],
        &[0x96, 0xa1, b's', 0xa1, b'm', 0xff, 0x00, 0x80, 0x90][..],
        &[0x81, 0xa1, b's', 0xa1, b'm'][..],
    ] {
        assert_eq!(
            message::parse_request(body).unwrap_err().kind(),
            ErrorKind::Protocol,
            "{body:02x?}"
        );
    }
}

#[test]
fn hello_decoding_rules() {
    // Keys in another order, an unknown key, no agent/max_frame/meta: accepted with defaults.
    let mut body = Vec::new();
    rmp::encode::write_map_len(&mut body, 3).unwrap();
    rmp::encode::write_str(&mut body, "version").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "future_key").unwrap();
    rmp::encode::write_bool(&mut body, true).unwrap();
    rmp::encode::write_str(&mut body, "protocol").unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    let hello: message::Hello = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(hello.version, 1);
    assert_eq!(hello.agent, "");
    assert_eq!(hello.max_frame, None);
    assert!(hello.meta.is_empty());

    // max_frame: nil means the default too.
    let mut body = Vec::new();
    rmp::encode::write_map_len(&mut body, 3).unwrap();
    rmp::encode::write_str(&mut body, "protocol").unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    rmp::encode::write_str(&mut body, "version").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "max_frame").unwrap();
    rmp::encode::write_nil(&mut body).unwrap();
    let hello: message::Hello = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(hello.max_frame, None);

    // An array in field order, trailing optional fields left out or given.
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 2).unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    let hello: message::Hello = rmp_serde::from_slice(&body).unwrap();
    assert_eq!((hello.protocol.as_str(), hello.version), ("stardust", 1));
    assert_eq!((hello.agent.as_str(), hello.max_frame), ("", None));
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 5).unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "py/1").unwrap();
    rmp::encode::write_uint(&mut body, 4096).unwrap();
    rmp::encode::write_map_len(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "token").unwrap();
    rmp::encode::write_str(&mut body, "t").unwrap();
    let hello: message::Hello = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(
        (hello.agent.as_str(), hello.max_frame),
        ("py/1", Some(4096))
    );
    assert_eq!(hello.meta.get("token"), Some("t"));
    // Missing a required field, or one too many: refused.
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    assert!(rmp_serde::from_slice::<message::Hello>(&body).is_err());
    let mut body = Vec::new();
    rmp::encode::write_array_len(&mut body, 6).unwrap();
    rmp::encode::write_str(&mut body, "stardust").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "").unwrap();
    rmp::encode::write_nil(&mut body).unwrap();
    rmp::encode::write_map_len(&mut body, 0).unwrap();
    rmp::encode::write_nil(&mut body).unwrap();
    assert!(rmp_serde::from_slice::<message::Hello>(&body).is_err());

    // HelloAck: unknown keys ignored, agent optional, max_frame required.
    let mut body = Vec::new();
    rmp::encode::write_map_len(&mut body, 3).unwrap();
    rmp::encode::write_str(&mut body, "max_frame").unwrap();
    rmp::encode::write_uint(&mut body, 2048).unwrap();
    rmp::encode::write_str(&mut body, "later").unwrap();
    rmp::encode::write_array_len(&mut body, 0).unwrap();
    rmp::encode::write_str(&mut body, "version").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    let ack: message::HelloAck = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(
        (ack.version, ack.max_frame, ack.agent.as_str()),
        (1, 2048, "")
    );
    let mut body = Vec::new();
    rmp::encode::write_map_len(&mut body, 1).unwrap();
    rmp::encode::write_str(&mut body, "version").unwrap();
    rmp::encode::write_uint(&mut body, 1).unwrap();
    assert!(rmp_serde::from_slice::<message::HelloAck>(&body).is_err());
}

// ---------------------------------------------------------------------------------------------
// Section 12: encoding of user values
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Color {
    Red,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Circle(i32),
    Rect(i32, i32),
    Dot { x: i32 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Meters(i32);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pair(i32, i32);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Marker;

#[test]
fn integers_use_the_smallest_form() {
    assert_eq!(enc(&1i64), [0x01]);
    assert_eq!(enc(&127u64), [0x7f]);
    assert_eq!(enc(&200i64), [0xcc, 0xc8]);
    assert_eq!(enc(&300u64), [0xcd, 0x01, 0x2c]);
    assert_eq!(enc(&70_000i32), [0xce, 0x00, 0x01, 0x11, 0x70]);
    assert_eq!(
        enc(&u64::MAX),
        [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(enc(&-1i64), [0xff]);
    assert_eq!(enc(&-32i8), [0xe0]);
    assert_eq!(enc(&-33i64), [0xd0, 0xdf]);
    assert_eq!(enc(&-200i64), [0xd1, 0xff, 0x38]);
    assert_eq!(enc(&5_000_000u64), [0xce, 0x00, 0x4c, 0x4b, 0x40]);
    // Decoders accept any integer format whose value fits.
    assert_eq!(dec::<u8>(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap(), 5);
    assert_eq!(dec::<i64>(&[0xcc, 0xc8]).unwrap(), 200);
    assert_eq!(dec::<u64>(&[0xd0, 0x05]).unwrap(), 5);
    assert!(dec::<u8>(&[0xcd, 0x01, 0x2c]).is_err());
    assert!(dec::<u32>(&[0xff]).is_err());
    // 128-bit integers are 16 bytes of bin, big-endian.
    let mut expected = vec![0xc4, 0x10];
    expected.extend_from_slice(&1u128.to_be_bytes());
    assert_eq!(enc(&1u128), expected);
}

#[test]
fn scalars_and_strings() {
    assert_eq!(
        enc(&1.5f64),
        [0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
    );
    assert_eq!(enc(&1.5f32), [0xca, 0x3f, 0xc0, 0x00, 0x00]);
    assert_eq!(enc(&true), [0xc3]);
    assert_eq!(enc(&false), [0xc2]);
    assert_eq!(enc("hi"), [0xa2, b'h', b'i']);
    assert_eq!(enc(&'x'), [0xa1, b'x']);
    let s = "a".repeat(32);
    assert_eq!(&enc(&s)[..2], [0xd9, 0x20]);
    let s = "a".repeat(256);
    assert_eq!(&enc(&s)[..3], [0xda, 0x01, 0x00]);
}

#[test]
fn structs_are_maps_and_decoders_accept_arrays() {
    let map = [0x82, 0xa1, b'x', 0x01, 0xa1, b'y', 0x02];
    assert_eq!(enc(&Point { x: 1, y: 2 }), map);
    assert_eq!(dec::<Point>(&map).unwrap(), Point { x: 1, y: 2 });
    // Keys in any order.
    assert_eq!(
        dec::<Point>(&[0x82, 0xa1, b'y', 0x02, 0xa1, b'x', 0x01]).unwrap(),
        Point { x: 1, y: 2 }
    );
    // The positional array form is accepted too...
    assert_eq!(
        dec::<Point>(&[0x92, 0x01, 0x02]).unwrap(),
        Point { x: 1, y: 2 }
    );
    // ...but must not be longer than the struct.
    assert!(dec::<Point>(&[0x93, 0x01, 0x02, 0x03]).is_err());
    // Tuple structs are arrays, newtype structs their inner value, unit structs an empty array.
    assert_eq!(enc(&Pair(1, 2)), [0x92, 0x01, 0x02]);
    assert_eq!(enc(&Meters(5)), [0x05]);
    assert_eq!(enc(&Marker), [0x90]);
    assert_eq!(dec::<Marker>(&[0x90]).unwrap(), Marker);
}

#[test]
fn tuples_vecs_and_maps() {
    assert_eq!(enc(&(1i64, "a")), [0x92, 0x01, 0xa1, b'a']);
    assert_eq!(enc(&vec![1u32, 2, 3]), [0x93, 0x01, 0x02, 0x03]);
    assert_eq!(enc(&[1u8, 2]), [0x92, 0x01, 0x02]);
    let m: BTreeMap<String, i32> = [("a".to_owned(), 1)].into_iter().collect();
    assert_eq!(enc(&m), [0x81, 0xa1, b'a', 0x01]);
    // Tuples must have exactly their length.
    assert!(dec::<(i64, i64)>(&[0x93, 0x01, 0x02, 0x03]).is_err());
    assert!(dec::<(i64, i64)>(&[0x91, 0x01]).is_err());
}

#[test]
fn enums_are_externally_tagged() {
    assert_eq!(enc(&Color::Red), [0xa3, b'R', b'e', b'd']);
    assert_eq!(
        enc(&Shape::Circle(2)),
        [0x81, 0xa6, b'C', b'i', b'r', b'c', b'l', b'e', 0x02]
    );
    assert_eq!(
        enc(&Shape::Rect(1, 2)),
        [0x81, 0xa4, b'R', b'e', b'c', b't', 0x92, 0x01, 0x02]
    );
    assert_eq!(
        enc(&Shape::Dot { x: 1 }),
        [0x81, 0xa3, b'D', b'o', b't', 0x81, 0xa1, b'x', 0x01]
    );
    for v in [Shape::Circle(2), Shape::Rect(1, 2), Shape::Dot { x: 1 }] {
        assert_eq!(dec::<Shape>(&enc(&v)).unwrap(), v);
    }
    assert_eq!(dec::<Color>(&[0xa3, b'R', b'e', b'd']).unwrap(), Color::Red);
}

#[test]
fn options_results_and_unit() {
    assert_eq!(enc(&None::<i32>), [0xc0]);
    assert_eq!(enc(&Some(7i32)), [0x07]);
    assert_eq!(enc(&Some("x")), [0xa1, b'x']);
    assert_eq!(dec::<Option<i32>>(&[0xc0]).unwrap(), None);
    assert_eq!(dec::<Option<i32>>(&[0x07]).unwrap(), Some(7));

    assert_eq!(enc(&Ok::<i64, String>(5)), [0x81, 0xa2, b'O', b'k', 0x05]);
    assert_eq!(enc(&Ok::<i64, String>(2)), [0x81, 0xa2, b'O', b'k', 0x02]);
    // The `div(1, 0)` example of section 4.
    assert_eq!(
        enc(&Err::<i64, String>("division by zero".into())),
        hex("
            81                                    # fixmap, 1 entry
            a3 45 72 72                           # \"Err\"
            b0 64 69 76 69 73 69 6f 6e 20 62 79   # fixstr(16) \"division by zero\"
               20 7a 65 72 6f
            ")
    );
    assert_eq!(
        dec::<Result<i64, String>>(&[0x81, 0xa3, b'E', b'r', b'r', 0xa1, b'x']).unwrap(),
        Err("x".to_owned())
    );

    // A unit return value is nil.
    assert_eq!(enc(&()), [0xc0]);
    dec::<()>(&[0xc0]).unwrap();
}

#[test]
fn bytes_are_bin_only_with_serde_bytes_but_decode_either_way() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }
    let buf = serde_bytes::ByteBuf::from(vec![1, 2, 3]);
    assert_eq!(enc(&buf), [0xc4, 0x03, 0x01, 0x02, 0x03]);
    assert_eq!(
        enc(serde_bytes::Bytes::new(&[1, 2, 3])),
        [0xc4, 0x03, 0x01, 0x02, 0x03]
    );
    assert_eq!(
        enc(&Blob {
            data: vec![1, 2, 3]
        }),
        [
            0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 0x03, 0x01, 0x02, 0x03
        ]
    );
    // A plain Vec<u8> is an array of integers.
    assert_eq!(enc(&vec![1u8, 2, 3]), [0x93, 0x01, 0x02, 0x03]);
    // Decoders accept both forms, whichever way the field is declared.
    assert_eq!(
        dec::<serde_bytes::ByteBuf>(&[0x93, 0x01, 0x02, 0x03])
            .unwrap()
            .into_vec(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<serde_bytes::ByteBuf>(&[0xc4, 0x03, 0x01, 0x02, 0x03])
            .unwrap()
            .into_vec(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Vec<u8>>(&[0xc4, 0x03, 0x01, 0x02, 0x03]).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Vec<u8>>(&[0x93, 0x01, 0x02, 0x03]).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Blob>(&[0x81, 0xa4, b'd', b'a', b't', b'a', 0x93, 0x01, 0x02, 0x03]).unwrap(),
        Blob {
            data: vec![1, 2, 3]
        }
    );
}

#[test]
fn argument_arrays_are_forgiving() {
    let exact = enc(&(1i64, 2i64));
    assert_eq!(exact, [0x92, 0x01, 0x02]);
    assert_eq!(codec::decode_args::<(i64, i64)>(&exact, 2).unwrap(), (1, 2));
    // Missing trailing argument: nil, so an Option reads None...
    assert_eq!(
        codec::decode_args::<(i64, i64, Option<String>)>(&exact, 3).unwrap(),
        (1, 2, None)
    );
    // ...and any other type is InvalidArguments.
    assert_eq!(
        codec::decode_args::<(i64, i64, i64)>(&exact, 3)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
    // Extra trailing arguments are ignored.
    let extra = enc(&(1i64, 2i64, "new", 4i64));
    assert_eq!(codec::decode_args::<(i64, i64)>(&extra, 2).unwrap(), (1, 2));
    // Not an array, or a wrong type: InvalidArguments.
    assert_eq!(
        codec::decode_args::<(i64,)>(&[0x01], 1).unwrap_err().kind(),
        ErrorKind::InvalidArguments
    );
    assert_eq!(
        codec::decode_args::<(i64, i64)>(&[0x92, 0xa1, b'x', 0x02], 2)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
    // A method without parameters is sent an empty array.
    assert_eq!(enc(&stardust::__private::NoArgs), [0x90]);
}

// ---------------------------------------------------------------------------------------------
// Section 13: compatibility rules
// ---------------------------------------------------------------------------------------------

mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct User {
        pub name: String,
        pub age: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub enum Status {
        Active,
        Banned,
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// v1 + a field with a default + an optional field.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct User {
        pub name: String,
        pub age: u32,
        #[serde(default)]
        pub email: String,
        pub nickname: Option<String>,
    }

    /// v1 with a required field added.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserStrict {
        pub name: String,
        pub age: u32,
        pub email: String,
    }

    /// v1 without `age`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserNoAge {
        pub name: String,
    }

    /// v1 with `name` renamed to `full_name`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamed {
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with `name` renamed but carrying a default.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamedDefault {
        #[serde(default)]
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with `name` renamed in Rust only.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamedKeepWire {
        #[serde(rename = "name")]
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with the fields reordered.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserReordered {
        pub age: u32,
        pub name: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub enum Status {
        Active,
        Banned,
        Suspended,
    }
}

fn old_user() -> v1::User {
    v1::User {
        name: "ann".into(),
        age: 30,
    }
}

#[test]
fn adding_fields() {
    // Field with #[serde(default)] and Option field: new reads old...
    assert_eq!(
        dec::<v2::User>(&enc(&old_user())).unwrap(),
        v2::User {
            name: "ann".into(),
            age: 30,
            email: String::new(),
            nickname: None
        }
    );
    // ...and old reads new (the unknown keys are ignored).
    let new = v2::User {
        name: "ann".into(),
        age: 30,
        email: "a@x".into(),
        nickname: Some("a".into()),
    };
    assert_eq!(dec::<v1::User>(&enc(&new)).unwrap(), old_user());
    // A required field breaks new readers of old data.
    assert_eq!(
        dec::<v2::UserStrict>(&enc(&old_user())).unwrap_err().kind(),
        ErrorKind::Decode
    );
}

#[test]
fn removing_renaming_and_reordering_fields() {
    // New reader without `age` ignores it in old data.
    assert_eq!(
        dec::<v2::UserNoAge>(&enc(&old_user())).unwrap(),
        v2::UserNoAge { name: "ann".into() }
    );
    // Old reader that requires `age` fails on new data.
    assert!(dec::<v1::User>(&enc(&v2::UserNoAge { name: "ann".into() })).is_err());
    // Renaming breaks, both ways...
    assert!(dec::<v2::UserRenamed>(&enc(&old_user())).is_err());
    let renamed = v2::UserRenamed {
        full_name: "ann".into(),
        age: 30,
    };
    assert!(dec::<v1::User>(&enc(&renamed)).is_err());
    // ...or, with a default, silently loses the value.
    assert_eq!(
        dec::<v2::UserRenamedDefault>(&enc(&old_user()))
            .unwrap()
            .full_name,
        ""
    );
    // #[serde(rename)] keeps the wire name.
    assert_eq!(
        dec::<v2::UserRenamedKeepWire>(&enc(&old_user()))
            .unwrap()
            .full_name,
        "ann"
    );
    // Reordering is harmless.
    assert_eq!(
        dec::<v2::UserReordered>(&enc(&old_user())).unwrap(),
        v2::UserReordered {
            age: 30,
            name: "ann".into()
        }
    );
}

#[test]
fn optional_trailing_argument() {
    // Old caller: add(a, b). New provider: add(a, b, label: Option<String>).
    let old_call = enc(&(1i64, 2i64));
    assert_eq!(
        codec::decode_args::<(i64, i64, Option<String>)>(&old_call, 3).unwrap(),
        (1, 2, None)
    );
    // New caller to an old provider: the extra element is ignored.
    let new_call = enc(&(1i64, 2i64, Some("sum")));
    assert_eq!(
        codec::decode_args::<(i64, i64)>(&new_call, 2).unwrap(),
        (1, 2)
    );
    // A non-Option added parameter breaks old callers.
    assert_eq!(
        codec::decode_args::<(i64, i64, String)>(&old_call, 3)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
}

#[test]
fn adding_enum_variants() {
    // Old values still decode in new peers.
    assert_eq!(
        dec::<v2::Status>(&enc(&v1::Status::Banned)).unwrap(),
        v2::Status::Banned
    );
    // The new variant fails in old peers: as a response (Decode, locally)...
    assert_eq!(
        dec::<v1::Status>(&enc(&v2::Status::Suspended))
            .unwrap_err()
            .kind(),
        ErrorKind::Decode
    );
    // ...or as an argument (InvalidArguments, sent back in an Error frame).
    assert_eq!(
        codec::decode_args::<(v1::Status,)>(&enc(&(v2::Status::Suspended,)), 1)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
}

#[test]
fn widening_integers() {
    assert_eq!(dec::<i64>(&enc(&5i32)).unwrap(), 5);
    assert_eq!(dec::<i32>(&enc(&5i64)).unwrap(), 5);
    assert!(dec::<i32>(&enc(&(i64::from(i32::MAX) + 1))).is_err());
}
