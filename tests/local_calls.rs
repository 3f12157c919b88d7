//! In-process calls (`stardust::local`): a client that calls an implementation in its own
//! process, straight (no socket, no serializer), with deadlines, context, interceptors and
//! figures in full mode and none of them in lean mode; through a `Stardust` handle, this
//! process's own instance while it is served, and the network once it stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::within;
use serde::{Deserialize, Serialize};
use stardust::local::LocalMode;
use stardust::{Context, Error, ErrorKind, Interceptor, Server, ServiceClient, Stardust, Stream};
use stardust_registry::{Config, RegistryNode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub text: String,
    /// Never travels: an in-process call hands it over as it is.
    #[serde(skip)]
    pub local_only: u64,
}

/// What the handler saw of its call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub service: Option<String>,
    pub caller: Option<String>,
    pub peer: Option<String>,
    pub deadline: bool,
    pub trace_id: u64,
}

#[stardust::service(name = "test.Local", version = "1.0.0")]
pub trait Local {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn echo(&self, note: Note) -> Note;
    async fn seen(&self) -> Seen;
    async fn sleep(&self, ms: u64) -> u64;
    async fn boom(&self) -> u32;
    async fn count(&self, n: u64) -> Stream<u64>;
}

#[derive(Clone, Default)]
struct LocalImpl {
    /// Which provider this is (0 for the in-process one).
    id: i64,
}

impl Local for LocalImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b + self.id * 1000
    }
    async fn echo(&self, note: Note) -> Note {
        note
    }
    async fn seen(&self) -> Seen {
        Context::with_current(|c| Seen {
            service: c.map(|c| format!("{}.{}", c.service(), c.method())),
            caller: c.and_then(|c| c.caller().map(str::to_owned)),
            peer: c.and_then(|c| c.peer_addr()).map(|p| p.to_string()),
            deadline: c.and_then(|c| c.deadline()).is_some(),
            trace_id: c.map_or(0, |c| c.trace_id()),
        })
    }
    async fn sleep(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
    async fn boom(&self) -> u32 {
        panic!("boom on purpose")
    }
    async fn count(&self, n: u64) -> Stream<u64> {
        Stream::iter(0..n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_client_calls_the_implementation_directly() {
    let client = LocalClient::in_process(&LocalServer::new(LocalImpl::default()));
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    // The hidden in-process trait is in scope here too, and calling the implementation's own
    // method is still unambiguous.
    assert_eq!(LocalImpl { id: 1 }.add(2, 3).await, 1005);
    // No serialization: the skipped field arrives.
    let note = Note {
        text: "hi".into(),
        local_only: 42,
    };
    assert_eq!(client.echo(note.clone()).await.unwrap(), note);
    // The handler has its context: service and method, the client's default deadline, a trace.
    let seen = client.seen().await.unwrap();
    assert_eq!(seen.service.as_deref(), Some("test.Local.seen"));
    assert!(seen.deadline && seen.trace_id != 0, "{seen:?}");
    assert_eq!(seen.caller, None, "no app calls a bare in-process client");
    // A panic is an error, not an unwinding caller.
    let e = client.boom().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked, "{e}");
    assert!(e.message().contains("boom on purpose"), "{e}");
    // Deadlines hold: the handler's future is dropped.
    let e = client
        .with_timeout(Duration::from_millis(20))
        .sleep(60_000)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded, "{e}");
    // Streams need the network.
    let Err(e) = client.count(3).await else {
        panic!("no provider to stream from")
    };
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.message().contains("in-process"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_calls_skip_context_and_deadline() {
    let imp = stardust::Service::local(&LocalServer::new(LocalImpl::default()))
        .expect("generated servers can be called in-process");
    let local = stardust::local::LocalService::from(imp).with_mode(LocalMode::Lean);
    let client = LocalClient::with_local(stardust::Client::builder().in_process(), &local);
    assert_eq!(client.add(40, 2).await.unwrap(), 42);
    let seen = client.seen().await.unwrap();
    assert_eq!(seen.service, None, "no context in lean mode: {seen:?}");
    let e = client.boom().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
}

/// Counts the calls a server's interceptor sees.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicU64>);

impl Interceptor for Counting {
    fn before_call(&self, _: &Context) -> Result<(), Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn registry() -> RegistryNode {
    RegistryNode::builder()
        .config(Config::dev().with_lease_ttl(Duration::from_secs(3600)))
        .http_listen("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

async fn star(node: &RegistryNode, app: &str) -> Stardust {
    Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(app, "secret")
        // Status reports every 50 ms (the lease lasts an hour).
        .heartbeat(Duration::from_millis(50))
        .connect()
        .await
        .expect("login")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stardust_handle_calls_its_own_instance_in_process_while_it_is_served() {
    let node = registry().await;
    // Another process's provider of the same service (id 1), and this process's (id 0).
    let other = star(&node, "other").await;
    let _other = other
        .serve(
            Server::builder().serve(LocalServer::new(LocalImpl { id: 1 })),
            "127.0.0.1:0",
        )
        .await
        .unwrap();
    let me = star(&node, "monolith").await;
    let counting = Counting::default();
    let mine = me
        .serve(
            Server::builder()
                .interceptor(counting.clone())
                .serve(LocalServer::new(LocalImpl { id: 0 })),
            "127.0.0.1:0",
        )
        .await
        .unwrap();

    let client = me.local_client::<LocalClient>();
    for i in 0..50 {
        // Always this process's instance (id 0), never the other one.
        assert_eq!(client.add(i, 1).await.unwrap(), i + 1);
    }
    // The server's interceptors saw every call; the handler sees this app as the caller.
    assert_eq!(counting.0.load(Ordering::SeqCst), 50);
    let seen = client.seen().await.unwrap();
    assert_eq!(seen.caller.as_deref(), Some("monolith"));
    assert_eq!(seen.peer.as_deref(), Some("127.0.0.1:0"), "in-process");
    // The provider's figures count its in-process calls: they reach the registry's metrics.
    let series = format!(
        "stardust_calls_total{{service=\"test.Local\",method=\"add\",instance=\"{}\"}} 50",
        mine.endpoint()
    );
    within("the in-process calls in /metrics", async {
        while !common::registry_metrics(&node)
            .await
            .lines()
            .any(|l| l == series)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Streams go over the network (to either provider).
    let items: Vec<u64> = futures::StreamExt::collect::<Vec<_>>(client.count(3).await.unwrap())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(items, [0, 1, 2]);

    // This process stops serving: calls go through the registry to the other provider.
    mine.shutdown().await;
    within("calls to reach the other provider", async {
        loop {
            match client.add(1, 1).await {
                Ok(1002) => break,
                Ok(2) => panic!("called the stopped provider in-process"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let seen = client.seen().await.unwrap();
    assert_ne!(
        seen.peer.as_deref(),
        Some("127.0.0.1:0"),
        "over the network now"
    );
}
