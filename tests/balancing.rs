//! Load balancing and failover of discovery-backed clients, over loopback with an embedded
//! registry: calls are spread over every provider, providers come and go under load, and a
//! provider's death is hidden from callers wherever that is safe. Everything is counted, never
//! timed; waits are bounded.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::within;
use stardust::balance::{ConsistentHash, RoundRobin};
use stardust::{ErrorKind, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};
use tokio::sync::{Semaphore, mpsc};

const PROVIDER: (&str, &str) = ("where-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");

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
struct WhereImpl {
    id: u32,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<(u32, &'static str)>,
    /// `whoami` waits for the gate too: a provider that has stalled.
    slow: bool,
    /// While set, `whoami` panics: a provider failing every call.
    fail: Arc<AtomicBool>,
}

impl WhereImpl {
    async fn held(&self, kind: &'static str) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let _ = self.entered.send((self.id, kind));
        self.gate.acquire().await.expect("gate").forget();
        self.id
    }
}

impl Where for WhereImpl {
    async fn whoami(&self) -> u32 {
        if self.slow {
            return self.held("whoami").await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            panic!("provider {} fails on purpose", self.id);
        }
        self.id
    }

    async fn bump(&self) -> u32 {
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

fn config() -> Config {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stardust-balance-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Config::new()
        .with_app(PROVIDER.0, AppConfig::with_secret(PROVIDER.1).unwrap())
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_lease_ttl(Duration::from_secs(30))
        .with_key_file(dir.join("keys.toml"))
}

async fn registry() -> RegistryNode {
    RegistryNode::builder()
        .config(config())
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

async fn star(node: &RegistryNode, app: (&str, &str)) -> Stardust {
    star_with(node, app, |b| b).await
}

async fn star_with(
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
struct Node {
    star: Option<Stardust>,
    provider: Option<stardust::Provider>,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    fail: Arc<AtomicBool>,
}

impl Node {
    async fn start(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
    ) -> Node {
        Node::start_with(node, id, entered, false).await
    }

    async fn start_with(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
        slow: bool,
    ) -> Node {
        Node::start_at(node, id, entered, slow, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_at(
        node: &RegistryNode,
        id: u32,
        entered: &mpsc::UnboundedSender<(u32, &'static str)>,
        slow: bool,
        addr: std::net::SocketAddr,
    ) -> Node {
        let star = star(node, PROVIDER).await;
        let calls = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let service = WhereImpl {
            id,
            calls: calls.clone(),
            gate: gate.clone(),
            entered: entered.clone(),
            slow,
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
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn open_gate(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// The process dies: its server stops at once (connections cut, no drain) and its registry
    /// session ends, without deregistering first.
    fn crash(&mut self) {
        let star = self.star.take();
        drop(self.provider.take());
        drop(star);
    }
}

/// Calls `whoami` until every one of `ids` has answered (the consumer knows all providers).
async fn wait_for_providers(client: &WhereClient, ids: &[u32]) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_calls_exactly() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client_with::<WhereClient>(RoundRobin::new());
    wait_for_providers(&client, &[0, 1, 2]).await;

    let before: Vec<u64> = nodes.iter().map(Node::calls).collect();
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..300 {
        *answers.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 100), (1, 100), (2, 100)]));
    for (n, b) in nodes.iter().zip(before) {
        assert_eq!(n.calls() - b, 100);
    }

    // Another proxy of the same handle takes the providers in turn too (its own rotation, the
    // handle's shared connections).
    let other = consumer.client_with::<WhereClient>(RoundRobin::new());
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..30 {
        *answers.entry(other.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_provider_fails_at_once_naming_the_service() {
    let node = registry().await;
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    let err = within("a call with no provider", client.whoami())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.to_string().contains("test.Where"), "{err}");

    // Providers that all crash: the consumer is told there is none, not left waiting.
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut a = Node::start(&node, 0, &tx).await;
    wait_for_providers(&client, &[0]).await;
    a.crash();
    let err = within("a call after the only provider died", async {
        loop {
            match client.whoami().await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.to_string().contains("test.Where"), "{err}");
}

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    idempotent_ok: u64,
    idempotent_failed: Vec<String>,
    once_ok: u64,
    once_unknown: u64,
    once_other: Vec<String>,
    by_provider: HashMap<u32, u64>,
}

/// Callers that alternate idempotent and non-idempotent calls until `stop`.
fn load(
    client: &WhereClient,
    callers: usize,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    (0..callers)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut t = Tally::default();
                while !stop.load(Ordering::SeqCst) {
                    match client.whoami().await {
                        Ok(id) => {
                            t.idempotent_ok += 1;
                            *t.by_provider.entry(id).or_default() += 1;
                        }
                        Err(e) => t.idempotent_failed.push(e.to_string()),
                    }
                    match client.bump().await {
                        Ok(id) => {
                            t.once_ok += 1;
                            *t.by_provider.entry(id).or_default() += 1;
                        }
                        Err(e)
                            if e.kind() == ErrorKind::ConnectionClosed
                                && e.message().starts_with("outcome unknown") =>
                        {
                            t.once_unknown += 1
                        }
                        Err(e) => t.once_other.push(e.to_string()),
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                t
            })
        })
        .collect()
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

async fn total(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut all = Tally::default();
    for t in tasks {
        let t = within("a caller to stop", t).await.unwrap();
        all.idempotent_ok += t.idempotent_ok;
        all.idempotent_failed.extend(t.idempotent_failed);
        all.once_ok += t.once_ok;
        all.once_unknown += t.once_unknown;
        all.once_other.extend(t.once_other);
        for (k, v) in t.by_provider {
            *all.by_provider.entry(k).or_default() += v;
        }
    }
    all
}

/// Starts held calls one at a time until provider `victim` holds one of each kind; returns the
/// calls held there and the ones held elsewhere.
#[allow(clippy::type_complexity)]
async fn hold_on(
    client: &WhereClient,
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
    // `hold_once_retry` is the non-idempotent method called through a handle whose policy
    // retries lost calls anyway.
    for kind in ["hold", "hold_once", "hold_once_retry"] {
        loop {
            let c = client.clone();
            let call = tokio::spawn(async move {
                match kind {
                    "hold" => c.hold().await,
                    "hold_once" => c.hold_once().await,
                    _ => {
                        WhereClient::new(c.client().retry_lost_calls())
                            .hold_once()
                            .await
                    }
                }
            });
            let (id, k) = within("a held call to start", entered.recv())
                .await
                .unwrap();
            assert_eq!(k, if kind == "hold" { "hold" } else { "hold_once" });
            if id == victim {
                on_victim.push((kind, call));
                break;
            }
            elsewhere.push(call);
        }
    }
    (on_victim, elsewhere)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_crash_under_load_is_hidden_where_safe() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;

    // Calls in flight on the victim when it dies: one idempotent, one not, and one not
    // idempotent but retried by the caller's policy.
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 16, &stop, &done);
    wait_until("load before the crash", || {
        done.load(Ordering::SeqCst) >= 300
    })
    .await;

    nodes[0].crash();
    let at_crash = done.load(Ordering::SeqCst);
    wait_until("load after the crash", || {
        done.load(Ordering::SeqCst) >= at_crash + 300
    })
    .await;

    // A fourth provider registering mid-load gets calls.
    nodes.push(Node::start(&node, 3, &tx).await);
    wait_until("the new provider to receive calls", || {
        nodes[3].calls() >= 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for n in &nodes[1..] {
        n.open_gate();
    }
    let tally = total(callers).await;
    assert!(
        tally.idempotent_failed.is_empty(),
        "idempotent calls failed: {:?}",
        tally.idempotent_failed
    );
    assert!(
        tally.once_other.is_empty(),
        "non-idempotent calls failed other than with outcome unknown: {:?}",
        tally.once_other
    );
    assert!(tally.idempotent_ok >= 600 && tally.once_ok > 0);
    assert!(tally.by_provider.get(&3).copied().unwrap_or(0) > 0);

    for (kind, call) in on_victim {
        let result = within("a held call on the victim", call).await.unwrap();
        match kind {
            // Retried on a survivor, which answered once its gate opened.
            "hold" | "hold_once_retry" => {
                assert!(matches!(result, Ok(1..=3)), "{kind}: {result:?}")
            }
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
                assert!(err.message().starts_with("outcome unknown"), "{err}");
                assert!(err.message().contains("hold_once"), "{err}");
            }
        }
    }
    for call in elsewhere {
        within("a held call on a survivor", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_provider_finishes_its_calls_in_flight() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 8, &stop, &done);
    wait_until("load before the deregistration", || {
        done.load(Ordering::SeqCst) >= 200
    })
    .await;

    // Deregisters, then drains: the held calls keep the server (and the consumer's connection
    // to it) open until they finish. The drain has begun once its listener is gone.
    let provider = nodes[0].provider.take().unwrap();
    let addr = provider.local_addr();
    let shutdown = tokio::spawn(provider.shutdown());
    within("the provider to stop accepting", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let at = done.load(Ordering::SeqCst);
    wait_until("load after the drain began", || {
        done.load(Ordering::SeqCst) >= at + 200
    })
    .await;
    let served = nodes[0].calls();
    wait_until("more load", || done.load(Ordering::SeqCst) >= at + 400).await;
    assert_eq!(
        nodes[0].calls(),
        served,
        "no new calls after the drain began"
    );
    assert!(!shutdown.is_finished(), "held calls keep the drain going");

    nodes[0].open_gate();
    for (_, call) in on_victim {
        assert_eq!(within("a held call", call).await.unwrap().unwrap(), 0);
    }
    within("the provider's shutdown", shutdown).await.unwrap();

    stop.store(true, Ordering::SeqCst);
    for n in &nodes[1..] {
        n.open_gate();
    }
    let tally = total(callers).await;
    assert!(
        tally.idempotent_failed.is_empty(),
        "{:?}",
        tally.idempotent_failed
    );
    assert!(tally.once_other.is_empty(), "{:?}", tally.once_other);
    assert_eq!(tally.once_unknown, 0, "a graceful drain loses no call");
    for call in elsewhere {
        within("a held call elsewhere", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_moves_only_a_leavers() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..5 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client_with::<WhereClient>(ConsistentHash::new());
    wait_for_providers(&client, &[0, 1, 2, 3, 4]).await;

    let keyed = |k: u32| WhereClient::new(client.client().with_hash_key(format!("user-{k}")));
    let mut owner = HashMap::new();
    for k in 0..100 {
        let c = keyed(k);
        let first = c.whoami().await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                c.whoami().await.unwrap(),
                first,
                "key {k} stays on one provider"
            );
        }
        owner.insert(k, first);
    }
    let used: std::collections::BTreeSet<u32> = owner.values().copied().collect();
    assert_eq!(used.len(), 5, "keys spread over every provider: {owner:?}");

    // Provider 2 leaves: only its keys move.
    nodes[2].provider.take().unwrap().shutdown().await;
    for k in 0..100 {
        let now = keyed(k).whoami().await.unwrap();
        if owner[&k] == 2 {
            assert_ne!(now, 2, "key {k} left the provider that left");
        } else {
            assert_eq!(now, owner[&k], "key {k} moved although its provider stayed");
        }
    }
}

/// A stalled provider gets tried, then, while it holds that call, no other. Its first call is
/// awaited as an event (under load its connection may come up after the others have answered
/// hundreds of calls); from then on the choice is deterministic: a provider with no answer yet
/// and a call in flight loses every draw to one that has answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_gets_few_calls_under_the_default_strategy() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..2 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // The third provider stalls: it answers nothing until the test releases it.
    nodes.push(Node::start_with(&node, 2, &tx, true).await);
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();

    // One call at a time until both healthy providers have answered and the stalled one holds
    // a call: a provider with no answer yet gets tried, and its stuck call stays in flight.
    let mut answered = std::collections::BTreeSet::new();
    let mut stuck = None;
    within("every provider to be tried", async {
        while answered.len() < 2 || stuck.is_none() {
            let c = client.clone();
            let mut call = tokio::spawn(async move { c.whoami().await });
            tokio::select! {
                id = &mut call => { answered.insert(id.unwrap().unwrap()); }
                e = entered.recv() => {
                    assert_eq!(e, Some((2, "whoami")), "only the stalled provider holds calls");
                    stuck = Some(call);
                }
            }
        }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let (client, stop, done) = (client.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    client.whoami().await.unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    wait_until("1000 calls answered", || {
        done.load(Ordering::SeqCst) >= 1000
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        within("a caller to stop", c).await.unwrap();
    }
    let fast = nodes[0].calls() + nodes[1].calls();
    assert!(fast >= 1000, "the healthy providers answered {fast} calls");
    assert_eq!(
        nodes[2].calls(),
        1,
        "the stalled provider got a call beside the one it holds ({fast} answered elsewhere)"
    );
    nodes[2].open_gate();
    let held = within("the stalled call", stuck.unwrap()).await;
    assert_eq!(held.unwrap().unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_ejected_then_probed_back_in() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    let consumer = star_with(&node, CONSUMER, |b| {
        b.outlier_ejection(3, Duration::from_secs(3))
    })
    .await;
    let client = consumer.client_with::<WhereClient>(RoundRobin::new());
    wait_for_providers(&client, &[0, 1, 2]).await;

    // Provider 0 fails every call: its callers see the failures until it is ejected.
    let before = nodes[0].calls();
    nodes[0].fail.store(true, Ordering::SeqCst);
    let mut failed = 0;
    within("provider 0 to be ejected", async {
        while nodes[0].calls() < before + 3 {
            if let Err(e) = client.whoami().await {
                assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
                failed += 1;
            }
        }
    })
    .await;
    assert_eq!(failed, 3);
    let ejected_at = nodes[0].calls();
    for _ in 0..30 {
        assert_ne!(client.whoami().await.unwrap(), 0);
    }
    assert_eq!(
        nodes[0].calls(),
        ejected_at,
        "an ejected provider gets no calls"
    );

    // It recovers; after the ejection a probe finds it healthy and it is back in the rotation.
    nodes[0].fail.store(false, Ordering::SeqCst);
    within("provider 0 to be probed back in", async {
        while nodes[0].calls() == ejected_at {
            client.whoami().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut answers: BTreeMap<u32, u64> = BTreeMap::new();
    for _ in 0..30 {
        *answers.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(answers, BTreeMap::from([(0, 10), (1, 10), (2, 10)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_when_the_retry_budget_is_spent() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Node::start(&node, id, &tx).await);
    }
    // No floor and no share: no call is ever retried.
    let consumer = star_with(&node, CONSUMER, |b| b.retry_budget(0, 0.0)).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0, 1, 2]).await;
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;
    nodes[0].crash();
    for (kind, call) in on_victim {
        let err = within("a held call on the victim", call)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
        if kind != "hold_once" {
            // Retryable (idempotent, or by the caller's policy), but the budget says no.
            assert!(err.message().contains("retry budget"), "{kind}: {err}");
        } else {
            assert!(err.message().starts_with("outcome unknown"), "{err}");
        }
    }
    for n in &nodes[1..] {
        n.open_gate();
    }
    for call in elsewhere {
        within("a held call elsewhere", call)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_restarted_at_the_same_address_is_reconnected() {
    let node = registry().await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut first = Node::start(&node, 0, &tx).await;
    let addr = first.provider.as_ref().unwrap().local_addr();
    let consumer = star(&node, CONSUMER).await;
    let client = consumer.client::<WhereClient>();
    wait_for_providers(&client, &[0]).await;

    first.crash();
    let _second = Node::start_at(&node, 1, &tx, false, addr).await;
    // Calls reach the new process at the same address over a new connection. While the
    // registry's view catches up a call may find no provider (tolerated); nothing else fails.
    wait_for_providers(&client, &[1]).await;
    for _ in 0..10 {
        assert_eq!(client.whoami().await.unwrap(), 1);
    }
}
