//! The seed corpora: every example frame of `docs/PROTOCOL.md` §14 (extracted from the
//! document itself), cut to what each target takes, plus hand-made inputs for what the document
//! shows no bytes of (metadata, tokens, the registry API, HTTP), built in `seeds/calls.rs` and
//! `seeds/registry.rs`.
//!
//! `tests/corpus.rs` checks that `fuzz/corpus/<target>/<name>` holds exactly these bytes;
//! `STARDUST_FUZZ_WRITE_SEEDS=1 cargo test --test corpus` writes them after a change here or in
//! the document.

use bytes::BytesMut;
use serde::Serialize;
use serde_bytes::ByteBuf;
use stardust::__wire::frame::{self, HEADER_LEN, Kind};
use stardust::__wire::message;
use stardust::__wire::stream;
use stardust::Metadata;
use stardust::discovery::api::{Instance, LoginReply, PublicKey, RegistryClient, RegistryError};

use crate::targets::token;

mod calls;
mod registry;

use calls::{claims, echo_requests, hello_with_meta, record, request_body};
use registry::{
    delta_push, discovery_push, http_requests, instance, registry_calls, watch_replies,
};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// One seed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target whose corpus it belongs to.
    pub target: &'static str,
    /// Its file name in `fuzz/corpus/<target>/`.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

/// Parses an annotated hex dump: on each line, everything after `#` is a comment and the rest
/// is two-digit hex bytes separated by whitespace.
pub fn hex(dump: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in dump.lines() {
        let data = line.split('#').next().unwrap_or("");
        for tok in data.split_whitespace() {
            let byte = u8::from_str_radix(tok, 16)
                .ok()
                .filter(|_| tok.len() == 2)
                .unwrap_or_else(|| panic!("bad hex byte {tok:?} in {line:?}"));
            out.push(byte);
        }
    }
    out
}

/// Every `<!-- frame: NAME -->` hex block of PROTOCOL.md, in document order.
pub fn doc_frames() -> Vec<(String, Vec<u8>)> {
    const MARKER: &str = "<!-- frame: ";
    let mut frames = Vec::new();
    let mut rest = DOC;
    while let Some(at) = rest.find(MARKER) {
        rest = &rest[at + MARKER.len()..];
        let name = &rest[..rest.find(" -->").expect("marker ends with -->")];
        let open = rest.find("```text\n").expect("a code block follows") + "```text\n".len();
        let close = rest[open..].find("```").expect("the code block ends");
        frames.push((name.to_owned(), hex(&rest[open..open + close])));
        rest = &rest[open + close..];
    }
    frames
}

fn doc_frame(name: &str) -> Vec<u8> {
    doc_frames()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no frame `{name}`"))
        .1
}

fn body(frame: &[u8]) -> Vec<u8> {
    frame[HEADER_LEN..].to_vec()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    crate::targets::encode(value)
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
        })
    };
    let frames = doc_frames();

    // frame: [limit selector, chunking, stream]; every document frame alone, then the whole
    // session in odd-sized reads under the smallest limit.
    for (name, bytes) in &frames {
        add("frame", &format!("doc-{name}"), cat(&[&[2, 0], bytes]));
    }
    let session: Vec<u8> = frames.iter().flat_map(|(_, b)| b.clone()).collect();
    add("frame", "doc-session-chunked", cat(&[&[0, 3], &session]));
    add(
        "frame",
        "truncated",
        cat(&[&[2, 1], &doc_frame("hello")[..30]]),
    );
    add(
        "frame",
        "oversized",
        cat(&[&[1, 0], &[0, 1, 0, 0, 3, 0], &[0; 8]]),
    );

    // hello: [chunking, stream].
    add("hello", "doc-hello", cat(&[&[0], &doc_frame("hello")]));
    add(
        "hello",
        "token-and-meta-bytewise",
        cat(&[&[1], &hello_with_meta()]),
    );
    // The array-shaped Hello (PROTOCOL.md §3): `["stardust", 1]`.
    let mut array = BytesMut::new();
    message::put_serde(&mut array, Kind::Hello, &(message::PROTOCOL_NAME, 1u32)).expect("encodes");
    add("hello", "array-shaped", cat(&[&[0], &array]));
    // A Hello announcing streaming calls (PROTOCOL.md §19).
    add(
        "hello",
        "doc-hello_stream",
        cat(&[&[0], &doc_frame("hello_stream")]),
    );
    // A Hello then its Proof (proof of possession, PROTOCOL.md §3).
    add(
        "hello",
        "doc-hello-then-proof",
        cat(&[&[0], &doc_frame("hello"), &doc_frame("proof")]),
    );

    // request: Request bodies.
    add(
        "request",
        "doc-request_add",
        body(&doc_frame("request_add")),
    );
    add(
        "request",
        "doc-request_authenticate",
        body(&doc_frame("request_authenticate")),
    );
    add(
        "request",
        "doc-stream_request_tail",
        body(&doc_frame("stream_request_tail")),
    );
    for (name, bytes) in echo_requests() {
        add("request", &name, bytes);
    }

    // response: [type selector, body].
    add(
        "response",
        "doc-response_add",
        cat(&[&[0], &body(&doc_frame("response_add"))]),
    );
    add(
        "response",
        "doc-response_authenticate",
        cat(&[&[1], &body(&doc_frame("response_authenticate"))]),
    );
    add(
        "response",
        "doc-hello_ack",
        cat(&[&[14], &body(&doc_frame("hello_ack"))]),
    );
    let div: Result<i64, String> = Err("division by zero".into());
    add("response", "result-err", cat(&[&[3], &enc(&div)]));
    add("response", "record", cat(&[&[7], &enc(&record())]));
    let login: Result<LoginReply, RegistryError> = Ok(LoginReply {
        app: "web".into(),
        token: token::sign(&enc(&claims("k1", token::NOW_MS + 60_000))),
        expires_at_ms: token::NOW_MS + 60_000,
        keys: vec![PublicKey {
            kid: "k1".into(),
            key: ByteBuf::from(token::signing_key().verifying_key().to_bytes().to_vec()),
        }],
        features: vec!["discovery.delta".into()],
    });
    add("response", "login-reply", cat(&[&[9], &enc(&login)]));
    let found: Result<Vec<Instance>, RegistryError> = Ok(vec![instance()]);
    add("response", "discover-reply", cat(&[&[12], &enc(&found)]));
    let throttled: Result<bool, RegistryError> = Err(RegistryError::Throttled {
        message: "too many failed logins; retry in 3.2s".into(),
        retry_after_ms: 3200,
    });
    add("response", "throttled", cat(&[&[13], &enc(&throttled)]));
    add(
        "response",
        "doc-hello_ack_features",
        cat(&[&[14], &body(&doc_frame("hello_ack_features"))]),
    );
    add(
        "response",
        "doc-response_watch_unchanged",
        cat(&[&[15], &body(&doc_frame("response_watch_unchanged"))]),
    );
    for (name, reply) in watch_replies() {
        add("response", name, cat(&[&[15], &enc(&reply)]));
    }

    // error: Error and GoAway bodies.
    for name in [
        "error_unknown_method",
        "goaway_shutting_down",
        "goaway_token_required",
    ] {
        add("error", &format!("doc-{name}"), body(&doc_frame(name)));
    }

    // notify: Notify bodies.
    add("notify", "doc-notify", body(&doc_frame("notify")));
    add("notify", "discovery-event", discovery_push());
    add("notify", "discovery-delta", delta_push());
    add(
        "notify",
        "doc-notify_delta",
        body(&doc_frame("notify_delta")),
    );

    // goaway: [chunking, what a server sends a client].
    let accepted = cat(&[
        &doc_frame("hello_ack"),
        &doc_frame("response_add"),
        &doc_frame("error_unknown_method"),
        &doc_frame("ping"),
        &doc_frame("notify"),
        &doc_frame("goaway_shutting_down"),
        &doc_frame("response_authenticate"),
    ]);
    add(
        "goaway",
        "doc-accepted-then-drained",
        cat(&[&[0], &accepted]),
    );
    add(
        "goaway",
        "doc-goaway_token_required",
        cat(&[&[5], &doc_frame("goaway_token_required")]),
    );

    // token: [mode, token text] (even) or [mode, claims] (odd, signed by the target).
    add("token", "doc-made-up", cat(&[&[0], b"sd1.AAAA.BBBB"]));
    let valid = enc(&claims("k1", token::NOW_MS + 60_000));
    add(
        "token",
        "valid-text",
        cat(&[&[0], token::sign(&valid).as_bytes()]),
    );
    add("token", "valid-claims", cat(&[&[1], &valid]));
    add(
        "token",
        "expired-claims",
        cat(&[&[1], &enc(&claims("k1", 1000))]),
    );
    add(
        "token",
        "unknown-kid-claims",
        cat(&[&[1], &enc(&claims("k9", u64::MAX))]),
    );

    // registry_args: [method index, argument array].
    for (method, args) in registry_calls() {
        let index = RegistryClient::DESCRIPTOR
            .method_index(method)
            .expect("a registry method") as u8;
        add("registry_args", method, cat(&[&[index], &args]));
    }

    // server: what a client sends a provider (the echo service is `fuzz.Echo`).
    let hello = doc_frame("hello");
    add(
        "server",
        "doc-session",
        cat(&[
            &hello,
            &doc_frame("request_add"),
            &doc_frame("ping"),
            &doc_frame("cancel"),
            &doc_frame("request_authenticate"),
            &doc_frame("goaway_shutting_down"),
        ]),
    );
    add("server", "doc-no-hello", doc_frame("request_add"));
    // A client announcing streams opens one (a service the provider lacks) and sends every
    // stream frame of PROTOCOL.md §19, then calls an echo method with the STREAM flag.
    let mut stream_session = cat(&[
        &doc_frame("hello_stream"),
        &doc_frame("stream_request_tail"),
        &doc_frame("stream_item"),
        &doc_frame("stream_credit"),
        &doc_frame("stream_end"),
        &doc_frame("stream_cancel"),
    ]);
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, Kind::Request, stream::FLAG_STREAM, 9);
    buf.extend_from_slice(&request_body("text", &Metadata::new(), &enc(&("x",)), 6));
    frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).expect("fits");
    stream_session.extend_from_slice(&buf);
    add("server", "doc-stream-session", stream_session);
    // Streams the echo service really has: `count` sends items (under the default credit),
    // `sum` takes items, credit and its `End`.
    let mut echo_streams = doc_frame("hello_stream");
    let mut buf = BytesMut::new();
    for (id, method, args) in [(1u64, "count", enc(&(5u8,))), (3, "sum", enc(&()))] {
        let start = frame::begin(&mut buf, Kind::Request, stream::FLAG_STREAM, id);
        buf.extend_from_slice(&request_body(method, &Metadata::new(), &args, 6));
        frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).expect("fits");
    }
    for n in [1u64, 2, 3] {
        stream::put_item(&mut buf, 3, &n, frame::DEFAULT_MAX_FRAME).expect("fits");
    }
    stream::put_credit(&mut buf, 1, 4096);
    stream::put_end(&mut buf, 3);
    echo_streams.extend_from_slice(&buf);
    add("server", "echo-streams", echo_streams);
    let mut echo_session = hello.clone();
    for (id, (_, body)) in echo_requests().into_iter().enumerate() {
        let flags = if id % 3 == 2 { frame::FLAG_ONE_WAY } else { 0 };
        let mut buf = BytesMut::new();
        let start = frame::begin(&mut buf, Kind::Request, flags, id as u64 + 1);
        buf.extend_from_slice(&body);
        frame::finish(&mut buf, start, frame::DEFAULT_MAX_FRAME).expect("fits");
        echo_session.extend_from_slice(&buf);
    }
    add("server", "echo-session", echo_session);

    // monitor_http: raw requests.
    for (name, request) in http_requests() {
        add("monitor_http", name, request.as_bytes().to_vec());
    }
    seeds
}
