//! Bad input from clients and servers: every case ends in a typed error or a closed connection,
//! never a hang, and the provider keeps serving everyone else.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello};
use stardust::{Client, ErrorKind, MethodDescriptor, Server, ServiceDescriptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Reads frames until the peer closes; returns (kind, id, body) of each.
async fn read_until_closed(sock: &mut TcpStream) -> Vec<(u8, u64, Vec<u8>)> {
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
        frames.push((h.kind, h.id, buf[frame::HEADER_LEN..h.frame_len()].to_vec()));
        let _ = buf.split_to(h.frame_len());
    }
    frames
}

async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(&hello_frame()).await.unwrap();
    sock
}

/// A well-behaved client on its own connection that must be unaffected by the bad one.
async fn assert_still_serving(calc: &CalcClient) {
    assert_eq!(
        within("a healthy call", calc.add(20, 22)).await.unwrap(),
        42
    );
}

fn goaway_kind(frames: &[(u8, u64, Vec<u8>)]) -> ErrorKind {
    let (_, _, body) = frames
        .iter()
        .find(|f| f.0 == Kind::GoAway as u8)
        .unwrap_or_else(|| panic!("expected a GoAway frame, got {frames:?}"));
    message::parse_error(body).kind()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_get_goaway_and_close() {
    let (server, _control) = start_server().await;
    let good = CalcClient::connect(server.local_addr()).await.unwrap();
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert!(matches!(
        goaway_kind(&frames),
        ErrorKind::FrameTooLarge | ErrorKind::Protocol
    ));
    assert_still_serving(&good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_first_frame_and_wrong_protocol_are_refused() {
    let (server, _control) = start_server().await;
    // A request before any handshake.
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut out = BytesMut::new();
    frame::put_empty(&mut out, Kind::Ping, 0, 1);
    sock.write_all(&out).await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert_eq!(goaway_kind(&frames), ErrorKind::Protocol);

    // A Hello for another protocol: the client learns why.
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "http".into(),
        version: 1,
        agent: String::new(),
        max_frame: None,
        meta: Default::default(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    sock.write_all(&out).await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert_eq!(goaway_kind(&frames), ErrorKind::Protocol);
    let (_, _, body) = frames.iter().find(|f| f.0 == Kind::GoAway as u8).unwrap();
    assert!(
        message::parse_error(body)
            .message()
            .contains("unknown protocol")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_close_does_not_disturb_others() {
    let (server, _control) = start_server().await;
    let good = CalcClient::connect(server.local_addr()).await.unwrap();
    let mut sock = handshaken(server.local_addr()).await;
    // A header promising 100 bytes of body, then only 10, then the client half-closes.
    let mut out = BytesMut::new();
    out.put_u32(110);
    out.put_u8(Kind::Request as u8);
    out.put_u8(0);
    out.put_u64(1);
    out.extend_from_slice(&[0x96; 10]);
    sock.write_all(&out).await.unwrap();
    sock.shutdown().await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert_eq!(frames[0].0, Kind::HelloAck as u8);
    assert_still_serving(&good).await;

    // A truncated frame on a connection that stays open holds up nobody else either.
    let mut stuck = handshaken(server.local_addr()).await;
    stuck.write_all(&out[..20]).await.unwrap();
    assert_still_serving(&good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_length_prefix_is_answered_and_closed() {
    let builder = Server::builder()
        .allow_anonymous()
        .max_frame_size(64 * 1024);
    let (server, _control) = start_server_with(builder).await;
    let good = CalcClient::connect(server.local_addr()).await.unwrap();
    let mut sock = handshaken(server.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_u32(100 * 1024 * 1024);
    out.put_u8(Kind::Request as u8);
    out.put_u8(0);
    out.put_u64(77);
    sock.write_all(&out).await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    let error = frames
        .iter()
        .find(|f| f.0 == Kind::Error as u8)
        .expect("an Error frame");
    assert_eq!(error.1, 77, "the error answers the offending request id");
    assert_eq!(
        message::parse_error(&error.2).kind(),
        ErrorKind::FrameTooLarge
    );
    assert_eq!(goaway_kind(&frames), ErrorKind::FrameTooLarge);
    assert_still_serving(&good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_kind_closes_the_connection() {
    let (server, _control) = start_server().await;
    let good = CalcClient::connect(server.local_addr()).await.unwrap();
    let mut sock = handshaken(server.local_addr()).await;
    let mut out = BytesMut::new();
    out.put_u32(10);
    out.put_u8(0x7f);
    out.put_u8(0);
    out.put_u64(5);
    sock.write_all(&out).await.unwrap();
    let frames = read_until_closed(&mut sock).await;
    assert_eq!(goaway_kind(&frames), ErrorKind::Protocol);
    assert_still_serving(&good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_body_gets_an_error_and_the_connection_lives() {
    let (server, _control) = start_server().await;
    let mut sock = handshaken(server.local_addr()).await;
    let mut out = BytesMut::new();
    let start = frame::begin(&mut out, Kind::Request, 0, 11);
    out.extend_from_slice(&[0xc1, 0xc1, 0xc1]); // never-used MessagePack byte
    frame::finish(&mut out, start, u32::MAX).unwrap();
    frame::put_empty(&mut out, Kind::Ping, 0, 12);
    sock.write_all(&out).await.unwrap();
    // Expect HelloAck, Error(11), Pong(12): the connection kept going after the bad request.
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    within("error and pong", async {
        while !seen.iter().any(|(k, _, _)| *k == Kind::Pong as u8) {
            let mut chunk = [0u8; 1024];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed unexpectedly");
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some(h)) = frame::parse_header(&buf, u32::MAX) {
                if buf.len() < h.frame_len() {
                    break;
                }
                seen.push((h.kind, h.id, buf[frame::HEADER_LEN..h.frame_len()].to_vec()));
                let _ = buf.split_to(h.frame_len());
            }
        }
    })
    .await;
    let error = seen.iter().find(|f| f.0 == Kind::Error as u8).unwrap();
    assert_eq!(error.1, 11);
    assert_eq!(message::parse_error(&error.2).kind(), ErrorKind::Protocol);
    assert!(seen.iter().any(|f| f.0 == Kind::Pong as u8 && f.1 == 12));
}

static BOGUS: ServiceDescriptor = ServiceDescriptor {
    name: "test.Nope",
    version: "1.0.0",
    methods: &[MethodDescriptor::unary("add")],
    docs: "",
};

static CALC_WITH_EXTRA: ServiceDescriptor = ServiceDescriptor {
    name: "test.Calc",
    version: "1.2.3",
    methods: &[
        MethodDescriptor::unary("mul"),
        MethodDescriptor::unary("add"),
    ],
    docs: "",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_method_and_bad_arguments_are_typed_errors() {
    let (server, _control) = start_server().await;
    let client = Client::connect(server.local_addr()).await.unwrap();

    let err = client.call::<_, i64>(&BOGUS, 0, &(1, 2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownService);
    assert!(err.to_string().contains("test.Nope"), "{err}");

    let err = client
        .call::<_, i64>(&CALC_WITH_EXTRA, 0, &(1, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownMethod);
    assert!(err.to_string().contains("mul"), "{err}");

    let err = client
        .call::<_, i64>(&CALC_WITH_EXTRA, 1, &("one", "two"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArguments);

    let err = client
        .call::<_, i64>(&CALC_WITH_EXTRA, 1, &(1,))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArguments,
        "a missing argument"
    );

    // A response that does not match the type the caller expects.
    let err = client
        .call::<_, String>(&CALC_WITH_EXTRA, 1, &(1, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);

    // The connection survived all of that.
    let calc = CalcClient::new(client);
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_is_a_typed_error_and_the_server_lives() {
    let (server, _control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    let err = calc.boom("deliberate".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert!(err.to_string().contains("deliberate"), "{err}");
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_with_frame_too_large() {
    let builder = Server::builder()
        .allow_anonymous()
        .max_frame_size(64 * 1024);
    let (server, _control) = start_server_with(builder).await;
    let client = Client::builder()
        .max_frame_size(32 * 1024)
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    // Request over the server's limit: refused locally, nothing sent.
    let err = calc
        .echo(serde_bytes::ByteBuf::from(vec![0u8; 100 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    // Response over the client's limit: the server answers with an error instead of sending it.
    let err = calc.blob(48 * 1024).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FrameTooLarge);
    assert!(err.to_string().contains("response"), "{err}");
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_garbage_fails_calls_instead_of_hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = sock.read(&mut buf).await.unwrap(); // the Hello
        let mut out = BytesMut::new();
        let ack = message::HelloAck {
            features: Vec::new(),
            version: 1,
            agent: "fake".into(),
            max_frame: 1 << 20,
            stream_window: None,
        };
        message::put_serde(&mut out, Kind::HelloAck, &ack).unwrap();
        sock.write_all(&out).await.unwrap();
        let _ = sock.read(&mut buf).await.unwrap(); // the first request
        sock.write_all(&[0xff; 64]).await.unwrap(); // garbage instead of a response
        sock
    });
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .connect(addr)
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    let err = within("the garbage to fail the call", calc.add(1, 2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
    assert!(err.to_string().contains("frame"), "{err}");
    drop(fake);
}
