//! A Stardust client written only from `docs/PROTOCOL.md`, talking to a real Stardust server.
//!
//! The client side uses nothing from `stardust` — in particular no `stardust::protocol` item —
//! only `std::net::TcpStream` (blocking, with 10 s read/write timeouts so nothing can hang) and
//! the low-level `rmp` functions, the way a developer in another language would use their
//! MessagePack library. If these tests pass, the document is sufficient to implement a client.
//!
//! The server side is the real runtime hosting a hand-written `stardust::Service` (the proc
//! macro is not needed). Each test runs the server on a multi-threaded tokio runtime and the
//! blocking client inside `spawn_blocking`. All waits are bounded; nothing sleeps to
//! synchronise.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;
use stardust::{
    Call, Context, Error, MethodDescriptor, Server, ServerBuilder, Service, ServiceDescriptor,
};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The client: frames (PROTOCOL.md §2) and MessagePack values, from the document only.
// ---------------------------------------------------------------------------------------------

// Frame kinds (§2).
const HELLO: u8 = 1;
const HELLO_ACK: u8 = 2;
const REQUEST: u8 = 3;
const RESPONSE: u8 = 4;
const ERROR: u8 = 5;
const CANCEL: u8 = 6;
const NOTIFY: u8 = 7;
const PING: u8 = 8;
const PONG: u8 = 9;
const GOAWAY: u8 = 10;
// Request flags (§2).
const ONE_WAY: u8 = 0x01;
const IDEMPOTENT: u8 = 0x02;

/// A MessagePack value, enough of the data model for the tests.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Nil,
    Bool(bool),
    Int(i128),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
}

fn s(x: &str) -> V {
    V::Str(x.to_owned())
}

fn int(x: i128) -> V {
    V::Int(x)
}

fn map(entries: &[(&str, V)]) -> V {
    V::Map(entries.iter().map(|(k, v)| (s(k), v.clone())).collect())
}

impl V {
    fn encode(&self, out: &mut Vec<u8>) {
        use rmp::encode::*;
        match self {
            V::Nil => write_nil(out).unwrap(),
            V::Bool(b) => write_bool(out, *b).unwrap(),
            V::Int(i) if *i >= 0 => drop(write_uint(out, *i as u64).unwrap()),
            V::Int(i) => drop(write_sint(out, *i as i64).unwrap()),
            V::F64(f) => write_f64(out, *f).unwrap(),
            V::Str(x) => write_str(out, x).unwrap(),
            V::Bin(b) => write_bin(out, b).unwrap(),
            V::Arr(items) => {
                write_array_len(out, items.len() as u32).unwrap();
                for item in items {
                    item.encode(out);
                }
            }
            V::Map(entries) => {
                write_map_len(out, entries.len() as u32).unwrap();
                for (k, v) in entries {
                    k.encode(out);
                    v.encode(out);
                }
            }
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one complete value; trailing bytes are an error.
    fn decode_all(bytes: &[u8]) -> V {
        let mut rd = bytes;
        let v = V::decode(&mut rd);
        assert!(rd.is_empty(), "{} trailing bytes after {v:?}", rd.len());
        v
    }

    fn decode(rd: &mut &[u8]) -> V {
        use rmp::Marker as M;
        fn take<'a>(rd: &mut &'a [u8], n: usize) -> &'a [u8] {
            assert!(rd.len() >= n, "truncated MessagePack value");
            let (head, tail) = rd.split_at(n);
            *rd = tail;
            head
        }
        fn be(rd: &mut &[u8], n: usize) -> u64 {
            take(rd, n)
                .iter()
                .fold(0, |acc, b| (acc << 8) | u64::from(*b))
        }
        fn text(rd: &mut &[u8], n: usize) -> V {
            V::Str(String::from_utf8(take(rd, n).to_vec()).expect("utf-8 str"))
        }
        fn items(rd: &mut &[u8], n: usize) -> V {
            V::Arr((0..n).map(|_| V::decode(rd)).collect())
        }
        fn entries(rd: &mut &[u8], n: usize) -> V {
            V::Map((0..n).map(|_| (V::decode(rd), V::decode(rd))).collect())
        }
        let marker = rmp::decode::read_marker(rd).expect("a MessagePack marker");
        match marker {
            M::Null => V::Nil,
            M::True => V::Bool(true),
            M::False => V::Bool(false),
            M::FixPos(n) => V::Int(n.into()),
            M::FixNeg(n) => V::Int(n.into()),
            M::U8 => V::Int(be(rd, 1).into()),
            M::U16 => V::Int(be(rd, 2).into()),
            M::U32 => V::Int(be(rd, 4).into()),
            M::U64 => V::Int(be(rd, 8).into()),
            M::I8 => V::Int((be(rd, 1) as u8 as i8).into()),
            M::I16 => V::Int((be(rd, 2) as u16 as i16).into()),
            M::I32 => V::Int((be(rd, 4) as u32 as i32).into()),
            M::I64 => V::Int((be(rd, 8) as i64).into()),
            M::F32 => V::F64(f32::from_bits(be(rd, 4) as u32).into()),
            M::F64 => V::F64(f64::from_bits(be(rd, 8))),
            M::FixStr(n) => text(rd, n.into()),
            M::Str8 => {
                let n = be(rd, 1) as usize;
                text(rd, n)
            }
            M::Str16 => {
                let n = be(rd, 2) as usize;
                text(rd, n)
            }
            M::Str32 => {
                let n = be(rd, 4) as usize;
                text(rd, n)
            }
            M::Bin8 | M::Bin16 | M::Bin32 => {
                let width = match marker {
                    M::Bin8 => 1,
                    M::Bin16 => 2,
                    _ => 4,
                };
                let n = be(rd, width) as usize;
                V::Bin(take(rd, n).to_vec())
            }
            M::FixArray(n) => items(rd, n.into()),
            M::Array16 => {
                let n = be(rd, 2) as usize;
                items(rd, n)
            }
            M::Array32 => {
                let n = be(rd, 4) as usize;
                items(rd, n)
            }
            M::FixMap(n) => entries(rd, n.into()),
            M::Map16 => {
                let n = be(rd, 2) as usize;
                entries(rd, n)
            }
            M::Map32 => {
                let n = be(rd, 4) as usize;
                entries(rd, n)
            }
            other => panic!("unexpected MessagePack marker {other:?}"),
        }
    }

    /// The value under string key `key` of a map.
    fn get(&self, key: &str) -> Option<&V> {
        match self {
            V::Map(entries) => entries
                .iter()
                .find(|(k, _)| *k == V::Str(key.to_owned()))
                .map(|(_, v)| v),
            other => panic!("expected a map, got {other:?}"),
        }
    }

    fn as_int(&self) -> i128 {
        match self {
            V::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            V::Str(x) => x,
            other => panic!("expected a string, got {other:?}"),
        }
    }
}

/// One frame as received.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    id: u64,
    body: Vec<u8>,
    /// The whole frame, header included, as it came off the wire.
    raw: Vec<u8>,
}

impl Frame {
    fn value(&self) -> V {
        V::decode_all(&self.body)
    }

    /// `(code, message)` of an `Error` or `GoAway` body (§4, §9).
    fn error(&self) -> (u16, String) {
        assert!(
            self.kind == ERROR || self.kind == GOAWAY,
            "expected an Error or GoAway frame, got {self:?}"
        );
        match self.value() {
            V::Arr(items) if items.len() >= 2 => (
                u16::try_from(items[0].as_int()).unwrap(),
                items[1].as_str().to_owned(),
            ),
            other => panic!("malformed error body {other:?}"),
        }
    }
}

/// `[service, method, timeout_us, trace_id, meta, args]` (§4).
fn request_body(
    service: &str,
    method: &str,
    timeout_us: u64,
    trace_id: u64,
    meta: &[(&str, &str)],
    args: Vec<V>,
) -> Vec<u8> {
    V::Arr(vec![
        s(service),
        s(method),
        int(timeout_us.into()),
        int(trace_id.into()),
        V::Map(meta.iter().map(|(k, v)| (s(k), s(v))).collect()),
        V::Arr(args),
    ])
    .to_bytes()
}

fn frame_bytes(kind: u8, flags: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + body.len());
    out.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The `Hello` body the tests normally send (§3).
fn hello_body(max_frame: u32) -> Vec<u8> {
    map(&[
        ("protocol", s("stardust")),
        ("version", int(1)),
        ("agent", s("foreign-client/1.0")),
        ("max_frame", int(max_frame.into())),
        ("meta", V::Map(vec![])),
    ])
    .to_bytes()
}

struct Conn {
    stream: TcpStream,
    /// Server pings answered by `recv`.
    pings_answered: usize,
}

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Conn {
            stream,
            pings_answered: 0,
        }
    }

    /// Connects and performs the handshake with `max_frame`; returns the HelloAck body.
    fn handshake_with(addr: SocketAddr, max_frame: u32) -> (Conn, V) {
        let mut c = Conn::connect(addr);
        c.send(HELLO, 0, 0, &hello_body(max_frame));
        let ack = c.recv_raw().expect("an answer to Hello");
        assert_eq!(ack.kind, HELLO_ACK, "handshake refused: {ack:?}");
        assert_eq!((ack.flags, ack.id), (0, 0));
        let body = ack.value();
        let version = body.get("version").expect("HelloAck.version").as_int();
        assert_eq!(version, 1, "negotiated version");
        assert!(body.get("max_frame").expect("HelloAck.max_frame").as_int() >= 1024);
        (c, body)
    }

    fn handshake(addr: SocketAddr) -> Conn {
        Conn::handshake_with(addr, 16 * 1024 * 1024).0
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn send(&mut self, kind: u8, flags: u8, id: u64, body: &[u8]) {
        self.send_raw(&frame_bytes(kind, flags, id, body));
    }

    /// Sends a request with a 10 s budget and no metadata.
    fn call(&mut self, id: u64, method: &str, args: Vec<V>) {
        self.call_flags(id, 0, "calc.Calculator", method, args);
    }

    fn call_flags(&mut self, id: u64, flags: u8, service: &str, method: &str, args: Vec<V>) {
        let body = request_body(service, method, 10_000_000, 0x5eed, &[], args);
        self.send(REQUEST, flags, id, &body);
    }

    /// The next frame, or `None` on a clean end of stream between frames.
    fn recv_raw(&mut self) -> Option<Frame> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut len[got..]) {
                Ok(0) if got == 0 => return None,
                Ok(0) => panic!("connection closed inside a frame header"),
                Ok(n) => got += n,
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(e) => panic!("read failed (timeout?): {e}"),
            }
        }
        let length = u32::from_be_bytes(len) as usize;
        assert!(length >= 10, "frame length {length} < 10");
        let mut rest = vec![0u8; length];
        self.stream.read_exact(&mut rest).expect("frame body");
        let mut raw = len.to_vec();
        raw.extend_from_slice(&rest);
        Some(Frame {
            kind: rest[0],
            flags: rest[1],
            id: u64::from_be_bytes(rest[2..10].try_into().unwrap()),
            body: rest[10..].to_vec(),
            raw,
        })
    }

    /// The next frame that is not a server `Ping`; pings are answered with a `Pong` (§7).
    fn recv(&mut self) -> Frame {
        for _ in 0..1000 {
            let f = self.recv_raw().expect("a frame, got end of stream");
            if f.kind == PING {
                self.send(PONG, 0, f.id, &[]);
                self.pings_answered += 1;
                continue;
            }
            return f;
        }
        panic!("only pings from the server");
    }

    /// Expects the `Response` to request `id` as the next frame and returns its value.
    fn response(&mut self, id: u64) -> V {
        let f = self.recv();
        assert_eq!(
            (f.kind, f.id, f.flags),
            (RESPONSE, id, 0),
            "expected Response {id}: {f:?} {:?}",
            (f.kind == ERROR).then(|| f.error())
        );
        f.value()
    }

    /// Expects an `Error` for request `id` as the next frame.
    fn error(&mut self, id: u64) -> (u16, String) {
        let f = self.recv();
        assert_eq!((f.kind, f.id), (ERROR, id), "expected Error {id}: {f:?}");
        f.error()
    }

    /// Expects a `GoAway` and then the end of the stream.
    fn goaway_then_eof(&mut self) -> (u16, String) {
        let f = self.recv();
        assert_eq!(
            (f.kind, f.id, f.flags),
            (GOAWAY, 0, 0),
            "expected GoAway: {f:?}"
        );
        let reason = f.error();
        self.eof();
        reason
    }

    fn eof(&mut self) {
        if let Some(f) = self.recv_raw() {
            panic!("expected the end of the stream, got {f:?}");
        }
    }
}

/// The bytes of the example `name` of PROTOCOL.md §14 (`<!-- frame: name -->`).
fn doc_frame(name: &str) -> Vec<u8> {
    let doc = include_str!("../docs/PROTOCOL.md");
    let marker = format!("<!-- frame: {name} -->");
    let at = doc.find(&marker).expect("example in PROTOCOL.md") + marker.len();
    let rest = &doc[at..];
    let open = rest.find("```text\n").unwrap() + "```text\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close]
        .lines()
        .flat_map(|l| l.split('#').next().unwrap().split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The server: a real Stardust server hosting a hand-written service.
// ---------------------------------------------------------------------------------------------

static DESC: ServiceDescriptor = ServiceDescriptor {
    name: "calc.Calculator",
    version: "1.0.0",
    methods: &[
        MethodDescriptor {
            name: "add",
            idempotent: true,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "sleep",
            idempotent: false,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "div",
            idempotent: true,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "hold",
            idempotent: false,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "release",
            idempotent: false,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "forever",
            idempotent: false,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "publish",
            idempotent: false,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "blob",
            idempotent: true,
            input_stream: false,
            output_stream: false,
        },
        MethodDescriptor {
            name: "label",
            idempotent: true,
            input_stream: false,
            output_stream: false,
        },
    ],
};

/// What the handlers share with the test.
struct Shared {
    /// Handler events (`"hold started"`, `"forever dropped"`), for the test to wait on.
    events: mpsc::Sender<&'static str>,
    /// Lets `hold` calls finish.
    release: tokio::sync::Notify,
}

struct Calc(Arc<Shared>);

#[derive(Serialize)]
struct Sum {
    sum: i64,
}

/// Reports that the `forever` handler was dropped (cancelled) rather than completed.
struct DropReport(mpsc::Sender<&'static str>);

impl Drop for DropReport {
    fn drop(&mut self) {
        let _ = self.0.send("forever dropped");
    }
}

impl Service for Calc {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        &DESC
    }

    fn call(&self, method: usize, args: &[u8]) -> Result<Call, Error> {
        use stardust::__private::decode_args;
        let shared = self.0.clone();
        match method {
            0 => {
                let (a, b) = decode_args::<(i64, i64)>(args, 2)?;
                Ok(Call::new(async move { a + b }))
            }
            1 => {
                let (ms,) = decode_args::<(u64,)>(args, 1)?;
                Ok(Call::new(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ms
                }))
            }
            2 => {
                let (a, b) = decode_args::<(i64, i64)>(args, 2)?;
                Ok(Call::new(async move {
                    a.checked_div(b)
                        .ok_or_else(|| "division by zero".to_owned())
                }))
            }
            3 => Ok(Call::new(async move {
                let _ = shared.events.send("hold started");
                shared.release.notified().await;
                "held"
            })),
            4 => Ok(Call::new(async move { shared.release.notify_one() })),
            5 => {
                let report = DropReport(shared.events.clone());
                Ok(Call::new(async move {
                    let _report = report;
                    std::future::pending::<()>().await
                }))
            }
            6 => Ok(Call::new(async move {
                let notifier = Context::current()
                    .and_then(|c| c.notifier())
                    .expect("a notifier in the handler's context");
                notifier
                    .notify("calc.done", &Sum { sum: 3 })
                    .expect("notify");
            })),
            7 => {
                let (n,) = decode_args::<(usize,)>(args, 1)?;
                Ok(Call::new(async move {
                    serde_bytes::ByteBuf::from(vec![0xabu8; n])
                }))
            }
            8 => {
                // A method that grew an optional trailing parameter.
                let (a, label) = decode_args::<(i64, Option<String>)>(args, 2)?;
                Ok(Call::new(async move {
                    format!("{a}:{}", label.as_deref().unwrap_or("none"))
                }))
            }
            _ => Err(stardust::__private::unknown_method(&DESC, method)),
        }
    }
}

struct TestServer {
    server: Server,
    shared: Arc<Shared>,
    events: mpsc::Receiver<&'static str>,
}

async fn start(builder: ServerBuilder) -> TestServer {
    let (tx, events) = mpsc::channel();
    let shared = Arc::new(Shared {
        events: tx,
        release: tokio::sync::Notify::new(),
    });
    let server = builder
        .serve(Calc(shared.clone()))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    TestServer {
        server,
        shared,
        events,
    }
}

/// Waits (bounded) for the handler event `what`, skipping others.
fn wait_event(events: &mpsc::Receiver<&'static str>, what: &str) {
    for _ in 0..100 {
        match events.recv_timeout(IO_TIMEOUT) {
            Ok(e) if e == what => return,
            Ok(_) => {}
            Err(e) => panic!("no `{what}` event: {e}"),
        }
    }
    panic!("no `{what}` event among the first 100");
}

/// Runs the blocking client `f` on the blocking pool and propagates its panics.
async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_client_talks_to_a_stardust_server() {
    let TestServer {
        server,
        shared: _shared,
        events,
    } = start(Server::builder().allow_anonymous()).await;
    let addr = server.local_addr();

    client(move || {
        // Handshake (§3).
        let (mut c, ack) = Conn::handshake_with(addr, 16 * 1024 * 1024);
        assert_eq!(ack.get("max_frame"), Some(&int(16 * 1024 * 1024)));
        assert!(
            ack.get("agent")
                .unwrap()
                .as_str()
                .starts_with("stardust-rust/"),
            "{ack:?}"
        );

        // calc.Calculator.add(1, 2), byte for byte the example of §14.3, answered by the
        // example of §14.4.
        let body = request_body(
            "calc.Calculator",
            "add",
            5_000_000,
            0x0123_4567_89ab_cdef,
            &[],
            vec![int(1), int(2)],
        );
        let request = frame_bytes(REQUEST, 0, 1, &body);
        assert_eq!(request, doc_frame("request_add"));
        c.send_raw(&request);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("response_add"));
        assert_eq!(f.value(), int(3));

        // A slow and a fast call pipelined in one write: the fast one is answered first (§1).
        let mut both = frame_bytes(
            REQUEST,
            0,
            10,
            &request_body("calc.Calculator", "hold", 10_000_000, 1, &[], vec![]),
        );
        both.extend(frame_bytes(
            REQUEST,
            IDEMPOTENT,
            11,
            &request_body(
                "calc.Calculator",
                "add",
                10_000_000,
                2,
                &[],
                vec![int(20), int(22)],
            ),
        ));
        c.send_raw(&both);
        assert_eq!(c.response(11), int(42));
        // Let the slow call finish: two answers, ids 10 and 12, in either order.
        c.call(12, "release", vec![]);
        let mut answered = Vec::new();
        for _ in 0..2 {
            let f = c.recv();
            assert_eq!(f.kind, RESPONSE, "{f:?}");
            answered.push((f.id, f.value()));
        }
        answered.sort_by_key(|(id, _)| *id);
        assert_eq!(answered, [(10, s("held")), (12, V::Nil)]);

        // The same pipelining with a real timer: sleep(1 s) then add, in one write, so both
        // reach the server together and the add's head start is the whole second.
        let req = |id, method, args| {
            let body = request_body("calc.Calculator", method, 10_000_000, 0, &[], args);
            frame_bytes(REQUEST, 0, id, &body)
        };
        let (sleep, add) = (
            req(13, "sleep", vec![int(1000)]),
            req(14, "add", vec![int(2); 2]),
        );
        c.send_raw(&[sleep, add].concat());
        assert_eq!(c.response(14), int(4));
        assert_eq!(c.response(13), int(1000));

        // Framework errors are typed Error frames (§4, §5); §14.5 byte for byte.
        c.call(2, "mul", vec![int(1), int(2)]);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("error_unknown_method"));
        assert_eq!(
            f.error(),
            (
                3,
                "service `calc.Calculator` has no method `mul`".to_owned()
            )
        );
        c.call_flags(15, 0, "calc.Nope", "add", vec![int(1), int(2)]);
        assert_eq!(c.error(15).0, 2, "UnknownService");
        c.call(16, "add", vec![s("x"), int(2)]);
        assert_eq!(c.error(16).0, 4, "InvalidArguments");
        c.call(17, "add", vec![int(1)]);
        assert_eq!(c.error(17).0, 4, "a missing non-Option argument");

        // A malformed request body fails only that request (§11).
        c.send(
            REQUEST,
            0,
            18,
            &V::Arr(vec![s("calc.Calculator"), s("add")]).to_bytes(),
        );
        assert_eq!(c.error(18).0, 13, "Protocol");
        c.send(REQUEST, 0, 19, &[0xc1]);
        assert_eq!(c.error(19).0, 13, "Protocol");
        c.call(20, "add", vec![int(1), int(1)]);
        assert_eq!(c.response(20), int(2), "the connection survived");

        // Application errors are values: Result as {"Ok": v} / {"Err": e} in a Response (§4).
        c.call(21, "div", vec![int(6), int(3)]);
        assert_eq!(c.response(21), map(&[("Ok", int(2))]));
        c.call(22, "div", vec![int(1), int(0)]);
        let f = c.recv();
        assert_eq!((f.kind, f.id), (RESPONSE, 22));
        assert_eq!(
            f.body,
            [
                0x81, 0xa3, 0x45, 0x72, 0x72, 0xb0, 0x64, 0x69, 0x76, 0x69, 0x73, 0x69, 0x6f, 0x6e,
                0x20, 0x62, 0x79, 0x20, 0x7a, 0x65, 0x72, 0x6f
            ]
        );
        assert_eq!(f.value(), map(&[("Err", s("division by zero"))]));

        // Forgiving argument arrays (§4): an extra trailing argument is ignored; a missing
        // trailing Option is None.
        c.call(23, "add", vec![int(1), int(2), s("from a newer caller")]);
        assert_eq!(c.response(23), int(3));
        c.call(24, "label", vec![int(7)]);
        assert_eq!(c.response(24), s("7:none"));
        c.call(25, "label", vec![int(7), s("x")]);
        assert_eq!(c.response(25), s("7:x"));
        // Extra request elements and unknown metadata are ignored (§13).
        let mut body = V::Arr(vec![
            s("calc.Calculator"),
            s("add"),
            int(1_000_000),
            int(0),
            map(&[("x-unknown", s("1")), ("x-other", s("2"))]),
            V::Arr(vec![int(5), int(6)]),
            s("a seventh element from the future"),
        ])
        .to_bytes();
        c.send(REQUEST, 0, 26, &body);
        assert_eq!(c.response(26), int(11));
        // A deadline of 50 ms on a 5 s call (§4).
        body = request_body("calc.Calculator", "sleep", 50_000, 0, &[], vec![int(5000)]);
        c.send(REQUEST, 0, 27, &body);
        assert_eq!(c.error(27).0, 5, "DeadlineExceeded");

        // Ping / Pong (§7, §14.7).
        let ping = frame_bytes(PING, 0, 7, &[]);
        assert_eq!(ping, doc_frame("ping"));
        c.send_raw(&ping);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("pong"));

        // Cancel (§6, §14.6): the handler is stopped, and nothing is ever sent for its id.
        c.call(3, "forever", vec![]);
        let cancel = frame_bytes(CANCEL, 0, 3, &[]);
        assert_eq!(cancel, doc_frame("cancel"));
        c.send_raw(&cancel);
        wait_event(&events, "forever dropped");
        c.call(31, "add", vec![int(30), int(1)]);
        assert_eq!(c.response(31), int(31), "no frame for the cancelled call");
        // Cancelling an unknown or finished id is ignored.
        c.send(CANCEL, 0, 31, &[]);
        c.send(CANCEL, 0, 999, &[]);

        // Notify (§8, §14.8): sent by the handler before it returns, so it arrives first.
        c.call(40, "publish", vec![]);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("notify"));
        assert_eq!(f.kind, NOTIFY);
        assert_eq!(
            f.value(),
            V::Arr(vec![s("calc.done"), map(&[("sum", int(3))])])
        );
        assert_eq!(c.response(40), V::Nil, "unit return is nil");

        // One-way requests (§10) never get a Response or an Error, even when they fail. The
        // Pong proves nothing else was queued before it.
        c.call_flags(0, ONE_WAY, "calc.Calculator", "add", vec![int(1), int(2)]);
        c.call_flags(0, ONE_WAY | IDEMPOTENT, "calc.Calculator", "mul", vec![]);
        c.call_flags(0, ONE_WAY, "calc.Nope", "add", vec![]);
        c.call_flags(0, ONE_WAY, "calc.Calculator", "add", vec![s("bad")]);
        c.send(REQUEST, ONE_WAY, 0, &[0x90]);
        c.send(PING, 0, 8, &[]);
        let f = c.recv();
        assert_eq!((f.kind, f.id), (PONG, 8), "{f:?}");

        // A bad handshake on a second connection gets a GoAway (§3); the first is unaffected.
        let mut bad = Conn::connect(addr);
        let hello = map(&[("protocol", s("grpc")), ("version", int(1))]).to_bytes();
        bad.send(HELLO, 0, 0, &hello);
        let (code, message) = bad.goaway_then_eof();
        assert_eq!(code, 13, "{message}");
        assert!(message.contains("grpc"), "{message}");
        c.call(50, "add", vec![int(4), int(5)]);
        assert_eq!(c.response(50), int(9));

        // Closing our side ends the connection cleanly.
        c.stream.shutdown(Shutdown::Write).unwrap();
        c.eof();
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_a_goaway() {
    let t = start(Server::builder().allow_anonymous().max_frame_size(1024)).await;
    let addr = t.server.local_addr();
    let slow = start(
        Server::builder()
            .allow_anonymous()
            .handshake_timeout(Duration::from_millis(200)),
    )
    .await;
    let slow_addr = slow.server.local_addr();

    client(move || {
        let refused = |first_frame: Vec<u8>| {
            let mut c = Conn::connect(addr);
            c.send_raw(&first_frame);
            c.goaway_then_eof()
        };
        let hello = |entries: &[(&str, V)]| frame_bytes(HELLO, 0, 0, &map(entries).to_bytes());

        // Wrong protocol name.
        let (code, msg) = refused(hello(&[("protocol", s("http")), ("version", int(1))]));
        assert_eq!(code, 13, "{msg}");
        // Version 0.
        let (code, msg) = refused(hello(&[("protocol", s("stardust")), ("version", int(0))]));
        assert_eq!(code, 13, "{msg}");
        // Missing version.
        let (code, msg) = refused(hello(&[("protocol", s("stardust"))]));
        assert_eq!(code, 13, "{msg}");
        // Body is not a map.
        let (code, msg) = refused(frame_bytes(HELLO, 0, 0, &s("hello").to_bytes()));
        assert_eq!(code, 13, "{msg}");
        // The first frame is not a Hello.
        let (code, msg) = refused(frame_bytes(PING, 0, 1, &[]));
        assert_eq!(code, 13, "{msg}");
        let (code, msg) = refused(frame_bytes(
            REQUEST,
            0,
            1,
            &request_body("calc.Calculator", "add", 0, 0, &[], vec![int(1), int(2)]),
        ));
        assert_eq!(code, 13, "{msg}");
        // A Hello over the server's frame limit (only the header is sent).
        let mut header = frame_bytes(HELLO, 0, 0, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        let (code, msg) = refused(header);
        assert_eq!(code, 12, "FrameTooLarge: {msg}");

        // No Hello within the handshake timeout.
        let mut c = Conn::connect(slow_addr);
        let (code, msg) = c.goaway_then_eof();
        assert_eq!((code, msg.as_str()), (13, "no handshake received in time"));

        // Version negotiation and a forgiving Hello: a newer version, keys in another order,
        // an unknown key, no agent/max_frame/meta.
        let mut c = Conn::connect(addr);
        c.send_raw(&hello(&[
            ("version", int(7)),
            ("future_option", V::Bool(true)),
            ("protocol", s("stardust")),
        ]));
        let ack = c.recv_raw().expect("HelloAck");
        assert_eq!(ack.kind, HELLO_ACK, "{ack:?}");
        let ack = ack.value();
        assert_eq!(ack.get("version"), Some(&int(1)), "min(7, 1)");
        assert_eq!(
            ack.get("max_frame"),
            Some(&int(1024)),
            "the server's own limit"
        );
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        // Requests may go out right after the Hello without waiting (tolerated, not required),
        // and max_frame may be nil.
        let mut c = Conn::connect(addr);
        let mut bytes = hello(&[
            ("protocol", s("stardust")),
            ("version", int(1)),
            ("max_frame", V::Nil),
        ]);
        bytes.extend(frame_bytes(
            REQUEST,
            0,
            9,
            &request_body("calc.Calculator", "add", 0, 0, &[], vec![int(4), int(4)]),
        ));
        c.send_raw(&bytes);
        assert_eq!(c.recv().kind, HELLO_ACK);
        assert_eq!(c.response(9), int(8));
    })
    .await;
    drop(slow);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_the_connection() {
    let t = start(Server::builder().allow_anonymous().max_frame_size(1024)).await;
    let addr = t.server.local_addr();

    client(move || {
        // An unknown frame kind: GoAway(Protocol), then the server closes (§2).
        let mut c = Conn::handshake(addr);
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        c.send(42, 0, 0, &[]);
        let (code, msg) = c.goaway_then_eof();
        assert_eq!(code, 13, "{msg}");

        // Frames a client must never send.
        for kind in [HELLO, HELLO_ACK, RESPONSE, ERROR] {
            let mut c = Conn::handshake(addr);
            c.send(kind, 0, 1, &[0xc0]);
            let (code, msg) = c.goaway_then_eof();
            assert_eq!(code, 13, "kind {kind}: {msg}");
        }

        // A request over the server's limit (1024): it is answered with FrameTooLarge for its
        // id, then GoAway(FrameTooLarge) and close, since the stream cannot be resynchronised
        // (§11). Only the header is sent; the server decides on it alone.
        let mut c = Conn::handshake(addr);
        let body = request_body(
            "calc.Calculator",
            "add",
            0,
            0,
            &[],
            vec![V::Bin(vec![0; 900]), int(1)],
        );
        c.send(REQUEST, 0, 2, &body);
        assert_eq!(
            c.error(2).0,
            4,
            "a 950-byte request is fine (but not an i64)"
        );
        let mut header = frame_bytes(REQUEST, 0, 77, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        c.send_raw(&header);
        let (code, msg) = c.error(77);
        assert_eq!(code, 12, "{msg}");
        let (code, msg) = c.goaway_then_eof();
        assert_eq!(code, 12, "{msg}");

        // The same for a one-way request: no Error, only the GoAway.
        let mut c = Conn::handshake(addr);
        let mut header = frame_bytes(REQUEST, ONE_WAY, 0, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        c.send_raw(&header);
        assert_eq!(c.goaway_then_eof().0, 12);

        // A length under 10 is impossible: GoAway(Protocol).
        let mut c = Conn::handshake(addr);
        let mut header = frame_bytes(PING, 0, 0, &[]);
        header[..4].copy_from_slice(&3u32.to_be_bytes());
        c.send_raw(&header);
        assert_eq!(c.goaway_then_eof().0, 13);
    })
    .await;
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_respects_the_clients_frame_limit() {
    let t = start(Server::builder().allow_anonymous()).await;
    let addr = t.server.local_addr();

    client(move || {
        let (mut c, _) = Conn::handshake_with(addr, 1024);
        // A response over our limit is replaced by an Error for its id (§11)...
        c.call(1, "blob", vec![int(2000)]);
        let (code, msg) = c.error(1);
        assert_eq!(code, 12, "{msg}");
        assert!(msg.contains("1024"), "{msg}");
        // ...and the connection stays usable.
        c.call(2, "blob", vec![int(100)]);
        assert_eq!(c.response(2), V::Bin(vec![0xab; 100]), "serde_bytes is bin");
        c.call(3, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(3), int(3));
    })
    .await;
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_calls() {
    let TestServer {
        server,
        shared,
        events,
    } = start(Server::builder().allow_anonymous()).await;
    let addr = server.local_addr();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();

    let client = tokio::task::spawn_blocking(move || {
        let mut c = Conn::handshake(addr);
        c.call(10, "hold", vec![]);
        wait_event(&events, "hold started");
        go_tx.send(()).unwrap();

        // §9, §14.9: GoAway(ShuttingDown), byte for byte.
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("goaway_shutting_down"), "{f:?}");
        assert_eq!(f.error().0, 11);
        // A request sent anyway is refused with ShuttingDown and not run.
        c.call(11, "add", vec![int(1), int(2)]);
        let (code, msg) = c.error(11);
        assert_eq!(code, 11, "{msg}");
        // The call in flight completes and is answered; then the server closes.
        shared.release.notify_one();
        assert_eq!(c.response(10), s("held"));
        c.eof();
    });

    tokio::time::timeout(IO_TIMEOUT, go_rx)
        .await
        .expect("the client started its call in time")
        .expect("the client thread failed");
    let shutdown = tokio::spawn(server.shutdown());
    if let Err(e) = client.await {
        std::panic::resume_unwind(e.into_panic());
    }
    tokio::time::timeout(IO_TIMEOUT, shutdown)
        .await
        .expect("shutdown finished once the connection drained")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keepalive_pings_and_gives_up_on_silence() {
    let t = start(
        Server::builder()
            .allow_anonymous()
            .keepalive(Duration::from_millis(100), Duration::from_millis(1500)),
    )
    .await;
    let addr = t.server.local_addr();

    client(move || {
        let mut c = Conn::handshake(addr);
        // We stay silent: the server pings (nonces count from 1), and we answer (§7).
        let f = c.recv_raw().expect("a Ping");
        assert_eq!((f.kind, f.flags, f.id), (PING, 0, 1), "{f:?}");
        assert!(f.body.is_empty());
        c.send(PONG, 0, f.id, &[]);
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        // Now we stop answering: only pings arrive, then the server closes without a GoAway.
        for _ in 0..10_000 {
            match c.recv_raw() {
                Some(f) => assert_eq!(f.kind, PING, "{f:?}"),
                None => return,
            }
        }
        panic!("the server kept pinging a silent client");
    })
    .await;
    t.server.shutdown().await;
}
