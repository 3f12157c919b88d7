//! The sidecar agent's local side, over loopback with an embedded registry: it shrugs off bad
//! frames from a local client, answers and bounds endless unknown service names, and serves
//! nothing that is not local. Counted, never timed; every wait is bounded.

mod common;
#[path = "common/shard_service.rs"]
mod shard_service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::within;
use shard_service::*;
use stardust::__wire::frame::{self, Header, Kind};
use stardust::__wire::message::{self, Hello, RequestHead};
use stardust::agent::Agent;
use stardust::{ErrorKind, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

// ------------------------------------------------------------------------ raw local clients

fn hello_frame() -> BytesMut {
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "raw-test".into(),
        max_frame: None,
        meta: Default::default(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    out
}

fn request_frame(id: u64, service: &str, method: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let meta = Metadata::new();
    let head = RequestHead {
        id,
        flags: 0,
        service,
        method,
        timeout_us: 10_000_000,
        trace_id: 7,
        meta: &meta,
    };
    // No arguments: an empty array.
    message::put_request(&mut out, &head, &[0u8; 0], u32::MAX).unwrap();
    out
}

/// A raw connection that reads one frame at a time.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn handshaken(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(&hello_frame()).await;
        let (h, _) = raw.frame().await.expect("HelloAck");
        assert_eq!(h.kind, Kind::HelloAck as u8);
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the agent closed the connection.
    async fn frame(&mut self) -> Option<(Header, Vec<u8>)> {
        within("a frame from the agent", async {
            loop {
                if let Ok(Some(h)) = frame::parse_header(&self.buf, u32::MAX)
                    && self.buf.len() >= h.frame_len()
                {
                    let f = self.buf.split_to(h.frame_len());
                    return Some((h, f[frame::HEADER_LEN..].to_vec()));
                }
                let mut chunk = [0u8; 4096];
                match self.sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// Reads until the GoAway; returns its error.
    async fn goaway(&mut self) -> stardust::Error {
        while let Some((h, body)) = self.frame().await {
            if h.kind == Kind::GoAway as u8 {
                return message::parse_error(&body);
            }
        }
        panic!("the connection closed without a GoAway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_a_local_client_get_a_clear_error_and_spare_the_others() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let _nodes = [Node::start(&node, 0, &tx).await];
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0]).await;

    // A well-behaved consumer calls throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 2, &stop, &done);

    // A malformed request body: that request is answered with an error, the connection lives on
    // and its next, valid request goes through.
    let mut raw = Raw::handshaken(agent.local_addr()).await;
    let mut bad = BytesMut::new();
    let start = frame::begin(&mut bad, Kind::Request, 0, 41);
    bad.extend_from_slice(&[0x96, 0xc1, 0xc1]);
    frame::finish(&mut bad, start, u32::MAX).unwrap();
    raw.send(&bad).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 41));
    assert_eq!(message::parse_error(&body).kind(), ErrorKind::Protocol);
    raw.send(&request_frame(42, "test.Shard", "whoami")).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Response as u8, 42));
    assert_eq!(rmp_serde::from_slice::<u32>(&body).unwrap(), 0);

    // A frame whose length field is impossible: the stream cannot be trusted any more, so the
    // agent says why and closes that connection.
    raw.send(&[0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1]).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("frame length 3"), "{err}");
    assert!(raw.frame().await.is_none());

    // A request before any handshake.
    let mut raw = Raw::connect(agent.local_addr()).await;
    raw.send(&request_frame(1, "test.Shard", "whoami")).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("Hello"), "{err}");

    // Plain garbage.
    let mut raw = Raw::connect(agent.local_addr()).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n").await;
    let err = raw.goaway().await;
    assert!(
        matches!(err.kind(), ErrorKind::FrameTooLarge | ErrorKind::Protocol),
        "{err}"
    );

    // The consumer never noticed.
    let before = done.load(Ordering::SeqCst);
    wait_until("more calls after the bad clients", || {
        done.load(Ordering::SeqCst) >= before + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (by_provider, failed) = total(callers).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(by_provider[&0] >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_unknown_service_names_are_answered_and_bounded() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let _nodes = [Node::start(&node, 0, &tx).await];
    let agent = start_agent(&node, 8).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0]).await;

    let mut raw = Raw::handshaken(agent.local_addr()).await;
    for i in 0..60u64 {
        let service = format!("bogus.Service{i}");
        raw.send(&request_frame(i + 1, &service, "anything")).await;
        let (h, body) = raw.frame().await.unwrap();
        assert_eq!((h.kind, h.id), (Kind::Error as u8, i + 1));
        let err = message::parse_error(&body);
        assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
        assert!(err.message().contains(&format!("`{service}`")), "{err}");
        assert!(
            agent.services() <= 8,
            "{} services tracked",
            agent.services()
        );
    }
    // A name no registry would take is refused without a lookup.
    raw.send(&request_frame(100, &"x".repeat(5000), "m")).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 100));
    assert_eq!(message::parse_error(&body).kind(), ErrorKind::NoProvider);

    // The real service was evicted long ago; it is looked up again and still works.
    assert_eq!(within("a real call", client.whoami()).await.unwrap(), 0);
    assert!(agent.services() <= 8);
    // The registry forgot the evicted ones too: the agent unsubscribes as it evicts.
    within(
        "the registry's subscriptions to follow the agent's table",
        async {
            while node.subscriptions() > 8 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_is_served() {
    // Listening anywhere else is refused before anything else happens.
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let err = Agent::builder()
            .registry("127.0.0.1:1")
            .app(AGENT_APP.0, AGENT_APP.1)
            .listen(addr)
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("loopback"), "{err}");
    }

    // A peer with a non-loopback address is turned away. Such a peer exists only if this host
    // has a non-loopback address to connect from (the check itself is unit-tested in the
    // runtime).
    let node = registry().await;
    let agent = start_agent(&node, 16).await;
    let test = "only_loopback_is_served (a non-loopback peer)";
    let Some(outside) = non_loopback_ip() else {
        common::external::missing(test, "this host has no non-loopback address");
        return;
    };
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Err(e) = sock.bind(SocketAddr::new(outside, 0)) {
        common::external::missing(test, &format!("cannot bind {outside}: {e}"));
        return;
    }
    let sock = match sock.connect(agent.local_addr()).await {
        Ok(sock) => sock,
        Err(e) => {
            let why = format!("cannot reach loopback from {outside}: {e}");
            common::external::missing(test, &why);
            return;
        }
    };
    let mut raw = Raw {
        sock,
        buf: BytesMut::new(),
    };
    raw.send(&hello_frame()).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("not a loopback address"), "{err}");
    // Local applications are still welcome.
    let local = Raw::handshaken(agent.local_addr()).await;
    drop(local);
}

/// This host's address on its default route, if it has one (no packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    udp.connect("192.0.2.1:9").ok()?;
    let ip = udp.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
