//! The sidecar agent over loopback, with an embedded registry: a consumer holding no registry
//! credentials calls providers through the agent, which balances, fails over (retrying only
//! idempotent calls lost in flight), shrugs off bad frames from a local client, keeps routing
//! through a registry outage and refuses anything not local. Counted, never timed; every wait
//! is bounded.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{
    CalcClient, CalcImpl, CalcServer, Control, DivError, Event, GreeterImpl, GreeterServer, within,
};
use stardust::agent::Agent;
use stardust::balance::RoundRobin;
use stardust::protocol::frame::{self, Header, Kind};
use stardust::protocol::message::{self, Hello, RequestHead};
use stardust::{ErrorKind, Metadata, MethodDescriptor, Server, ServiceDescriptor, Stardust};
use stardust_registry::{Config, RegistryNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

const PROVIDER: (&str, &str) = ("shard-provider", "provider-secret");
/// The app the agent logs in as; local applications call with its rights.
const AGENT_APP: (&str, &str) = ("web", "web-secret");

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
struct ShardImpl {
    id: u32,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<(u32, &'static str)>,
}

impl ShardImpl {
    async fn held(&self, kind: &'static str) -> u32 {
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
async fn registry() -> RegistryNode {
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

async fn provider_star(node: &RegistryNode) -> Stardust {
    Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(PROVIDER.0, PROVIDER.1)
        .heartbeat(Duration::from_millis(200))
        .connect()
        .await
        .expect("provider login")
}

async fn start_agent(node: &RegistryNode, max_services: usize) -> Agent {
    start_agent_with(node, max_services, |b| b).await
}

async fn start_agent_with(
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
async fn consumer(agent: &Agent) -> Stardust {
    Stardust::builder()
        .via_agent(agent.local_addr().to_string())
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("connect to the agent")
}

/// One provider process: its own registry session, server and counters.
struct Node {
    star: Option<Stardust>,
    provider: Option<stardust::Provider>,
    calls: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
}

impl Node {
    async fn start(
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

/// Calls `whoami` until every one of `ids` has answered (the agent knows all providers).
async fn wait_for_providers(client: &ShardClient, ids: &[u32]) {
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

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// What one caller of [`load`] saw: answers per provider, and failures.
type Tally = (BTreeMap<u32, u64>, Vec<String>);

/// `callers` tasks calling `whoami` until `stop`; each returns its answers per provider and its
/// failures.
fn load(
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

async fn total(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_credentials_reaches_both_providers_through_the_agent() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let nodes = [
        Node::start(&node, 0, &tx).await,
        Node::start(&node, 1, &tx).await,
    ];
    let agent = start_agent_with(&node, 16, |b| b.balancer(RoundRobin::new)).await;
    let star = consumer(&agent).await;
    assert_eq!(star.app(), "", "the consumer holds no app credentials");
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0, 1]).await;

    // 8 callers at once, 50 calls each: the agent's balancer takes the providers in turn.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..50 {
                    ids.push(client.whoami().await.expect("call through the agent"));
                }
                ids
            })
        })
        .collect();
    let mut per = [0u64; 2];
    for c in callers {
        for id in within("the callers", c).await.unwrap() {
            per[id as usize] += 1;
        }
    }
    assert_eq!(per, [200, 200]);
    // What the providers counted includes the discovery calls above.
    assert!(nodes[0].calls() >= per[0] && nodes[1].calls() >= per[1]);
    // The agent tracks one service, and the consumer has one connection to it.
    assert_eq!(agent.services(), 1);
    assert_eq!(agent.connection_count(), 1);
}

/// Starts held calls one at a time until provider `victim` holds one of each kind; returns the
/// calls held there (with their kind) and the ones held elsewhere.
#[allow(clippy::type_complexity)]
async fn hold_on(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_provider_mid_load_loses_no_idempotent_call() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = [
        Node::start(&node, 0, &tx).await,
        Node::start(&node, 1, &tx).await,
    ];
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0, 1]).await;

    // In flight on the victim when it dies: an idempotent call and one that is not. The agent
    // sees only the request's flag.
    let (on_victim, elsewhere) = hold_on(&client, 0, &mut entered).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 8, &stop, &done);
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
    stop.store(true, Ordering::SeqCst);
    nodes[1].open_gate();

    let (by_provider, failed) = total(callers).await;
    assert!(failed.is_empty(), "idempotent calls failed: {failed:?}");
    assert!(by_provider.values().sum::<u64>() >= 600, "{by_provider:?}");
    assert!(by_provider.get(&1).copied().unwrap_or(0) > 0);

    for (kind, call) in on_victim {
        let result = within("a held call on the victim", call).await.unwrap();
        match kind {
            // Retried by the agent on the survivor, which answered once its gate opened.
            "hold" => assert_eq!(result.unwrap(), 1),
            // Not idempotent: the agent does not send it again, and says why.
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::ConnectionClosed, "{err}");
                assert!(err.message().starts_with("outcome unknown"), "{err}");
                assert!(err.message().contains("test.Shard.hold_once"), "{err}");
            }
        }
    }
    for call in elsewhere {
        assert_eq!(
            within("a held call on the survivor", call)
                .await
                .unwrap()
                .unwrap(),
            1
        );
    }
}

// ------------------------------------------------------------------------ raw local clients

fn hello_frame() -> BytesMut {
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "raw-test".into(),
        max_frame: None,
        meta: Default::default(),
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    out
}

fn request_frame(id: u64, service: &str, method: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let meta = Metadata::new();
    let head = RequestHead {
        id,
        flags: 0,
        service,
        method,
        timeout_us: 10_000_000,
        trace_id: 7,
        meta: &meta,
    };
    // No arguments: an empty array.
    message::put_request(&mut out, &head, &[0u8; 0], u32::MAX).unwrap();
    out
}

/// A raw connection that reads one frame at a time.
struct Raw {
    sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn handshaken(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(&hello_frame()).await;
        let (h, _) = raw.frame().await.expect("HelloAck");
        assert_eq!(h.kind, Kind::HelloAck as u8);
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once the agent closed the connection.
    async fn frame(&mut self) -> Option<(Header, Vec<u8>)> {
        within("a frame from the agent", async {
            loop {
                if let Ok(Some(h)) = frame::parse_header(&self.buf, u32::MAX)
                    && self.buf.len() >= h.frame_len()
                {
                    let f = self.buf.split_to(h.frame_len());
                    return Some((h, f[frame::HEADER_LEN..].to_vec()));
                }
                let mut chunk = [0u8; 4096];
                match self.sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// Reads until the GoAway; returns its error.
    async fn goaway(&mut self) -> stardust::Error {
        while let Some((h, body)) = self.frame().await {
            if h.kind == Kind::GoAway as u8 {
                return message::parse_error(&body);
            }
        }
        panic!("the connection closed without a GoAway");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_from_a_local_client_get_a_clear_error_and_spare_the_others() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let _nodes = [Node::start(&node, 0, &tx).await];
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0]).await;

    // A well-behaved consumer calls throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let callers = load(&client, 2, &stop, &done);

    // A malformed request body: that request is answered with an error, the connection lives on
    // and its next, valid request goes through.
    let mut raw = Raw::handshaken(agent.local_addr()).await;
    let mut bad = BytesMut::new();
    let start = frame::begin(&mut bad, Kind::Request, 0, 41);
    bad.extend_from_slice(&[0x96, 0xc1, 0xc1]);
    frame::finish(&mut bad, start, u32::MAX).unwrap();
    raw.send(&bad).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 41));
    assert_eq!(message::parse_error(&body).kind(), ErrorKind::Protocol);
    raw.send(&request_frame(42, "test.Shard", "whoami")).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Response as u8, 42));
    assert_eq!(rmp_serde::from_slice::<u32>(&body).unwrap(), 0);

    // A frame whose length field is impossible: the stream cannot be trusted any more, so the
    // agent says why and closes that connection.
    raw.send(&[0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1]).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("frame length 3"), "{err}");
    assert!(raw.frame().await.is_none());

    // A request before any handshake.
    let mut raw = Raw::connect(agent.local_addr()).await;
    raw.send(&request_frame(1, "test.Shard", "whoami")).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.message().contains("Hello"), "{err}");

    // Plain garbage.
    let mut raw = Raw::connect(agent.local_addr()).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n").await;
    let err = raw.goaway().await;
    assert!(
        matches!(err.kind(), ErrorKind::FrameTooLarge | ErrorKind::Protocol),
        "{err}"
    );

    // The consumer never noticed.
    let before = done.load(Ordering::SeqCst);
    wait_until("more calls after the bad clients", || {
        done.load(Ordering::SeqCst) >= before + 50
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (by_provider, failed) = total(callers).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(by_provider[&0] >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_unknown_service_names_are_answered_and_bounded() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let _nodes = [Node::start(&node, 0, &tx).await];
    let agent = start_agent(&node, 8).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0]).await;

    let mut raw = Raw::handshaken(agent.local_addr()).await;
    for i in 0..60u64 {
        let service = format!("bogus.Service{i}");
        raw.send(&request_frame(i + 1, &service, "anything")).await;
        let (h, body) = raw.frame().await.unwrap();
        assert_eq!((h.kind, h.id), (Kind::Error as u8, i + 1));
        let err = message::parse_error(&body);
        assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
        assert!(err.message().contains(&format!("`{service}`")), "{err}");
        assert!(
            agent.services() <= 8,
            "{} services tracked",
            agent.services()
        );
    }
    // A name no registry would take is refused without a lookup.
    raw.send(&request_frame(100, &"x".repeat(5000), "m")).await;
    let (h, body) = raw.frame().await.unwrap();
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 100));
    assert_eq!(message::parse_error(&body).kind(), ErrorKind::NoProvider);

    // The real service was evicted long ago; it is looked up again and still works.
    assert_eq!(within("a real call", client.whoami()).await.unwrap(), 0);
    assert!(agent.services() <= 8);
    // The registry forgot the evicted ones too: the agent unsubscribes as it evicts.
    within(
        "the registry's subscriptions to follow the agent's table",
        async {
            while node.subscriptions() > 8 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_leaves_the_cached_lists_working() {
    let node = registry().await;
    let (tx, _entered) = mpsc::unbounded_channel();
    let nodes = [
        Node::start(&node, 0, &tx).await,
        Node::start(&node, 1, &tx).await,
    ];
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let client = star.client::<ShardClient>();
    wait_for_providers(&client, &[0, 1]).await;

    node.shutdown().await;
    let mut per = [0u64; 2];
    for _ in 0..200 {
        let id = within("a call during the outage", client.whoami())
            .await
            .expect("the cached list keeps working");
        per[id as usize] += 1;
    }
    assert_eq!(per[0] + per[1], 200);
    assert!(nodes.iter().all(|n| n.calls() > 0));

    // A service the agent never looked up cannot be resolved now, and the consumer is told.
    let nobody = star.client::<NobodyClient>();
    let err = within("a lookup during the outage", nobody.ping())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_is_served() {
    // Listening anywhere else is refused before anything else happens.
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let err = Agent::builder()
            .registry("127.0.0.1:1")
            .app(AGENT_APP.0, AGENT_APP.1)
            .listen(addr)
            .start()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(err.message().contains("loopback"), "{err}");
    }

    // A peer with a non-loopback address is turned away. Such a peer exists only if this host
    // has a non-loopback address to connect from (the check itself is unit-tested in the
    // runtime).
    let node = registry().await;
    let agent = start_agent(&node, 16).await;
    let test = "only_loopback_is_served (a non-loopback peer)";
    let Some(outside) = non_loopback_ip() else {
        common::external::missing(test, "this host has no non-loopback address");
        return;
    };
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Err(e) = sock.bind(SocketAddr::new(outside, 0)) {
        common::external::missing(test, &format!("cannot bind {outside}: {e}"));
        return;
    }
    let sock = match sock.connect(agent.local_addr()).await {
        Ok(sock) => sock,
        Err(e) => {
            let why = format!("cannot reach loopback from {outside}: {e}");
            common::external::missing(test, &why);
            return;
        }
    };
    let mut raw = Raw {
        sock,
        buf: BytesMut::new(),
    };
    raw.send(&hello_frame()).await;
    let err = raw.goaway().await;
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.message().contains("not a loopback address"), "{err}");
    // Local applications are still welcome.
    let local = Raw::handshaken(agent.local_addr()).await;
    drop(local);
}

/// This host's address on its default route, if it has one (no packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    udp.connect("192.0.2.1:9").ok()?;
    let ip = udp.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `test.Calc` with a method the providers do not have.
static CALC_NOPE: ServiceDescriptor = ServiceDescriptor {
    name: "test.Calc",
    version: "1.2.3",
    methods: &[MethodDescriptor {
        name: "nope",
        idempotent: false,
    }],
};

async fn calc_provider(node: &RegistryNode) -> (Stardust, stardust::Provider, Control) {
    let star = provider_star(node).await;
    let (calc, control) = CalcImpl::new();
    let provider = star
        .serve(
            Server::builder()
                .serve(CalcServer::new(calc))
                .serve(GreeterServer::new(GreeterImpl)),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    (star, provider, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_proxies_through_the_agent_behave_as_direct_ones() {
    let node = registry().await;
    let (_provider_star, _provider, mut control) = calc_provider(&node).await;
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let calc = star.client::<CalcClient>();

    let first = within("the first call", async {
        loop {
            match calc.add(1, 2).await {
                Err(e) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                other => return other,
            }
        }
    })
    .await;
    assert_eq!(first.unwrap(), 3);
    // Application errors arrive typed; framework errors keep their kind.
    assert_eq!(calc.div(1, 0).await.unwrap(), Err(DivError::DivideByZero));
    let err = calc.boom("kaput".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert!(err.message().contains("kaput"), "{err}");
    let err = star
        .client::<CalcClient>()
        .client()
        .call::<_, u32>(&CALC_NOPE, 0, &())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownMethod, "{err}");

    // The provider sees the agent's app as the caller, and the call's metadata, trace id and
    // deadline as the consumer sent them.
    let tagged = CalcClient::new(calc.client().with_metadata("tag", "t-1"));
    let info = tagged.context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some(AGENT_APP.0));
    assert_eq!(info.tag.as_deref(), Some("t-1"));
    assert_ne!(info.trace_id, 0);
    assert!(
        info.remaining_ms.is_some_and(|ms| ms > 0 && ms <= 15_000),
        "{info:?}"
    );
    // Another service of the same app through the same connection.
    let greeter = star.client::<common::GreeterClient>();
    assert_eq!(greeter.greet("agent".into()).await.unwrap(), "hello, agent");
    assert_eq!(agent.services(), 2);

    // A deadline passes through, and the provider stops the handler when it expires (1 s: the
    // handler has started by then even on a loaded machine).
    let short = CalcClient::new(calc.client().with_timeout(Duration::from_secs(1)));
    let err = short.gate(5).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    control.expect(Event::Entered(5)).await;
    control.expect(Event::Dropped(5)).await;

    // One-way calls stay one-way.
    let record = CalcClient::DESCRIPTOR.method_index("record").unwrap();
    calc.client()
        .call_one_way(CalcClient::DESCRIPTOR, record, &(7u64,))
        .await
        .unwrap();
    control.expect(Event::Recorded(7)).await;

    // A service nobody provides.
    let err = star.client::<NobodyClient>().ping().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoProvider, "{err}");
    assert!(err.message().contains("`test.Nobody`"), "{err}");

    // The handle only consumes; the agent is its only way out.
    let err = star
        .serve(
            Server::builder().serve(CalcServer::new(CalcImpl::new().0)),
            "127.0.0.1:0",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(err.message().contains("via_agent"), "{err}");
    let err = Stardust::builder()
        .via_agent(agent.local_addr().to_string())
        .registry(node.local_addr().to_string())
        .connect()
        .await
        .unwrap_err();
    assert!(err.message().contains("via_agent"), "{err}");
}
