//! The client of `tests/foreign_client.rs`, written from `docs/PROTOCOL.md` alone: frames
//! (§2), MessagePack values read and written with the low-level `rmp` functions, and a blocking
//! connection over `std::net::TcpStream`. Nothing here comes from `stardust`.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// Frame kinds (§2).
pub const HELLO: u8 = 1;
pub const HELLO_ACK: u8 = 2;
pub const REQUEST: u8 = 3;
pub const RESPONSE: u8 = 4;
pub const ERROR: u8 = 5;
pub const CANCEL: u8 = 6;
pub const NOTIFY: u8 = 7;
pub const PING: u8 = 8;
pub const PONG: u8 = 9;
pub const GOAWAY: u8 = 10;
// Request flags (§2).
pub const ONE_WAY: u8 = 0x01;
pub const IDEMPOTENT: u8 = 0x02;

/// A MessagePack value, enough of the data model for the tests.
#[derive(Debug, Clone, PartialEq)]
pub enum V {
    Nil,
    Bool(bool),
    Int(i128),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
}

pub fn s(x: &str) -> V {
    V::Str(x.to_owned())
}

pub fn int(x: i128) -> V {
    V::Int(x)
}

pub fn map(entries: &[(&str, V)]) -> V {
    V::Map(entries.iter().map(|(k, v)| (s(k), v.clone())).collect())
}

impl V {
    pub fn encode(&self, out: &mut Vec<u8>) {
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

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one complete value; trailing bytes are an error.
    pub fn decode_all(bytes: &[u8]) -> V {
        let mut rd = bytes;
        let v = V::decode(&mut rd);
        assert!(rd.is_empty(), "{} trailing bytes after {v:?}", rd.len());
        v
    }

    pub fn decode(rd: &mut &[u8]) -> V {
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
    pub fn get(&self, key: &str) -> Option<&V> {
        match self {
            V::Map(entries) => entries
                .iter()
                .find(|(k, _)| *k == V::Str(key.to_owned()))
                .map(|(_, v)| v),
            other => panic!("expected a map, got {other:?}"),
        }
    }

    pub fn as_int(&self) -> i128 {
        match self {
            V::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            V::Str(x) => x,
            other => panic!("expected a string, got {other:?}"),
        }
    }
}

/// One frame as received.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub id: u64,
    pub body: Vec<u8>,
    /// The whole frame, header included, as it came off the wire.
    pub raw: Vec<u8>,
}

impl Frame {
    pub fn value(&self) -> V {
        V::decode_all(&self.body)
    }

    /// `(code, message)` of an `Error` or `GoAway` body (§4, §9).
    pub fn error(&self) -> (u16, String) {
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
pub fn request_body(
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

pub fn frame_bytes(kind: u8, flags: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + body.len());
    out.extend_from_slice(&(10 + body.len() as u32).to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The `Hello` body the tests normally send (§3).
pub fn hello_body(max_frame: u32) -> Vec<u8> {
    map(&[
        ("protocol", s("stardust")),
        ("version", int(1)),
        ("agent", s("foreign-client/1.0")),
        ("max_frame", int(max_frame.into())),
        ("meta", V::Map(vec![])),
    ])
    .to_bytes()
}

pub struct Conn {
    pub stream: TcpStream,
    /// Server pings answered by `recv`.
    pub pings_answered: usize,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
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
    pub fn handshake_with(addr: SocketAddr, max_frame: u32) -> (Conn, V) {
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

    pub fn handshake(addr: SocketAddr) -> Conn {
        Conn::handshake_with(addr, 16 * 1024 * 1024).0
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, kind: u8, flags: u8, id: u64, body: &[u8]) {
        self.send_raw(&frame_bytes(kind, flags, id, body));
    }

    /// Sends a request with a 10 s budget and no metadata.
    pub fn call(&mut self, id: u64, method: &str, args: Vec<V>) {
        self.call_flags(id, 0, "calc.Calculator", method, args);
    }

    pub fn call_flags(&mut self, id: u64, flags: u8, service: &str, method: &str, args: Vec<V>) {
        let body = request_body(service, method, 10_000_000, 0x5eed, &[], args);
        self.send(REQUEST, flags, id, &body);
    }

    /// The next frame, or `None` on a clean end of stream between frames.
    pub fn recv_raw(&mut self) -> Option<Frame> {
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
    pub fn recv(&mut self) -> Frame {
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
    pub fn response(&mut self, id: u64) -> V {
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
    pub fn error(&mut self, id: u64) -> (u16, String) {
        let f = self.recv();
        assert_eq!((f.kind, f.id), (ERROR, id), "expected Error {id}: {f:?}");
        f.error()
    }

    /// Expects a `GoAway` and then the end of the stream.
    pub fn goaway_then_eof(&mut self) -> (u16, String) {
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

    pub fn eof(&mut self) {
        if let Some(f) = self.recv_raw() {
            panic!("expected the end of the stream, got {f:?}");
        }
    }
}

/// The bytes of the example `name` of PROTOCOL.md §14 (`<!-- frame: name -->`).
pub fn doc_frame(name: &str) -> Vec<u8> {
    let doc = include_str!("../../docs/PROTOCOL.md");
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
