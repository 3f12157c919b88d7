//! The `test.Where` service and the provider processes of the balancing, failover and
//! gray-failure tests: an embedded registry, providers whose answers say which one took the
//! call, with gates that hold calls (a stall) and switches that make them fail.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::common::within;
use stardust::{ErrorKind, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};
use tokio::sync::{Semaphore, mpsc};

pub const PROVIDER: (&str, &str) = ("where-provider", "provider-secret");
pub const CONSUMER: (&str, &str) = ("web", "web-secret");

/// A service whose answers say which provider took the call.
#[stardust::service(name = "test.Where", version = "1.0.0")]
pub trait Where {
    /// The provider's number (idempotent: safe to retry).
    #[stardust(idempotent)]
    async fn whoami(&self) -> u32;
    /// The provider's number, counted as a side effect (not idempotent).
    async fn bump(&self) -> u32;
    /// Waits until the test opens the provider's gate (idempotent).
    #[stardust(idempotent)]
    async fn hold(&self) -> u32;
    /// Waits until the test opens the provider's gate (not idempotent).
    async fn hold_once(&self) -> u32;
}

#[derive(Clone)]
pub struct WhereImpl {
    id: u32,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<(u32, &'static str)>,
    /// While set, `whoami` and `bump` wait for the gate too: a provider that has stalled (alive,
    /// connected, answering nothing).
    stalled: Arc<AtomicBool>,
    /// While set, `whoami` panics: a provider failing every call.
    fail: Arc<AtomicBool>,
}

impl WhereImpl {
    /// Provider number `id`, healthy, with its gate closed (`hold` waits until it opens).
    pub fn new(id: u32, entered: mpsc::UnboundedSender<(u32, &'static str)>) -> WhereImpl {
        WhereImpl {
            id,
            calls: Arc::new(AtomicU64::new(0)),
            gate: Arc::new(Semaphore::new(0)),
            entered,
            stalled: Arc::new(AtomicBool::new(false)),
            fail: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn held(&self, kind: &'static str) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.entered.send((self.id, kind));
        self.gate.acquire().await.expect("gate").forget();
        self.id
    }
}

impl Where for WhereImpl {
    async fn whoami(&self) -> u32 {
        if self.stalled.load(Ordering::SeqCst) {
            return self.held("whoami").await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            panic!("provider {} fails on purpose", self.id);
        }
        self.id
    }

    async fn bump(&self) -> u32 {
        if self.stalled.load(Ordering::SeqCst) {
            return self.held("bump").await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.id
    }

    async fn hold(&self) -> u32 {
        self.held("hold").await
    }

    async fn hold_once(&self) -> u32 {
        self.held("hold_once").await
    }
}

pub fn config() -> Config {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stardust-balance-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_lease_ttl(Duration::from_secs(30))
        .with_key_file(dir.join("keys.toml"))
}

pub async fn registry() -> RegistryNode {
    RegistryNode::builder()
        .config(config())
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

pub async fn star(node: &RegistryNode, app: (&str, &str)) -> Stardust {
    star_with(node, app, |b| b).await
}

pub async fn star_with(
    node: &RegistryNode,
    app: (&str, &str),
    tune: impl FnOnce(stardust::StardustBuilder) -> stardust::StardustBuilder,
) -> Stardust {
    tune(Stardust::builder())
        .registry(node.local_addr().to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(200))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("login")
}

/// One provider process: its own registry session, server and counters.
pub struct Node {
    pub star: Option<Stardust>,
    pub provider: Option<stardust::Provider>,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    pub fail: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
}

impl Node {
    pub async fn start(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
    ) -> Node {
        Node::start_at(node, id, entered, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_at(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
        addr: std::net::SocketAddr,
    ) -> Node {
        let star = star(node, PROVIDER).await;
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let service = WhereImpl {
            id,
            calls: calls.clone(),
            gate: gate.clone(),
            entered: entered.clone(),
            stalled: stalled.clone(),
            fail: fail.clone(),
        };
        // The port of a server just stopped may take a moment to be free again.
        let provider = within("the provider to bind", async {
            loop {
                match star
                    .serve(
                        Server::builder().serve(WhereServer::new(service.clone())),
                        addr,
                    )
                    .await
                {
                    Ok(p) => return p,
                    Err(_) if addr.port() != 0 => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(e) => panic!("serve: {e}"),
                }
            }
        })
        .await;
        Node {
            star: Some(star),
            provider: Some(provider),
            calls,
            gate,
            fail,
            stalled,
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// The provider stalls: every call waits at its gate (which must be closed) until
    /// [`Node::recover`].
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// The stall ends: calls held at the gate are answered, new ones are served at once.
    pub fn recover(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.open_gate();
    }

    /// The process dies: its server stops at once (connections cut, no drain) and its registry
    /// session ends, without deregistering first.
    pub fn crash(&mut self) {
        let star = self.star.take();
        drop(self.provider.take());
        drop(star);
    }
}

/// Calls `whoami` until every one of `ids` has answered (the consumer knows all providers).
pub async fn wait_for_providers(client: &WhereClient, ids: &[u32]) {
    within("every provider to be discovered", async {
        let mut seen = std::collections::BTreeSet::new();
        while !ids.iter().all(|i| seen.contains(i)) {
            match client.whoami().await {
                Ok(id) => {
                    seen.insert(id);
                }
                // The registry's push of a new provider may not have arrived yet.
                Err(e) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("call failed: {e}"),
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Polls `cond` every few milliseconds until it holds (bounded).
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
