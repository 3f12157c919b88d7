//! Helpers shared by the registry's integration tests.
#![allow(dead_code)]

pub mod etcd;
pub mod follow;
pub mod raw;
// The workspace's "skip loudly unless STARDUST_REQUIRE_EXTERNAL" rule, shared with the root tests.
#[path = "../../../tests/common/external.rs"]
pub mod external;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use stardust::Notifications;
use stardust::discovery::api::{
    DISCOVERY_TOPIC, DiscoveryEvent, LoginReply, Registration, RegistryClient,
};
use stardust_registry::{Config, RegistryNode};

/// Generous bound for anything a test waits on: hitting it means a real hang.
pub const BOUND: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for: {what}"),
    }
}

/// Starts a registry with `config` on an OS-chosen loopback port.
pub async fn start(config: Config) -> RegistryNode {
    RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .expect("registry starts")
}

/// A fresh connection to the registry at `addr`.
pub async fn connect(addr: SocketAddr) -> RegistryClient {
    within("connecting", RegistryClient::connect(addr))
        .await
        .expect("connect")
}

/// A fresh connection, logged in as `app`.
pub async fn login(addr: SocketAddr, app: &str, secret: &str) -> (RegistryClient, LoginReply) {
    let client = connect(addr).await;
    let reply = within("login", client.login(app.into(), secret.into()))
        .await
        .expect("login call")
        .unwrap_or_else(|e| panic!("login as {app} refused: {e}"));
    (client, reply)
}

/// A registration with default weight and no tags.
pub fn registration(service: &str, version: &str, endpoint: &str) -> Registration {
    Registration {
        service: service.into(),
        version: version.into(),
        endpoint: endpoint.into(),
        weight: 100,
        tags: Default::default(),
        tls: false,
        description: None,
    }
}

/// Waits (bounded) for the next discovery push on `notifications`.
pub async fn next_event(notifications: &mut Notifications) -> DiscoveryEvent {
    within("a discovery push", async {
        loop {
            let n = notifications.recv().await.expect("the client is gone");
            if n.topic() == DISCOVERY_TOPIC {
                return n.decode::<DiscoveryEvent>().expect("a DiscoveryEvent");
            }
        }
    })
    .await
}

/// Endpoints of the instances in `event`, in order.
pub fn endpoints(instances: &[stardust::discovery::api::Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.endpoint.as_str()).collect()
}

/// An HTTP response, as the raw helpers below read it.
pub struct HttpReply {
    pub status: u16,
    /// Header lines, lower-cased names (`content-type: text/html`).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), with `Host` set to
/// `host` or the address itself.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("an HTTP request", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let host = host.map_or_else(|| addr.to_string(), str::to_owned);
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
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

/// `GET path`, expecting 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpReply {
    let reply = http_request(addr, "GET", path, None).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply
}

/// Starts a dev registry with monitoring over HTTP on an OS-chosen loopback port.
pub async fn start_monitored(config: Config) -> (RegistryNode, SocketAddr) {
    let node = RegistryNode::builder()
        .config(config)
        .http_listen("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .await
        .expect("registry starts");
    let http = node.http_addr().expect("HTTP is on");
    (node, http)
}

/// The description a provider of `calc.Calculator` registers: `add(a: i64, b: i64) -> RETURNS`
/// (idempotent), with docs (tests of the registry's `describe`, one node or several).
pub fn calc_description(returns: &str) -> stardust::discovery::api::ServiceDescription {
    use stardust::discovery::api::{ArgDescription, MethodDescription, ServiceDescription};
    let arg = |name: &str| ArgDescription {
        name: name.into(),
        ty: "i64".into(),
    };
    ServiceDescription {
        docs: "A calculator.".into(),
        methods: vec![MethodDescription {
            name: "add".into(),
            args: vec![arg("a"), arg("b")],
            returns: returns.into(),
            docs: "Adds two numbers.".into(),
            idempotent: true,
            ..MethodDescription::default()
        }],
    }
}
