//! Hand-made inputs for the runtime's decoders where the document shows no bytes: a `Hello`
//! carrying a token and trace metadata, a request body for each method of the echo service, and
//! token claims.

use std::collections::BTreeMap;

use bytes::BytesMut;
use serde_bytes::ByteBuf;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello, RequestHead};
use stardust::Metadata;

use super::{body, enc};
use crate::echo::{EchoClient, Record, Shape};
use crate::targets::token;

pub(super) fn hello_with_meta() -> Vec<u8> {
    let mut meta = Metadata::new();
    meta.insert("token", token::sign(&enc(&claims("k1", token::NOW_MS + 1))));
    meta.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let hello = Hello {
        features: Vec::new(),
        protocol: message::PROTOCOL_NAME.into(),
        version: message::PROTOCOL_VERSION,
        agent: "stardust-fuzz".into(),
        max_frame: Some(frame::MIN_MAX_FRAME),
        meta,
        stream_window: None,
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, Kind::Hello, &hello).expect("encodes");
    buf.to_vec()
}

/// A request body for each echo method (with metadata, so that path has seeds too), and one
/// with a seventh element after the arguments (PROTOCOL.md §13: ignored).
pub(super) fn echo_requests() -> Vec<(String, Vec<u8>)> {
    let mut meta = Metadata::new();
    meta.insert("k", "v");
    meta.insert("tracestate", "congo=t61rcWkgMzE");
    let calls: Vec<(&str, Vec<u8>)> = vec![
        ("pair", enc(&(1i64, -2i64))),
        ("text", enc(&("hello",))),
        ("record", enc(&(record(),))),
        (
            "scalars",
            enc(&((
                255u8,
                65535u16,
                7u32,
                u64::MAX,
                -8i8,
                -300i16,
                1.5f32,
                -0.25f64,
                true,
                'é',
            ),)),
        ),
        ("nothing", enc(&stardust::__private::NoArgs)),
        (
            "nested",
            enc(&(
                vec![("a", Some(1u32)), ("b", None)],
                BTreeMap::from([(7u64, vec![1u8, 2])]),
            )),
        ),
        ("result", enc(&(Err::<u32, _>("no"),))),
    ];
    let mut out = Vec::new();
    for (method, args) in calls {
        assert!(
            EchoClient::DESCRIPTOR.method_index(method).is_some(),
            "{method}"
        );
        out.push((
            format!("echo-{method}"),
            request_body(method, &meta, &args, 6),
        ));
    }
    out.push((
        "seventh-element".to_owned(),
        request_body("text", &Metadata::new(), &enc(&("x",)), 7),
    ));
    out
}

pub(super) fn request_body(method: &str, meta: &Metadata, args: &[u8], elements: u32) -> Vec<u8> {
    let head = RequestHead {
        id: 1,
        flags: 0,
        service: "fuzz.Echo",
        method,
        timeout_us: 5_000_000,
        trace_id: 42,
        meta,
    };
    let mut buf = BytesMut::new();
    message::put_request(
        &mut buf,
        &head,
        &stardust::__private::NoArgs,
        frame::DEFAULT_MAX_FRAME,
    )
    .expect("encodes");
    let mut body = body(&buf);
    // Swap the empty argument array for `args`, and the element count if asked.
    body.truncate(body.len() - 1);
    body.extend_from_slice(args);
    if elements > 6 {
        body[0] = 0x90 | elements as u8;
        body.extend_from_slice(&enc("future"));
    }
    body
}

pub(super) fn record() -> Record {
    Record {
        name: "r".into(),
        tags: BTreeMap::from([("zone".into(), "a".into())]),
        values: vec![0, -1, i64::MAX],
        blob: ByteBuf::from(vec![0, 255]),
        shape: Shape::Named { label: "l".into() },
        child: Some(Box::new(Record {
            name: String::new(),
            tags: BTreeMap::new(),
            values: Vec::new(),
            blob: ByteBuf::new(),
            shape: Shape::Point(1, -1),
            child: None,
        })),
    }
}

pub(super) fn claims(kid: &str, exp_ms: u64) -> stardust::auth::token::Claims {
    stardust::auth::token::Claims {
        kid: kid.into(),
        app: "web".into(),
        iat_ms: token::NOW_MS - 1000,
        exp_ms,
        consume: Some(vec!["calc.Calculator".into()]),
        // Bound to a key (proof of possession), as the registry issues them now.
        cnf: Some([7; 32]),
    }
}
