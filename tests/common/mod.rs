//! Services and helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{Semaphore, mpsc};

#[cfg(target_os = "linux")]
pub mod child;
pub mod external;
pub mod pki;
pub mod python;

/// Generous bound for anything a test waits on: far above what the event needs on a loaded
/// 2-core machine, so hitting it means a real hang.
pub const BOUND: Duration = Duration::from_secs(20);

/// Scrapes the `/metrics` page of a registry node that serves monitoring.
pub async fn registry_metrics(node: &stardust_registry::RegistryNode) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.http_addr().expect("monitoring on");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Awaits `fut`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for: {what}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DivError {
    DivideByZero,
    Overflow { a: i64, b: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallInfo {
    pub service: String,
    pub method: String,
    pub trace_id: u64,
    pub remaining_ms: Option<u64>,
    pub tag: Option<String>,
    pub app: Option<String>,
    pub peer_known: bool,
    /// The calling connection's address, to tell connections apart.
    pub peer: Option<String>,
    /// The authenticated caller (`Context::caller`).
    pub caller: Option<String>,
    /// Whether the handshake token is visible in the connection metadata (it must not be).
    pub token_visible: bool,
    /// The key the calling connection proved in its handshake (`Context::proof_key`).
    pub proof_key: Option<Vec<u8>>,
    /// The key the caller's current token is bound to (`Identity::bound_key`).
    pub bound_key: Option<Vec<u8>>,
    /// When the caller's current token expires, in ms since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// The test service: arithmetic, payloads, and handlers whose progress the test controls.
#[stardust::service(name = "test.Calc", version = "1.2.3")]
pub trait Calc {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, with a typed application error.
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    /// Returns its input.
    async fn echo(&self, data: ByteBuf) -> ByteBuf;
    /// Waits until the test releases `key`, then returns it.
    async fn gate(&self, key: u64) -> u64;
    /// Panics.
    async fn boom(&self, message: String) -> u64;
    /// Reports the call context the handler sees.
    async fn context(&self) -> CallInfo;
    /// Calls `add` on `target` from inside the handler (context propagation).
    async fn relay(&self, target: String) -> CallInfo;
    /// Subscribes the calling connection to `topic` and sends one notification at once.
    async fn subscribe(&self, topic: String) -> u32;
    /// Returns a response of `len` bytes.
    async fn blob(&self, len: u32) -> ByteBuf;
    /// Records a one-way signal.
    #[stardust(idempotent)]
    async fn record(&self, value: u64);
}

/// What the handlers report to the test.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Entered(u64),
    Finished(u64),
    /// The handler's future was dropped before finishing (cancelled or deadline).
    Dropped(u64),
    Recorded(u64),
}

#[derive(Clone)]
pub struct CalcImpl {
    gates: Arc<Mutex<HashMap<u64, Arc<Semaphore>>>>,
    events: mpsc::UnboundedSender<Event>,
    notifiers: Arc<Mutex<Vec<stardust::Notifier>>>,
}

/// The test's side of a [`CalcImpl`]: releases gates and observes events.
pub struct Control {
    gates: Arc<Mutex<HashMap<u64, Arc<Semaphore>>>>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub notifiers: Arc<Mutex<Vec<stardust::Notifier>>>,
}

fn gate_for(gates: &Mutex<HashMap<u64, Arc<Semaphore>>>, key: u64) -> Arc<Semaphore> {
    gates
        .lock()
        .entry(key)
        .or_insert_with(|| Arc::new(Semaphore::new(0)))
        .clone()
}

impl CalcImpl {
    pub fn new() -> (CalcImpl, Control) {
        let gates = Arc::new(Mutex::new(HashMap::new()));
        let notifiers = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        (
            CalcImpl {
                gates: gates.clone(),
                events: tx,
                notifiers: notifiers.clone(),
            },
            Control {
                gates,
                events: rx,
                notifiers,
            },
        )
    }
}

impl Control {
    pub fn release(&self, key: u64) {
        gate_for(&self.gates, key).add_permits(1);
    }

    /// Waits for the next event, with a bound.
    pub async fn next(&mut self) -> Event {
        within("a handler event", self.events.recv())
            .await
            .expect("service dropped")
    }

    /// Waits until `event` is seen, skipping others.
    pub async fn expect(&mut self, event: Event) {
        loop {
            if self.next().await == event {
                return;
            }
        }
    }
}

struct DropGuard {
    key: u64,
    events: mpsc::UnboundedSender<Event>,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let e = if self.finished {
            Event::Finished(self.key)
        } else {
            Event::Dropped(self.key)
        };
        let _ = self.events.send(e);
    }
}

fn info() -> CallInfo {
    let ctx = stardust::Context::current().expect("a handler has a context");
    CallInfo {
        service: ctx.service().to_owned(),
        method: ctx.method().to_owned(),
        trace_id: ctx.trace_id(),
        remaining_ms: ctx.remaining().map(|d| d.as_millis() as u64),
        tag: ctx.metadata().get("tag").map(str::to_owned),
        app: ctx.connection_metadata().get("app").map(str::to_owned),
        peer_known: ctx.peer_addr().is_some(),
        peer: ctx.peer_addr().map(|a| a.to_string()),
        caller: ctx.caller().map(str::to_owned),
        token_visible: ctx
            .connection_metadata()
            .get(stardust::auth::TOKEN_KEY)
            .is_some(),
        proof_key: ctx.proof_key().map(|k| k.to_vec()),
        bound_key: ctx
            .identity()
            .and_then(|i| i.bound_key())
            .map(|k| k.to_vec()),
        expires_ms: ctx
            .identity()
            .and_then(|i| i.expires_at())
            .map(stardust::auth::token::unix_ms),
    }
}

impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            return Err(DivError::DivideByZero);
        }
        a.checked_div(b).ok_or(DivError::Overflow { a, b })
    }

    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }

    async fn gate(&self, key: u64) -> u64 {
        let mut guard = DropGuard {
            key,
            events: self.events.clone(),
            finished: false,
        };
        let _ = self.events.send(Event::Entered(key));
        let gate = gate_for(&self.gates, key);
        gate.acquire().await.expect("gate closed").forget();
        guard.finished = true;
        key
    }

    async fn boom(&self, message: String) -> u64 {
        panic!("{message}");
    }

    async fn context(&self) -> CallInfo {
        info()
    }

    async fn relay(&self, target: String) -> CallInfo {
        let client = CalcClient::connect(target.as_str())
            .await
            .expect("relay connect");
        client.context().await.expect("relay call")
    }

    async fn subscribe(&self, topic: String) -> u32 {
        let ctx = stardust::Context::current().expect("context");
        let notifier = ctx.notifier().expect("a server call has a notifier");
        notifier
            .notify(&topic, &format!("welcome to {topic}"))
            .expect("notify");
        let mut all = self.notifiers.lock();
        all.push(notifier);
        all.len() as u32
    }

    async fn blob(&self, len: u32) -> ByteBuf {
        ByteBuf::from(vec![7u8; len as usize])
    }

    async fn record(&self, value: u64) {
        let _ = self.events.send(Event::Recorded(value));
    }
}

/// A second service, to host two on one server.
#[stardust::service(name = "test.Greeter")]
pub trait Greeter {
    async fn greet(&self, name: String) -> String;
}

pub struct GreeterImpl;

impl Greeter for GreeterImpl {
    async fn greet(&self, name: String) -> String {
        format!("hello, {name}")
    }
}

/// Starts a server hosting [`CalcImpl`] and [`GreeterImpl`] on an OS-chosen loopback port.
pub async fn start_server() -> (stardust::Server, Control) {
    start_server_with(stardust::Server::builder().allow_anonymous()).await
}

pub async fn start_server_with(builder: stardust::ServerBuilder) -> (stardust::Server, Control) {
    let (calc, control) = CalcImpl::new();
    let server = builder
        .serve(CalcServer::new(calc))
        .serve(GreeterServer::new(GreeterImpl))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    (server, control)
}
