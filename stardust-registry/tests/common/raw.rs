//! A registry client written with raw frames, as a client of another language (or an older
//! Rust client) would speak: its own `Hello`, its own socket, and reading only when the test
//! says so.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, HelloAck, RequestHead};
use stardust::Metadata;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::within;

pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
    /// Pushes read while waiting for a response.
    pushes: VecDeque<Push>,
    pub ack: HelloAck,
}

impl RawClient {
    /// Connects and sends a `Hello` with exactly the keys of the first protocol revision
    /// (`protocol`, `version`, `agent`, `meta`), plus `features` if given. `recv_buffer`
    /// shrinks the socket's receive buffer (a client that reads slowly fills up sooner).
    pub async fn connect(
        addr: SocketAddr,
        features: Option<&[&str]>,
        recv_buffer: Option<u32>,
    ) -> RawClient {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes).unwrap();
        }
        let mut stream = within("connect", socket.connect(addr)).await.unwrap();
        let mut body = Vec::new();
        let keys = 4 + u32::from(features.is_some());
        rmp::encode::write_map_len(&mut body, keys).unwrap();
        for (k, v) in [("protocol", "stardust"), ("agent", "raw-test/0")] {
            rmp::encode::write_str(&mut body, k).unwrap();
            rmp::encode::write_str(&mut body, v).unwrap();
        }
        rmp::encode::write_str(&mut body, "version").unwrap();
        rmp::encode::write_uint(&mut body, 1).unwrap();
        rmp::encode::write_str(&mut body, "meta").unwrap();
        rmp::encode::write_map_len(&mut body, 0).unwrap();
        if let Some(features) = features {
            rmp::encode::write_str(&mut body, "features").unwrap();
            rmp::encode::write_array_len(&mut body, features.len() as u32).unwrap();
            for f in features {
                rmp::encode::write_str(&mut body, f).unwrap();
            }
        }
        let mut hello = BytesMut::new();
        let start = frame::begin(&mut hello, Kind::Hello, 0, 0);
        hello.extend_from_slice(&body);
        frame::finish(&mut hello, start, u32::MAX).unwrap();
        stream.write_all(&hello).await.unwrap();
        let mut client = RawClient {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
            pushes: VecDeque::new(),
            ack: HelloAck {
                version: 0,
                agent: String::new(),
                max_frame: 0,
                features: Vec::new(),
                stream_window: None,
            },
        };
        let (kind, _, body) = client.read_frame().await;
        assert_eq!(
            kind,
            Kind::HelloAck as u8,
            "the registry answers with HelloAck"
        );
        client.ack = rmp_serde::from_slice(&body).expect("a HelloAck");
        client
    }

    /// Reads the next frame: `(kind, id, body)`.
    async fn read_frame(&mut self) -> (u8, u64, Vec<u8>) {
        within("a frame from the registry", async {
            loop {
                if let Some(h) = frame::parse_header(&self.buf, frame::DEFAULT_MAX_FRAME).unwrap() {
                    let len = h.frame_len();
                    if self.buf.len() >= len {
                        let bytes = self.buf.split_to(len);
                        return (h.kind, h.id, bytes[frame::HEADER_LEN..].to_vec());
                    }
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the registry closed the connection");
            }
        })
        .await
    }

    /// Calls `stardust.Registry.method` with `args` (a tuple) and decodes the response; pushes
    /// that arrive first are kept for [`next_push`](Self::next_push).
    pub async fn call<A: Serialize, R: DeserializeOwned>(&mut self, method: &str, args: &A) -> R {
        let id = self.next_id;
        self.next_id += 1;
        let meta = Metadata::new();
        let head = RequestHead {
            id,
            flags: 0,
            service: "stardust.Registry",
            method,
            timeout_us: 0,
            trace_id: 0,
            meta: &meta,
        };
        let mut buf = BytesMut::new();
        message::put_request(&mut buf, &head, args, frame::DEFAULT_MAX_FRAME).unwrap();
        self.stream.write_all(&buf).await.unwrap();
        loop {
            let (kind, got, body) = self.read_frame().await;
            match Kind::from_u8(kind) {
                Some(Kind::Response) if got == id => {
                    return rmp_serde::from_slice(&body).expect("a response of the expected type");
                }
                Some(Kind::Error) if got == id => {
                    panic!("{method} failed: {}", message::parse_error(&body))
                }
                Some(Kind::Notify) => self.pushes.push_back(notification(&body)),
                _ => {}
            }
        }
    }

    /// The next push (kept from earlier reads, or read now).
    pub async fn next_push(&mut self) -> Push {
        if let Some(n) = self.pushes.pop_front() {
            return n;
        }
        loop {
            let (kind, _, body) = self.read_frame().await;
            if Kind::from_u8(kind) == Some(Kind::Notify) {
                return notification(&body);
            }
        }
    }
}

/// A `Notify` frame's topic and payload.
pub struct Push {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Push {
    pub fn decode<T: DeserializeOwned>(&self) -> T {
        rmp_serde::from_slice(&self.payload).expect("a push of the expected type")
    }
}

fn notification(body: &[u8]) -> Push {
    let (topic, payload) = message::parse_notify(body).expect("a well-formed Notify");
    Push {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
    }
}
