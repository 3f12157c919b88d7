//! The console's admin login over plain HTTP: sessions in an `HttpOnly; SameSite=Strict`
//! cookie, a CSRF token required on every POST, admin apps only, throttled like registry logins
//! (429 with `Retry-After`), bodies bounded and typed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use stardust_registry::{AppConfig, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";

/// One request with `headers` and `body` over a fresh connection.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    within("an HTTP request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // The server may answer (413) and close before reading everything.
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body).await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let raw = String::from_utf8(raw).expect("UTF-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        HttpReply {
            status,
            headers,
            body: body.to_owned(),
        }
    })
    .await
}

async fn login(addr: SocketAddr, app: &str, secret: &str) -> HttpReply {
    let body = format!("app={app}&secret={secret}");
    request(
        addr,
        "POST",
        "/console/login",
        &[("Content-Type", FORM)],
        body.as_bytes(),
    )
    .await
}

fn config() -> Config {
    let admin = AppConfig::with_secret("ops-secret")
        .unwrap()
        .roles(["admin"]);
    let web = AppConfig::with_secret("web-secret").unwrap();
    Config::dev()
        .with_lease_ttl(Duration::from_secs(3600))
        .with_app("ops", admin)
        .with_app("web", web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sessions_need_the_cookie_and_the_csrf_token() {
    let (node, http) = start_monitored(config()).await;
    let call = br#"{"service":"nope.Svc","method":"add","args":[2,3]}"#;
    let json = [("Content-Type", "application/json")];

    // No session, no token: 403.
    let r = request(http, "POST", "/console/call", &json, call).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Without a session the page gets no CSRF token.
    let s = http_get(http, "/console/session").await.json();
    assert!(s["admin"].is_null() && s.get("csrf").is_none(), "{s}");

    // An admin logs in: an HttpOnly, SameSite=Strict session cookie and a CSRF token.
    let r = login(http, "ops", "ops-secret").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r.header("set-cookie").expect("a session cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let id = session.split_once('=').unwrap().1;
    assert_eq!(id.len(), 32, "128 random bits: {session}");
    let answer = r.json();
    assert_eq!(answer["admin"], "ops");
    let csrf = answer["csrf"].as_str().expect("a CSRF token").to_owned();
    assert!(!r.body.contains("ops-secret"));

    // The session alone is not enough: 403 without the token or with a wrong one.
    let with_cookie = [("Content-Type", "application/json"), ("Cookie", &session)];
    let r = request(http, "POST", "/console/call", &with_cookie, call).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let wrong = [
        ("Content-Type", "application/json"),
        ("Cookie", &session),
        ("X-CSRF-Token", "0123456789abcdef0123456789abcdef"),
    ];
    let r = request(http, "POST", "/console/call", &wrong, call).await;
    assert_eq!(r.status, 403, "{}", r.body);

    // With both, the call is made (here: no such service, answered as a failed call).
    let good = [
        ("Content-Type", "application/json"),
        ("Cookie", &session),
        ("X-CSRF-Token", &csrf),
    ];
    let r = request(http, "POST", "/console/call", &good, call).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"]["kind"], "no_instance", "{answer}");

    // A wrong content type, another origin, an oversized body: refused.
    let text = [
        ("Content-Type", "text/plain"),
        ("Cookie", &session),
        ("X-CSRF-Token", &csrf),
    ];
    let r = request(http, "POST", "/console/call", &text, call).await;
    assert_eq!(r.status, 415, "{}", r.body);
    let foreign = [
        ("Content-Type", "application/json"),
        ("Cookie", &session),
        ("X-CSRF-Token", &csrf),
        ("Origin", "http://evil.example"),
    ];
    let r = request(http, "POST", "/console/call", &foreign, call).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let big = vec![b' '; 70 * 1024];
    let r = request(http, "POST", "/console/call", &good, &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = request(
        http,
        "POST",
        "/console/login",
        &[("Content-Type", FORM)],
        &big,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.body);

    // The session shows on GET (for a reloaded page), then ends with a logout.
    let s = request(
        http,
        "GET",
        "/console/session",
        &[("Cookie", &session)],
        b"",
    )
    .await;
    assert_eq!(s.json()["csrf"], csrf.as_str());
    let r = request(http, "POST", "/console/logout", &good[1..], b"").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = request(http, "POST", "/console/call", &good, call).await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Other routes stay read-only.
    let r = request(http, "POST", "/api/services", &json, b"{}").await;
    assert_eq!(r.status, 405, "{}", r.body);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_and_other_apps_are_refused_and_throttled() {
    let (node, http) = start_monitored(config()).await;

    // A non-admin app with its right secret: refused, no cookie.
    let r = login(http, "web", "web-secret").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    // A wrong content type.
    let r = request(
        http,
        "POST",
        "/console/login",
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);

    // Wrong secrets: refused, then throttled with Retry-After, as registry logins are.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = login(http, "ops", "wrong").await;
        assert!(r.header("set-cookie").is_none());
        statuses.push(r.status);
        if r.status == 429 {
            let retry: u64 = r
                .header("retry-after")
                .expect("Retry-After")
                .parse()
                .unwrap();
            assert!(retry >= 1, "{retry}");
            break;
        }
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    // Even the right secret waits for the backoff.
    let r = login(http, "ops", "ops-secret").await;
    assert_eq!(r.status, 429, "{}", r.body);
    let stats = node.login_stats();
    assert!(stats.failed >= 5 && stats.throttled >= 2, "{stats:?}");
    node.shutdown().await;
}

/// A service with a typed error, for the console's calls.
#[stardust::service(name = "test.Div", version = "1.0.0")]
pub trait Div {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum DivError {
    DivideByZero,
}

struct DivImpl;

impl Div for DivImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            Err(DivError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_show_results_typed_errors_and_refuse_unknown_endpoints() {
    let (node, http) = start_monitored(config()).await;
    let star = stardust::Stardust::builder()
        .registry(node.local_addr().to_string())
        .app("divider", "divider-secret")
        .connect()
        .await
        .expect("the provider logs in");
    let provider = star
        .serve(
            stardust::Server::builder().serve(DivServer::new(DivImpl)),
            "127.0.0.1:0",
        )
        .await
        .expect("the provider registers");
    let r = login(http, "ops", "ops-secret").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let session = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = r.json()["csrf"].as_str().unwrap().to_owned();
    let headers = [
        ("Content-Type", "application/json"),
        ("Cookie", session.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let call = async |body: serde_json::Value| {
        let r = request(
            http,
            "POST",
            "/console/call",
            &headers,
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    };

    let a = call(serde_json::json!({"service": "test.Div", "method": "add", "args": [2, 3]})).await;
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["result"], 5);
    assert!(a["latency_ms"].as_f64().is_some(), "{a}");
    let d = call(serde_json::json!({"service": "test.Div", "method": "div", "args": [1, 0]})).await;
    assert_eq!(d["ok"], false, "{d}");
    assert_eq!(d["error"]["kind"], "application");
    assert_eq!(d["error"]["value"], "DivideByZero");
    let ok =
        call(serde_json::json!({"service": "test.Div", "method": "div", "args": [6, 3]})).await;
    assert_eq!(ok["result"], 2, "{ok}");
    // Only a live instance of the service may be named.
    let e = call(
        serde_json::json!({"service": "test.Div", "method": "add", "args": [1, 1],
        "endpoint": node.local_addr().to_string()}),
    )
    .await;
    assert_eq!(e["error"]["kind"], "no_instance", "{e}");
    let wrong =
        call(serde_json::json!({"service": "test.Div", "method": "add", "args": "x"})).await;
    assert_eq!(wrong["ok"], false, "{wrong}");

    // The service view carries the signatures and docs.
    let view = http_get(http, "/api/services/test.Div").await.json();
    let sigs: Vec<&str> = view["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["signature"].as_str().unwrap())
        .collect();
    assert_eq!(
        sigs,
        [
            "add(a: i64, b: i64) -> i64",
            "div(a: i64, b: i64) -> Result<i64, DivError>"
        ]
    );
    drop(provider);
    node.shutdown().await;
}
