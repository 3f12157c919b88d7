//! The sidecar agent over loopback, with an embedded registry: a consumer holding no registry
//! credentials calls providers through the agent, which balances, fails over (retrying only
//! idempotent calls lost in flight), shrugs off bad frames from a local client, keeps routing
//! through a registry outage and refuses anything not local. Counted, never timed; every wait
//! is bounded.

mod common;
#[path = "common/logs_service.rs"]
mod logs_service;
#[path = "common/shard_service.rs"]
mod shard_service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{
    CalcClient, CalcImpl, CalcServer, Control, DivError, Event, GreeterImpl, GreeterServer, within,
};
use shard_service::*;
use stardust::balance::{Hedging, RoundRobin, StallDetection};
use stardust::{ErrorKind, MethodDescriptor, Server, ServiceDescriptor, Stardust};
use stardust_registry::RegistryNode;
use tokio::sync::mpsc;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_provider_mid_load_loses_no_idempotent_call() {
    let node = registry().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let mut nodes = [
        Node::start(&node, 0, &tx).await,
        Node::start(&node, 1, &tx).await,
    ];
    // The calls held on purpose must stay where they are: no hedging (it would send a held
    // idempotent call to the other provider) and no stall detection (the holding provider is
    // not hung).
    let agent = start_agent_with(&node, 16, |b| {
        b.session(|s| {
            s.hedging(Hedging::off())
                .stall_detection(StallDetection::off())
        })
    })
    .await;
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

/// `test.Calc` with a method the providers do not have.
static CALC_NOPE: ServiceDescriptor = ServiceDescriptor {
    name: "test.Calc",
    version: "1.2.3",
    methods: &[MethodDescriptor::unary("nope")],
    docs: "",
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

    // A call the consumer gives up on (its future dropped) is cancelled at the agent, which
    // drops its forwarded call, which cancels it on the provider. Several wait at the agent at
    // once, so it drops the one cancelled among others still waiting.
    let held: Vec<_> = [6, 7, 8]
        .into_iter()
        .map(|key| {
            let calc = calc.clone();
            tokio::spawn(async move { calc.gate(key).await })
        })
        .collect();
    let mut entered: Vec<u64> = Vec::new();
    for _ in 0..3 {
        match control.next().await {
            Event::Entered(key) => entered.push(key),
            other => panic!("unexpected {other:?}"),
        }
    }
    entered.sort();
    assert_eq!(entered, [6, 7, 8]);
    held[1].abort();
    control.expect(Event::Dropped(7)).await;
    control.release(6);
    control.release(8);
    for (task, key) in held.into_iter().zip([6, 7, 8]) {
        match within("a held call to end", task).await {
            Ok(answer) => assert_eq!(answer.unwrap(), key),
            Err(e) => assert!(key == 7 && e.is_cancelled(), "{key}: {e}"),
        }
    }

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

/// A graceful agent shutdown lets the calls it is forwarding finish: they are answered, and
/// the shutdown completes once the last one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_shutting_down_answers_the_calls_it_is_forwarding() {
    let node = registry().await;
    let (_provider_star, _provider, mut control) = calc_provider(&node).await;
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let calc = star.client::<CalcClient>();
    within("the provider to be found", async {
        while let Err(e) = calc.add(1, 2).await {
            assert_eq!(e.kind(), ErrorKind::NoProvider, "{e}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let held: Vec<_> = [11, 12]
        .into_iter()
        .map(|key| {
            let calc = calc.clone();
            tokio::spawn(async move { calc.gate(key).await })
        })
        .collect();
    for _ in 0..2 {
        assert!(matches!(control.next().await, Event::Entered(_)));
    }
    let shutdown = tokio::spawn(agent.shutdown());
    // The agent waits for its forwarded calls rather than dropping them.
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished());
    control.release(11);
    control.release(12);
    for (task, key) in held.into_iter().zip([11, 12]) {
        let answer = within("a forwarded call to be answered", task).await;
        assert_eq!(answer.unwrap().unwrap(), key);
    }
    within("the agent to finish shutting down", shutdown)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_the_agent_with_flow_control_end_to_end() {
    use logs_service::*;

    let node = registry().await;
    let provider_star = provider_star(&node).await;
    let service = LogsImpl::default();
    let state = service.0.clone();
    let _provider = provider_star
        .serve(
            Server::builder().serve(LogsServer::new(service)),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let logs = star.client::<LogsClient>();

    // Server streaming, once the agent's registry watch lists the provider.
    let lines: Vec<Line> = within("a tail through the agent", async {
        loop {
            let mut s = logs.tail("app.log".into(), 500).await.expect("open");
            match s.next().await {
                Some(Err(e)) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Some(first) => {
                    let mut all = vec![first.expect("first line")];
                    while let Some(line) = s.next().await {
                        all.push(line.expect("line"));
                    }
                    return all;
                }
                None => panic!("an empty tail"),
            }
        }
    })
    .await;
    assert_eq!(lines.len(), 500);
    assert_eq!(lines[499].text, "app.log:499");

    // Client streaming: 2 MiB, many windows' worth, and the result.
    let chunks = stardust::Stream::iter((0..32).map(|_| vec![3u8; 64 * 1024]));
    let total = within(
        "an upload through the agent",
        logs.upload("f".into(), chunks),
    )
    .await;
    assert_eq!(total.unwrap(), 2 * 1024 * 1024);

    // Both ways.
    let (tx, input) = stardust::Stream::channel(4);
    let mut out = logs.chat("room".into(), input).await.unwrap();
    tx.send("hello".to_owned()).await.unwrap();
    assert_eq!(
        within("an echo", out.next()).await.unwrap().unwrap(),
        "room: hello"
    );
    drop(tx);
    assert!(within("the chat's end", out.next()).await.is_none());

    // A reader that stops: the provider stalls too, through both hops' windows.
    let mut s = logs.flood(64 * 1024).await.unwrap();
    for _ in 0..4 {
        within("an item", s.next()).await.unwrap().unwrap();
    }
    let produced = within("the provider to stall", async {
        let mut last = u64::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = state.produced.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await;
    assert!(produced < 64, "the provider ran ahead: {produced} items");
    // Dropping the consumer's stream cancels it on the provider, through the agent.
    let dropped = state.dropped.notified();
    let mut hang = logs.hang().await.unwrap();
    assert_eq!(
        within("the first item", hang.next())
            .await
            .unwrap()
            .unwrap(),
        1
    );
    drop(hang);
    within("the provider's handler to be dropped", dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_stream_refused_before_its_first_item_opens_on_another_provider() {
    use logs_service::*;

    let node = registry().await;
    // Provider A takes one stream per connection; B takes any number.
    let a_star = provider_star(&node).await;
    let _a = a_star
        .serve(
            Server::builder()
                .max_streams(1)
                .serve(LogsServer::new(LogsImpl::named("A:"))),
            "127.0.0.1:0",
        )
        .await
        .expect("serve A");
    let b_star = provider_star(&node).await;
    let _b = b_star
        .serve(
            Server::builder().serve(LogsServer::new(LogsImpl::named("B:"))),
            "127.0.0.1:0",
        )
        .await
        .expect("serve B");
    let consumer = Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(AGENT_APP.0, AGENT_APP.1)
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .expect("login");
    let logs = consumer.client_with::<LogsClient>(RoundRobin::new());

    // Park a stream on A, once both providers are listed: A's connection is then full.
    let _parked = within("a stream parked on A", async {
        loop {
            let mut s = logs.park().await.expect("open");
            match s.next().await {
                Some(Ok(name)) if name == "A:" => return s,
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == ErrorKind::NoProvider => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    // Round robin sends every other stream to A, which refuses it (Overloaded) before its first
    // item: each is opened on B instead, and none fails.
    for i in 0..6 {
        let mut s = logs.tail(format!("f{i}"), 3).await.expect("open");
        let mut lines = Vec::new();
        while let Some(line) = within("a line", s.next()).await {
            lines.push(line.expect("no stream fails").text);
        }
        assert_eq!(lines, [0, 1, 2].map(|n| format!("B:f{i}:{n}")));
    }
}

/// Calls that wait on a named gate until a later call opens it (one `hold` per `release`), as
/// a lock or a queue a consumer drives itself.
#[stardust::service(name = "test.Gate", version = "1.0.0")]
trait Gate {
    /// Waits until one `release(key)`, then returns `key`.
    async fn hold(&self, key: u64) -> u64;
    /// Lets one `hold(key)`, present or future, return.
    async fn release(&self, key: u64);
}

#[derive(Clone, Default)]
struct GateImpl {
    gates: Arc<parking_lot::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Semaphore>>>>,
}

impl GateImpl {
    fn gate(&self, key: u64) -> Arc<tokio::sync::Semaphore> {
        let mut gates = self.gates.lock();
        let gate = gates
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0)));
        gate.clone()
    }
}

impl Gate for GateImpl {
    async fn hold(&self, key: u64) -> u64 {
        self.gate(key).acquire().await.expect("open").forget();
        key
    }

    async fn release(&self, key: u64) {
        self.gate(key).add_permits(1);
    }
}

/// A consumer cancels a call waiting at the provider, then sends a call that would have let
/// the cancelled one finish: the agent must tell the provider about the cancel before it
/// forwards the later call (the consumer sent them in that order). Were it the other way
/// round, the cancelled `hold` would take the `release`, and the next `hold` would wait for
/// ever. Repeated, as the window is narrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_provider_before_what_the_consumer_sent_after_it() {
    let node = registry().await;
    let provider_star = provider_star(&node).await;
    let _provider = provider_star
        .serve(
            Server::builder().serve(GateServer::new(GateImpl::default())),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    let agent = start_agent(&node, 16).await;
    let star = consumer(&agent).await;
    let gate = star.client::<GateClient>();
    within("the provider to be found", async {
        while let Err(e) = gate.release(0).await {
            assert_eq!(e.kind(), ErrorKind::NoProvider, "{e}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for key in 1..=100u64 {
        let mut held = Box::pin(gate.hold(key));
        // Polled once: the request is on its way. Dropped: the call is cancelled.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(held.as_mut().poll(&mut cx).is_pending());
        drop(held);
        gate.release(key).await.unwrap();
        let again = within("a hold after its cancelled twin", gate.hold(key)).await;
        assert_eq!(again.unwrap(), key);
    }
}
