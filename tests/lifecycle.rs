//! Deadlines, cancellation, keepalive, graceful shutdown and reconnection, over real sockets.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, HelloAck};
use stardust::{Client, ErrorKind, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fails_the_call_and_stops_the_handler() {
    let (server, mut control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    // Long enough for the handler to have started when the deadline cancels it, even on a
    // loaded machine (a call cancelled before its handler first ran reports no events).
    let err = calc
        .with_timeout(Duration::from_secs(1))
        .gate(1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert!(err.to_string().contains("test.Calc.gate"), "{err}");
    control.expect(Event::Entered(1)).await;
    // Nobody waits for the result any more: the provider drops the handler.
    control.expect(Event::Dropped(1)).await;
    // The connection is unaffected.
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_enforces_the_deadline_it_was_sent() {
    // A raw client that never cancels: the provider's own copy of the deadline stops the
    // handler and answers DeadlineExceeded.
    let (server, mut control) = start_server().await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut out = BytesMut::new();
    let hello = message::Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "raw".into(),
        max_frame: None,
        meta: Default::default(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    let meta = stardust::Metadata::new();
    let head = message::RequestHead {
        id: 5,
        flags: 0,
        service: "test.Calc",
        method: "gate",
        timeout_us: 200_000,
        trace_id: 1,
        meta: &meta,
    };
    message::put_request(&mut out, &head, &(5u64,), u32::MAX).unwrap();
    sock.write_all(&out).await.unwrap();
    control.expect(Event::Entered(5)).await;
    control.expect(Event::Dropped(5)).await;
    let mut buf = BytesMut::new();
    let error = within("the deadline error", async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(h) = frame::parse_header(&buf, u32::MAX).unwrap() {
                if buf.len() < h.frame_len() {
                    break;
                }
                let f = buf.split_to(h.frame_len());
                if h.kind == Kind::Error as u8 {
                    return (h.id, message::parse_error(&f[frame::HEADER_LEN..]));
                }
            }
        }
    })
    .await;
    assert_eq!(error.0, 5);
    assert_eq!(error.1.kind(), ErrorKind::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_deadline_run_until_done() {
    let (server, mut control) = start_server().await;
    let client = Client::builder()
        .no_timeout()
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    let running = tokio::spawn({
        let calc = calc.clone();
        async move { calc.gate(7).await }
    });
    control.expect(Event::Entered(7)).await;
    control.release(7);
    assert_eq!(within("released call", running).await.unwrap().unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_future_cancels_it_on_the_provider() {
    let (server, mut control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.gate(3).await }
    });
    control.expect(Event::Entered(3)).await;
    call.abort();
    let _ = call.await;
    control.expect(Event::Dropped(3)).await;
    assert_eq!(calc.add(2, 3).await.unwrap(), 5);
}

/// Answers the handshake, then never says anything again (nor reads).
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        // Read the Hello frame.
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
            agent: "silent".into(),
            max_frame: 1 << 20,
            stream_window: None,
        };
        message::put_serde(&mut out, Kind::HelloAck, &ack).unwrap();
        sock.write_all(&out).await.unwrap();
        sock
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keepalive_detects_a_silent_server() {
    let (addr, server) = silent_server().await;
    let client = Client::builder()
        .no_timeout()
        .keepalive(Duration::from_millis(50), Duration::from_millis(400))
        .connect(addr)
        .await
        .unwrap();
    let _sock = server.await.unwrap(); // keep the socket open but silent
    let calc = CalcClient::new(client);
    let err = within("keepalive to fail the call", calc.add(1, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionClosed);
    assert!(err.to_string().contains("keepalive"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keepalive_drops_a_silent_client() {
    let builder = Server::builder()
        .allow_anonymous()
        .keepalive(Duration::from_millis(50), Duration::from_millis(400));
    let (server, _control) = start_server_with(builder).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut out = BytesMut::new();
    let hello = message::Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "test".into(),
        max_frame: None,
        meta: Default::default(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    sock.write_all(&out).await.unwrap();
    // Read (and ignore: HelloAck, pings) until the server closes on us.
    let mut buf = vec![0u8; 4096];
    let mut saw_ping = false;
    within("server to close the silent connection", async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => saw_ping |= buf[..n].windows(2).any(|w| w == [Kind::Ping as u8, 0]),
            }
        }
    })
    .await;
    assert!(saw_ping, "the server pinged before giving up");
    within("connection count to drop", async {
        while server.connection_count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_calls() {
    let builder = Server::builder()
        .allow_anonymous()
        .shutdown_grace(Duration::from_secs(30));
    let (server, mut control) = start_server_with(builder).await;
    let addr = server.local_addr();
    let calc = CalcClient::connect(addr).await.unwrap();
    let in_flight = tokio::spawn({
        let calc = calc.clone();
        async move { calc.gate(9).await }
    });
    control.expect(Event::Entered(9)).await;

    let shutdown = tokio::spawn(server.shutdown());
    // New connections are refused once the listener is gone.
    within("listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight call"
    );
    control.release(9);
    assert_eq!(
        within("in-flight call", in_flight).await.unwrap().unwrap(),
        9
    );
    within("shutdown to finish", shutdown).await.unwrap();
    control.expect(Event::Finished(9)).await;
    // The client now fails cleanly instead of hanging.
    let err = calc.add(1, 1).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::ConnectionClosed),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_reconnects_after_provider_restart() {
    let (server, _control) = start_server().await;
    let addr = server.local_addr();
    let calc = CalcClient::connect(addr).await.unwrap();
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);

    drop(server); // crash: connections cut without goodbye
    // Calls fail with a typed error while the provider is down.
    let err = within("call against a dead provider", calc.add(1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connect | ErrorKind::ConnectionClosed),
        "{err}"
    );

    // The provider comes back on the same port; the next call reconnects by itself.
    let (calc_impl, _control2) = CalcImpl::new();
    let _server = Server::builder()
        .allow_anonymous()
        .serve(CalcServer::new(calc_impl))
        .bind(addr)
        .await
        .unwrap();
    assert_eq!(
        within("call after restart", calc.add(2, 2)).await.unwrap(),
        4
    );
}

/// `serve_until` keeps a server serving until its signal, then shuts it down gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_until_serves_until_the_signal_then_shuts_down() {
    let (server, _control) = start_server().await;
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(async {
        let _ = stopped.await;
    }));
    let calc = within("connect", CalcClient::connect(addr)).await.unwrap();
    assert_eq!(calc.add(20, 22).await.unwrap(), 42);
    assert!(!serving.is_finished(), "still serving before the signal");
    stop.send(()).unwrap();
    within("the graceful shutdown", serving).await.unwrap();
    let err = calc.add(1, 1).await.unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ShuttingDown | ErrorKind::ConnectionClosed | ErrorKind::Connect
        ),
        "{err}"
    );
}
