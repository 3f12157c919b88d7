//! The monitoring HTTP server stays reachable (issue 14, item 7): idle sockets and idle
//! keep-alive connections never hold every connection slot, so a GET succeeds while hundreds of
//! them are open, and the server still keeps at most its 64 connections.
//!
//! One test in its own binary: it holds about 500 sockets at a time (and the server's side of
//! up to 64), which must not add up with other tests' in one process.

mod common;

use std::net::SocketAddr;

use common::*;
use stardust_registry::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CROWD: usize = 500;
/// The server's connection cap (README: "at most 64 connections at once").
const MAX_CONNECTIONS: usize = 64;

/// Opens `CROWD` connections that send nothing.
async fn idle_sockets(http: SocketAddr) -> Vec<TcpStream> {
    let mut crowd = Vec::with_capacity(CROWD);
    for _ in 0..CROWD {
        crowd.push(
            within("connecting", TcpStream::connect(http))
                .await
                .unwrap(),
        );
    }
    crowd
}

/// Opens `CROWD` connections that each make one keep-alive request, read its response, and
/// then stay open, idle.
async fn idle_keep_alives(http: SocketAddr) -> Vec<TcpStream> {
    let mut crowd = Vec::with_capacity(CROWD);
    for i in 0..CROWD {
        let mut stream = within("connecting", TcpStream::connect(http))
            .await
            .unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {http}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let status = within("a keep-alive response", read_response(&mut stream)).await;
        assert_eq!(status, 200, "keep-alive request {i}");
        crowd.push(stream);
    }
    crowd
}

/// Reads one response (status line, headers, a `Content-Length` body) without waiting for the
/// connection to close; returns its status.
async fn read_response(stream: &mut TcpStream) -> u16 {
    let mut raw = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before a response");
        raw.extend_from_slice(&chunk[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a Content-Length");
    while raw.len() < head_end + length {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed within a response");
        raw.extend_from_slice(&chunk[..n]);
    }
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Waits (bounded) until the server has closed all but at most `MAX_CONNECTIONS` of `crowd`.
async fn server_keeps_at_most_its_cap(crowd: &mut [TcpStream]) {
    let mut closed = vec![false; crowd.len()];
    within(
        "the server to close the connections beyond its cap",
        async {
            loop {
                for (stream, closed) in crowd.iter_mut().zip(&mut closed) {
                    let mut byte = [0u8; 1];
                    if !*closed {
                        *closed = match stream.try_read(&mut byte) {
                            // End of stream, or a reset: the server closed it.
                            Ok(0) => true,
                            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                            Ok(_) => panic!("an idle connection got bytes it did not ask for"),
                        };
                    }
                }
                if closed.iter().filter(|c| !**c).count() <= MAX_CONNECTIONS {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_succeeds_while_hundreds_of_idle_connections_are_open() {
    let (node, http) = start_monitored(Config::dev()).await;

    // Sockets that never send a request.
    let mut crowd = idle_sockets(http).await;
    let reply = http_get(http, "/healthz").await;
    assert!(reply.body.contains("\"ok\""), "{}", reply.body);
    server_keeps_at_most_its_cap(&mut crowd).await;
    drop(crowd);

    // Keep-alive connections left idle after one request each (every one of those requests was
    // answered: the crowd never locked out the newest).
    let mut crowd = idle_keep_alives(http).await;
    let reply = http_get(http, "/api/services").await;
    assert!(reply.body.contains("\"services\""), "{}", reply.body);
    server_keeps_at_most_its_cap(&mut crowd).await;
    drop(crowd);
    node.shutdown().await;
}
