//! The monitoring HTTP server itself: read-only, bounded, loopback-only, off unless configured,
//! and not taken down by idle clients. (What it reports is tested in `tests/monitor.rs`.)

mod common;
#[path = "monitor/reports.rs"]
mod reports;

use std::time::Duration;

use common::*;
use reports::*;
use stardust_registry::{Config, RegistryNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_server_is_read_only_bounded_and_loopback_only() {
    let (node, http) = start_monitored(Config::dev()).await;
    let console = http_get(http, "/").await;
    assert_eq!(
        console.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = console.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    // Self-contained: nothing loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn"] {
        assert!(
            !console.body.contains(external),
            "the console loads {external}"
        );
    }
    assert!(console.body.contains("/api/services"));

    let post = http_request(http, "POST", "/api/services", None).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = http_request(http, "GET", "/nope", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        http_request(http, "GET", "/api/services/no.Such", None)
            .await
            .status,
        404
    );
    // HEAD: the headers of GET, no body.
    let head = http_request(http, "HEAD", "/metrics", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // A page on another origin cannot read it through DNS rebinding.
    let rebound = http_request(http, "GET", "/api/services", Some("evil.example:7601")).await;
    assert_eq!(rebound.status, 403);
    assert_eq!(
        http_request(
            http,
            "GET",
            "/api/services",
            Some(&format!("localhost:{}", http.port()))
        )
        .await
        .status,
        200
    );
    let index = http_get(http, "/api").await.json();
    assert!(index["endpoints"]["/metrics"].is_string());

    // The port is released on shutdown.
    node.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "still listening on {http}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_is_off_unless_configured() {
    let node = start(Config::dev()).await;
    assert_eq!(node.http_addr(), None);
    node.shutdown().await;
    let node = RegistryNode::builder()
        .config(Config::dev().with_http_listen("127.0.0.1:0"))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert!(node.http_addr().is_some());
    node.shutdown().await;
    let node = RegistryNode::builder()
        .config(Config::dev().with_http_listen("127.0.0.1:0"))
        .http_listen("off")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    assert_eq!(node.http_addr(), None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_clients_cannot_take_the_registry_down() {
    use tokio::io::AsyncReadExt;
    let (node, http) = start_monitored(Config::dev()).await;
    // More idle connections than the server takes: the extra ones are closed at once.
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let mut last = idle.pop().unwrap();
    let mut buf = [0u8; 16];
    let read = within("the extra connection being closed", last.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The registry itself is unaffected.
    let calc = provider(&node, EP).await;
    beat(&calc, report(vec![served("add", 1, 300, &[])])).await;
    // Once they go, HTTP answers again.
    drop(idle);
    within("HTTP answering again", async {
        loop {
            let ok = async {
                let mut s = tokio::net::TcpStream::connect(http).await.ok()?;
                use tokio::io::AsyncWriteExt;
                s.write_all(
                    b"GET /api/instances HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
                .await
                .ok()?;
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.ok()?;
                Some(out.starts_with(b"HTTP/1.1 200"))
            }
            .await;
            if ok == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    node.shutdown().await;
}
