//! Raw frames, built byte by byte so a test can send what no well-behaved client would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A frame with `body` (the length field is filled in).
pub fn frame(kind: Kind, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u32(frame::LENGTH_COVERED + body.len() as u32);
    out.put_u8(kind as u8);
    out.put_u8(0);
    out.put_u64(id);
    out.extend_from_slice(body);
    out.to_vec()
}

/// Just a header, claiming a body of `body_len` bytes.
pub fn header(kind: Kind, id: u64, body_len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(frame::LENGTH_COVERED.saturating_add(body_len)).to_be_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// `n` distinct metadata pairs `"0" → ""`, `"1" → ""`, ... encoded as a map body element.
pub fn meta_map(extra: &[(&str, &str)], n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, (n + extra.len()) as u32).unwrap();
    for (k, v) in extra {
        rmp::encode::write_str(&mut out, k).unwrap();
        rmp::encode::write_str(&mut out, v).unwrap();
    }
    for i in 0..n {
        rmp::encode::write_str(&mut out, &i.to_string()).unwrap();
        rmp::encode::write_str(&mut out, "").unwrap();
    }
    out
}

/// A `Hello` body (map form) with `meta` already encoded, and optionally one more key whose
/// value is `extra` (raw MessagePack).
pub fn hello_body(meta: &[u8], extra: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_map_len(&mut out, 3 + u32::from(extra.is_some())).unwrap();
    rmp::encode::write_str(&mut out, "protocol").unwrap();
    rmp::encode::write_str(&mut out, "stardust").unwrap();
    rmp::encode::write_str(&mut out, "version").unwrap();
    rmp::encode::write_uint(&mut out, 1).unwrap();
    rmp::encode::write_str(&mut out, "meta").unwrap();
    out.extend_from_slice(meta);
    if let Some(extra) = extra {
        rmp::encode::write_str(&mut out, "future").unwrap();
        out.extend_from_slice(extra);
    }
    out
}

/// A `Request` body for `service`/`method` with raw `meta` and `args`.
pub fn request_body(service: &str, method: &str, meta: &[u8], args: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_array_len(&mut out, 6).unwrap();
    rmp::encode::write_str(&mut out, service).unwrap();
    rmp::encode::write_str(&mut out, method).unwrap();
    rmp::encode::write_uint(&mut out, 0).unwrap();
    rmp::encode::write_uint(&mut out, 0).unwrap();
    out.extend_from_slice(meta);
    out.extend_from_slice(args);
    out
}

/// An encoded argument array of two integers.
pub fn add_args(a: i64, b: i64) -> Vec<u8> {
    rmp_serde::to_vec(&(a, b)).unwrap()
}

/// One frame as received: kind, id and body.
#[derive(Debug)]
pub struct Received {
    pub kind: u8,
    pub id: u64,
    pub body: Vec<u8>,
}

impl Received {
    /// The error code and message of an `Error` or `GoAway`.
    pub fn error(&self) -> (stardust::ErrorKind, String) {
        assert!(
            self.kind == Kind::Error as u8 || self.kind == Kind::GoAway as u8,
            "expected an Error or GoAway, got kind {}",
            self.kind
        );
        let e = message::parse_error(&self.body);
        (e.kind(), e.message().to_owned())
    }
}

/// A raw connection and what it has read so far.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Sends `bytes`; a write the server cut short (it refused and closed) is not an error.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes).await;
    }

    /// The next frame, or `None` once the server closed the connection. Panics after `bound`.
    pub async fn next(&mut self, bound: Duration) -> Option<Received> {
        let read = async {
            loop {
                if let Ok(Some(h)) = frame::parse_header(&self.buf, u32::MAX)
                    && self.buf.len() >= h.frame_len()
                {
                    let f = self.buf.split_to(h.frame_len());
                    return Some(Received {
                        kind: h.kind,
                        id: h.id,
                        body: f[frame::HEADER_LEN..].to_vec(),
                    });
                }
                let mut chunk = [0u8; 4096];
                match self.sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(bound, read)
            .await
            .unwrap_or_else(|_| panic!("no frame and no close within {bound:?}"))
    }

    /// Reads until the server closes, returning the `GoAway` it sent first.
    pub async fn goaway(&mut self, bound: Duration) -> Received {
        let mut goaway = None;
        while let Some(f) = self.next(bound).await {
            if f.kind == Kind::GoAway as u8 && goaway.is_none() {
                goaway = Some(f);
            }
        }
        goaway.expect("the server closed without a GoAway")
    }
}

/// Bytes the server has not read yet from `client`'s connection: the receive queue of the
/// server's end of it. The server runs in this process, so its socket is one of our own file
/// descriptors: the one whose local address is `server` and whose peer is `client`.
fn unread_by_server(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()? {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            continue;
        };
        if address(fd, libc::getsockname) == Some(server)
            && address(fd, libc::getpeername) == Some(client)
        {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) } == 0 {
                return Some(unread as u64);
            }
        }
    }
    None
}

type NameFn =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The IPv4 address `name` (getsockname or getpeername) reports for `fd`, if it is one.
fn address(fd: i32, name: NameFn) -> Option<SocketAddr> {
    // SAFETY: a zeroed sockaddr_in is valid, and its size is passed along.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let ok = unsafe { name(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) } == 0;
    if !ok || i32::from(sa.sin_family) != libc::AF_INET {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Some(SocketAddr::from((ip, u16::from_be(sa.sin_port))))
}

impl Raw {
    /// Waits (bounded) until the server has read everything sent on this connection so far.
    pub async fn wait_read_by_server(&self, server: SocketAddr) {
        let client = self.sock.local_addr().unwrap();
        let deadline = tokio::time::Instant::now() + crate::common::BOUND;
        loop {
            match unread_by_server(server, client) {
                Some(0) => return,
                None => panic!("no server socket for {client} in /proc/net/tcp"),
                Some(n) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the server left {n} bytes unread"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
