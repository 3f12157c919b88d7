//! Hardening against greedy, slow and silent peers, over loopback: calls over the in-flight cap,
//! a client that never reads its responses, handshake floods and dribbles, idle and half-open
//! connections. Every wait is bounded; durations are configured short so the file runs quickly.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello, HelloAck, RequestHead};
use stardust::{Error, ErrorKind, Metadata, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::RwLock;
use tokio::time::Instant;

/// The test that measures this process's memory runs alone (write lock); the others share.
static MEASURING: RwLock<()> = RwLock::const_new(());

fn hello_frame() -> BytesMut {
    hello_frame_with(Metadata::new())
}

fn hello_frame_with(meta: Metadata) -> BytesMut {
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "hardening-test".into(),
        max_frame: None,
        meta,
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    out
}

/// Reads frames until the peer closes; returns (kind, body) of each.
async fn read_until_closed(sock: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut buf = BytesMut::new();
    within("the server to close the connection", async {
        loop {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    while let Ok(Some(h)) = frame::parse_header(&buf, u32::MAX) {
        if buf.len() < h.frame_len() {
            break;
        }
        frames.push((h.kind, buf[frame::HEADER_LEN..h.frame_len()].to_vec()));
        let _ = buf.split_to(h.frame_len());
    }
    frames
}

fn goaway(frames: &[(u8, Vec<u8>)]) -> Error {
    let (_, body) = frames
        .iter()
        .find(|f| f.0 == Kind::GoAway as u8)
        .unwrap_or_else(|| panic!("expected a GoAway frame, got {frames:?}"));
    message::parse_error(body)
}

/// Waits (bounded) until the server counts `n` connections, handshakes in progress included.
async fn connections_become(server: &Server, n: usize) {
    within(&format!("{n} connections"), async {
        while server.connection_count() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_calls_over_the_cap_are_refused_while_another_connection_is_served() {
    let _shared = MEASURING.read().await;
    const CAP: usize = 16;
    const EXCESS: u64 = 3000;
    let builder = Server::builder()
        .allow_anonymous()
        .max_in_flight_per_connection(CAP);
    let (server, mut control) = start_server_with(builder).await;
    let greedy = CalcClient::connect(server.local_addr()).await.unwrap();
    let polite = CalcClient::connect(server.local_addr()).await.unwrap();

    let held: Vec<_> = (0..CAP as u64)
        .map(|key| {
            let c = greedy.clone();
            tokio::spawn(async move { c.gate(key).await })
        })
        .collect();
    for _ in 0..CAP {
        assert!(matches!(control.next().await, Event::Entered(_)));
    }
    within("every held call to count as running", async {
        while server.in_flight() != CAP {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The flood and the polite client's calls run at the same time.
    let excess: Vec<_> = (0..EXCESS)
        .map(|i| {
            let c = greedy.clone();
            tokio::spawn(async move { c.gate(10_000 + i).await })
        })
        .collect();
    let polite_calls = tokio::spawn(async move {
        for i in 0..300 {
            assert_eq!(polite.add(i, 1).await.unwrap(), i + 1);
        }
    });
    let mut refused = 0;
    for call in excess {
        let err = within("an over-cap call", call).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
        refused += 1;
    }
    assert_eq!(refused, EXCESS);
    within("the polite client's calls", polite_calls)
        .await
        .unwrap();

    for key in 0..CAP as u64 {
        control.release(key);
    }
    for (key, call) in held.into_iter().enumerate() {
        assert_eq!(
            within("a held call", call).await.unwrap().unwrap(),
            key as u64
        );
    }
    while let Ok(event) = control.events.try_recv() {
        assert!(
            !matches!(event, Event::Entered(k) if k >= 10_000),
            "a refused call reached its handler: {event:?}"
        );
    }
}

/// Resident set size of this process in bytes (Linux).
#[cfg(target_os = "linux")]
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_memory_stays_bounded() {
    let _alone = MEASURING.write().await;
    const BLOB: u32 = 1024 * 1024;
    const REQUESTS: u64 = 1200; // 1.2 GiB of responses asked for
    const STALL: Duration = Duration::from_millis(300);
    let builder = Server::builder()
        .allow_anonymous()
        .max_write_buffer(2 * 1024 * 1024)
        .write_stall_timeout(STALL);
    let (server, _control) = start_server_with(builder).await;
    let polite = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(polite.add(1, 1).await.unwrap(), 2);
    let before = rss_bytes();

    // A small receive window, and nothing is ever read from it.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let sock = socket.connect(server.local_addr()).await.unwrap();
    let (_rd, mut wr) = sock.into_split();
    let mut out = hello_frame();
    let meta = Metadata::new();
    for id in 1..=REQUESTS {
        let head = RequestHead {
            id,
            flags: 0,
            service: "test.Calc",
            method: "blob",
            timeout_us: 0,
            trace_id: 0,
            meta: &meta,
        };
        message::put_request(&mut out, &head, &(BLOB,), u32::MAX).unwrap();
    }
    // The server may stop reading before it has all of them: write from a task of its own.
    let sender = tokio::spawn(async move {
        let _ = wr.write_all(&out).await;
        wr
    });
    connections_become(&server, 2).await;

    // The disconnection is the event waited for, not timed: nothing else would end this
    // connection within the bound (the default stall timeout and keepalive are far longer).
    let mut peak = before;
    within("the server to drop the client that does not read", async {
        while server.connection_count() != 1 {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    peak = peak.max(rss_bytes());
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * 1024 * 1024,
        "RSS grew by {} MiB while a client asked for {} MiB it never read",
        grown >> 20,
        (u64::from(BLOB) * REQUESTS) >> 20
    );
    sender.abort();

    // Everyone else is served as before.
    assert_eq!(polite.add(20, 22).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_cap_are_turned_away_and_established_connections_are_not_counted() {
    let _shared = MEASURING.read().await;
    const PENDING: usize = 4;
    let builder = Server::builder()
        .allow_anonymous()
        .max_pending_handshakes(PENDING);
    let (server, _control) = start_server_with(builder).await;
    let addr = server.local_addr();
    // An established connection is not a handshake in progress.
    let good = CalcClient::connect(addr).await.unwrap();
    connections_become(&server, 1).await;

    // Connections that never send their Hello fill every handshake slot...
    let mut silent = Vec::new();
    for _ in 0..PENDING {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    connections_become(&server, 1 + PENDING).await;

    // ...so the next one is turned away at once, with the reason.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let err = goaway(&read_until_closed(&mut extra).await);
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    assert!(err.message().contains("handshake"), "{err}");
    // A real client too, while they last.
    let err = CalcClient::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    // The established connection keeps working.
    assert_eq!(good.add(2, 3).await.unwrap(), 5);

    // Once the silent ones are gone, clients get in again.
    drop(silent);
    connections_become(&server, 1).await;
    let late = CalcClient::connect(addr).await.unwrap();
    assert_eq!(late.add(4, 4).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_dribbled_slower_than_the_handshake_timeout_is_cut_off() {
    let _shared = MEASURING.read().await;
    const TIMEOUT: Duration = Duration::from_millis(400);
    let builder = Server::builder()
        .allow_anonymous()
        .handshake_timeout(TIMEOUT);
    let (server, _control) = start_server_with(builder).await;
    let good = CalcClient::connect(server.local_addr()).await.unwrap();

    let started = Instant::now();
    let sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    // One byte every 40 ms: every byte arrives well within any per-read timeout, but the whole
    // Hello (padded with metadata to over 600 bytes) would take half a minute. The dribbler
    // reports how many bytes it got out before the server cut it off.
    let mut meta = Metadata::new();
    meta.insert("padding", "p".repeat(600));
    let hello = hello_frame_with(meta);
    let hello_len = hello.len();
    let dribbler = tokio::spawn(async move {
        for (sent, b) in hello.iter().enumerate() {
            if wr.write_all(&[*b]).await.is_err() {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        hello.len()
    });
    let mut buf = Vec::new();
    within("the server to cut the dribbling client off", async {
        let mut chunk = [0u8; 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    let h = frame::parse_header(&buf, u32::MAX).unwrap().unwrap();
    assert_eq!(h.kind, Kind::GoAway as u8);
    let err = message::parse_error(&buf[frame::HEADER_LEN..h.frame_len()]);
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("no handshake"), "{err}");
    // Not before the timeout (a lower bound holds however loaded the machine), and before the
    // Hello was complete: counted in bytes, not timed.
    assert!(
        took >= TIMEOUT,
        "cut off after {took:?}, before {TIMEOUT:?}"
    );
    let sent = within("the dribbler to notice", dribbler).await.unwrap();
    assert!(
        sent < hello_len,
        "cut off after {sent} of the Hello's {hello_len} bytes"
    );
    assert_eq!(good.add(1, 2).await.unwrap(), 3);
}

/// Opens a connection, completes its handshake, then stays silent until the server closes it as
/// idle (its `GoAway`).
async fn closed_as_idle(addr: SocketAddr) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(&hello_frame()).await.unwrap();
    let mut buf = BytesMut::new();
    let err = within("an idle connection to be closed", async {
        loop {
            while let Some(h) = frame::parse_header(&buf, u32::MAX).unwrap()
                && buf.len() >= h.frame_len()
            {
                let f = buf.split_to(h.frame_len());
                if h.kind == Kind::GoAway as u8 {
                    return message::parse_error(&f[frame::HEADER_LEN..]);
                }
            }
            assert!(
                sock.read_buf(&mut buf).await.unwrap() > 0,
                "closed unannounced"
            );
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::ShuttingDown, "{err}");
    assert!(err.message().contains("idle"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_the_client_reconnects_by_itself() {
    let _shared = MEASURING.read().await;
    const IDLE: Duration = Duration::from_millis(300);
    let builder = Server::builder().allow_anonymous().idle_timeout(Some(IDLE));
    let (server, mut control) = start_server_with(builder).await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    let first = calc.context().await.unwrap().peer;

    // Nothing happens on it: the server closes it (the client, told, closes its side).
    connections_become(&server, 0).await;
    // The next call opens a new connection without the caller noticing.
    let second = calc.context().await.unwrap().peer;
    assert_ne!(first, second, "the call went over a new connection");

    // Not idle: a call running longer than the timeout, and a subscriber (which may wait for
    // nothing but notifications).
    let busy = calc.clone();
    let held = tokio::spawn(async move { busy.gate(1).await });
    control.expect(Event::Entered(1)).await;
    let running = calc.context().await.unwrap().peer;
    let subscriber = stardust::Client::connect(server.local_addr())
        .await
        .unwrap();
    let mut notifications = subscriber.notifications();
    let subscriber = CalcClient::new(subscriber);
    subscriber.subscribe("news".into()).await.unwrap();
    let subscribed = subscriber.context().await.unwrap().peer;
    within("the welcome notification", notifications.recv())
        .await
        .unwrap();
    // Idle periods pass, shown by events rather than a sleep: two connections opened after the
    // busy ones last had traffic, one after the other, are each closed as idle.
    for _ in 0..2 {
        closed_as_idle(server.local_addr()).await;
    }
    // Still the same connections: one the server had closed would have been replaced.
    assert_eq!(
        calc.context().await.unwrap().peer,
        running,
        "a call runs on it"
    );
    assert_eq!(
        subscriber.context().await.unwrap().peer,
        subscribed,
        "it has a subscriber"
    );
    control.release(1);
    assert_eq!(within("the held call", held).await.unwrap().unwrap(), 1);

    // Once the call is done its connection is idle again; the subscriber's is not.
    connections_become(&server, 1).await;
    let notifier = control.notifiers.lock()[0].clone();
    notifier.notify("news", "still here").unwrap();
    let n = within("a later notification", notifications.recv())
        .await
        .unwrap();
    assert_eq!(n.decode::<String>().unwrap(), "still here");
}

/// A provider that drains the connection just as a call arrives: it answers the first request
/// with `GoAway(ShuttingDown)` and refuses it unrun, as a server closing an idle connection does
/// with a request that crossed its `GoAway`. The next connection serves `add`.
async fn draining_provider() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn handshake(sock: &mut TcpStream, buf: &mut BytesMut) {
        next_frame(sock, buf).await;
        let mut out = BytesMut::new();
        let ack = HelloAck {
            features: Vec::new(),
            version: 1,
            agent: "draining".into(),
            max_frame: 1 << 20,
            stream_window: None,
        };
        message::put_serde(&mut out, Kind::HelloAck, &ack).unwrap();
        sock.write_all(&out).await.unwrap();
    }
    /// The next frame's header and body; `None` at the end of the stream.
    async fn next_frame(sock: &mut TcpStream, buf: &mut BytesMut) -> Option<(u8, u64, Vec<u8>)> {
        loop {
            if let Some(h) = frame::parse_header(buf, u32::MAX).unwrap()
                && buf.len() >= h.frame_len()
            {
                let f = buf.split_to(h.frame_len());
                return Some((h.kind, h.id, f[frame::HEADER_LEN..].to_vec()));
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        handshake(&mut sock, &mut buf).await;
        let (kind, id, _) = next_frame(&mut sock, &mut buf).await.unwrap();
        assert_eq!(kind, Kind::Request as u8);
        let mut out = BytesMut::new();
        let draining = Error::new(ErrorKind::ShuttingDown, "idle");
        message::put_error(&mut out, Kind::GoAway, 0, &draining);
        message::put_error(&mut out, Kind::Error, id, &draining);
        sock.write_all(&out).await.unwrap();
        // The client closes the drained connection by itself.
        assert!(
            next_frame(&mut sock, &mut buf).await.is_none(),
            "nothing more is sent on a draining connection"
        );

        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        handshake(&mut sock, &mut buf).await;
        let (_, id, body) = next_frame(&mut sock, &mut buf).await.unwrap();
        let req = message::parse_request(&body).unwrap();
        assert_eq!(req.method, "add");
        let mut out = BytesMut::new();
        let start = frame::begin(&mut out, Kind::Response, 0, id);
        rmp::encode::write_sint(&mut (&mut out).writer(), 3).unwrap();
        frame::finish(&mut out, start, u32::MAX).unwrap();
        sock.write_all(&out).await.unwrap();
        let _ = next_frame(&mut sock, &mut buf).await;
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_by_a_draining_connection_goes_to_a_new_one() {
    let _shared = MEASURING.read().await;
    let (addr, provider) = draining_provider().await;
    let calc = CalcClient::connect(addr).await.unwrap();
    assert_eq!(within("the call", calc.add(1, 2)).await.unwrap(), 3);
    drop(calc);
    within("the provider's checks", provider).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_closed_by_keepalive_and_frees_its_slot() {
    let _shared = MEASURING.read().await;
    let builder = Server::builder()
        .allow_anonymous()
        .max_connections(1)
        // The cap is checked before the timeout: 3 s leaves that check (a few milliseconds)
        // a wide margin on a loaded machine.
        .keepalive(Duration::from_millis(100), Duration::from_secs(3));
    let (server, _control) = start_server_with(builder).await;
    // Completes the handshake, then neither reads nor writes: the peer is gone as far as the
    // server can tell.
    let mut vanished = TcpStream::connect(server.local_addr()).await.unwrap();
    vanished.write_all(&hello_frame()).await.unwrap();
    connections_become(&server, 1).await;
    // The connection cap holds while it lingers...
    let err = CalcClient::connect(server.local_addr()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded, "{err}");
    // ...until keepalive gives up on it (it never answers a ping).
    connections_become(&server, 0).await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
    drop(vanished);
}

/// Accepts a connection, answers the handshake, then never reads again.
async fn deaf_provider() -> (SocketAddr, tokio::task::JoinHandle<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        loop {
            let n = sock.read(&mut buf[got..]).await.unwrap();
            assert!(n > 0);
            got += n;
            if let Some(h) = frame::parse_header(&buf[..got], u32::MAX).unwrap()
                && got >= h.frame_len()
            {
                break;
            }
        }
        let mut out = BytesMut::new();
        let ack = HelloAck {
            features: Vec::new(),
            version: 1,
            agent: "deaf".into(),
            max_frame: 64 << 20,
            stream_window: None,
        };
        message::put_serde(&mut out, Kind::HelloAck, &ack).unwrap();
        sock.write_all(&out).await.unwrap();
        sock
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gives_up_on_a_provider_that_stops_reading() {
    let _shared = MEASURING.read().await;
    let (addr, provider) = deaf_provider().await;
    let client = stardust::Client::builder()
        .no_timeout()
        // Keepalive alone would take a minute.
        .keepalive(Duration::from_secs(30), Duration::from_secs(60))
        .write_stall_timeout(Duration::from_millis(300))
        .connect(addr)
        .await
        .unwrap();
    let _sock = provider.await.unwrap();
    let calc = CalcClient::new(client);
    // Far more than the socket buffers hold.
    let big = serde_bytes::ByteBuf::from(vec![1u8; 32 << 20]);
    let err = within("the stalled call to fail", calc.echo(big))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
}
