//! The `test.Shard` service, its provider processes and the sidecar agent of the sidecar
//! tests (`sidecar.rs`, `sidecar_local.rs`): an embedded registry, providers whose answers say
//! which one took the call, with gates that hold calls, and callers that count.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::common::within;
use stardust::agent::Agent;
use stardust::{ErrorKind, Server, Stardust};
use stardust_registry::{Config, RegistryNode};
use tokio::sync::{Semaphore, mpsc};

pub const PROVIDER: (&str, &str) = ("shard-provider", "provider-secret");
/// The app the agent logs in as; local applications call with its rights.
pub const AGENT_APP: (&str, &str) = ("web", "web-secret");

/// A service whose answers say which provider took the call.
#[stardust::service(name = "test.Shard", version = "1.0.0")]
pub trait Shard {
    /// The provider's number (idempotent: safe to retry).
    #[stardust(idempotent)]
    async fn whoami(&self) -> u32;
    /// Waits until the test opens the provider's gate (idempotent).
    #[stardust(idempotent)]
    async fn hold(&self) -> u32;
    /// Waits until the test opens the provider's gate (not idempotent).
    async fn hold_once(&self) -> u32;
}

/// A service nobody provides.
#[stardust::service(name = "test.Nobody", version = "1.0.0")]
pub trait Nobody {
    async fn ping(&self) -> u32;
}

#[derive(Clone)]
pub struct ShardImpl {
    pub id: u32,
    pub calls: Arc<AtomicU64>,
    pub gate: Arc<Semaphore>,
    pub entered: mpsc::UnboundedSender<(u32, &'static str)>,
}

impl ShardImpl {
    pub async fn held(&self, kind: &'static str) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.entered.send((self.id, kind));
        self.gate.acquire().await.expect("gate").forget();
        self.id
    }
}

impl Shard for ShardImpl {
    async fn whoami(&self) -> u32 {
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

/// A development registry (any app may log in) with leases far longer than the heartbeat.
pub async fn registry() -> RegistryNode {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stardust-sidecar-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    RegistryNode::builder()
        .config(
            Config::dev()
                .with_lease_ttl(Duration::from_secs(30))
                .with_key_file(dir.join("keys.toml")),
        )
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

pub async fn provider_star(node: &RegistryNode) -> Stardust {
    Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(PROVIDER.0, PROVIDER.1)
        .heartbeat(Duration::from_millis(200))
        .connect()
        .await
        .expect("provider login")
}

pub async fn start_agent(node: &RegistryNode, max_services: usize) -> Agent {
    start_agent_with(node, max_services, |b| b).await
}

pub async fn start_agent_with(
    node: &RegistryNode,
    max_services: usize,
    tune: impl FnOnce(stardust::agent::AgentBuilder) -> stardust::agent::AgentBuilder,
) -> Agent {
    tune(Agent::builder())
        .registry(node.local_addr().to_string())
        .app(AGENT_APP.0, AGENT_APP.1)
        .listen("127.0.0.1:0")
        .max_services(max_services)
        .session(|s| {
            s.heartbeat(Duration::from_millis(200))
                .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        })
        .start()
        .await
        .expect("agent")
}

/// A consumer that knows nothing but the agent's address.
pub async fn consumer(agent: &Agent) -> Stardust {
    Stardust::builder()
        .via_agent(agent.local_addr().to_string())
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("connect to the agent")
}

/// One provider process: its own registry session, server and counters.
pub struct Node {
    pub star: Option<Stardust>,
    pub provider: Option<stardust::Provider>,
    pub calls: Arc<AtomicU64>,
    pub gate: Arc<Semaphore>,
}

impl Node {
    pub async fn start(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
    ) -> Node {
        let star = provider_star(node).await;
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let service = ShardImpl {
            id,
            calls: calls.clone(),
            gate: gate.clone(),
            entered: entered.clone(),
        };
        let provider = star
            .serve(
                Server::builder().serve(ShardServer::new(service)),
                "127.0.0.1:0",
            )
            .await
            .expect("serve");
        Node {
            star: Some(star),
            provider: Some(provider),
            calls,
            gate,
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// The process dies: its server stops at once (connections cut, no drain) and its registry
    /// session ends, without deregistering first.
    pub fn crash(&mut self) {
        let star = self.star.take();
        drop(self.provider.take());
        drop(star);
    }
}

/// Calls `whoami` until every one of `ids` has answered (the agent knows all providers).
pub async fn wait_for_providers(client: &ShardClient, ids: &[u32]) {
    within("every provider to be reachable through the agent", async {
        let mut seen = std::collections::BTreeSet::new();
        while !ids.iter().all(|i| seen.contains(i)) {
            match client.whoami().await {
                Ok(id) => {
                    seen.insert(id);
                }
                // The registry's push of a new provider may not have reached the agent yet.
                Err(e) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("call failed: {e}"),
            }
        }
    })
    .await;
}

pub async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// What one caller of [`load`] saw: answers per provider, and failures.
pub type Tally = (BTreeMap<u32, u64>, Vec<String>);

/// `callers` tasks calling `whoami` until `stop`; each returns its answers per provider and its
/// failures.
pub fn load(
    client: &ShardClient,
    callers: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..callers)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut by_provider = BTreeMap::new();
                let mut failed = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match client.whoami().await {
                        Ok(id) => *by_provider.entry(id).or_default() += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                (by_provider, failed)
            })
        })
        .collect()
}

pub async fn total(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = BTreeMap::new();
    let mut failed = Vec::new();
    for t in tasks {
        let (by, f) = within("a caller to stop", t).await.unwrap();
        for (k, v) in by {
            *all.entry(k).or_default() += v;
        }
        failed.extend(f);
    }
    (all, failed)
}

/// Starts held calls one at a time until provider `victim` holds one of each kind; returns the
/// calls held there (with their kind) and the ones held elsewhere.
#[allow(clippy::type_complexity)]
pub async fn hold_on(
    client: &ShardClient,
    victim: u32,
    entered: &mut mpsc::UnboundedReceiver<(u32, &'static str)>,
) -> (
    Vec<(
        &'static str,
        tokio::task::JoinHandle<Result<u32, stardust::Error>>,
    )>,
    Vec<tokio::task::JoinHandle<Result<u32, stardust::Error>>>,
) {
    let mut on_victim = Vec::new();
    let mut elsewhere = Vec::new();
    for kind in ["hold", "hold_once"] {
        loop {
            let c = client.clone();
            let call = tokio::spawn(async move {
                match kind {
                    "hold" => c.hold().await,
                    _ => c.hold_once().await,
                }
            });
            let (id, k) = within("a held call to start", entered.recv())
                .await
                .unwrap();
            assert_eq!(k, kind);
            if id == victim {
                on_victim.push((kind, call));
                break;
            }
            elsewhere.push(call);
        }
    }
    (on_victim, elsewhere)
}
