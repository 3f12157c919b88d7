//! Checks `docs/PROTOCOL.md` against the implementation: the rules of sections 2-5 (frame
//! kinds, flags, error codes, header and body rules) and the frames of streaming calls
//! (section 19).
//!
//! Each stream frame's hex dump is rebuilt with the runtime's public `stardust::__wire` API and
//! compared byte for byte with the test's copy and with the document's block of the same name,
//! as `tests/protocol_examples.rs` does for section 14.

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use stardust::__wire::{codec, frame, message, stream};
use stardust::{ErrorKind, Metadata};

#[path = "common/doc_frames.rs"]
mod doc_frames;
#[path = "common/protocol.rs"]
mod protocol;
use doc_frames::{DOC, check, hex};
use protocol::{add_head, dec, enc};

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
