//! Calls over a real loopback connection: multiplexing, payloads, errors, context, interceptors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_bytes::ByteBuf;
use stardust::{Client, Context, Error, ErrorKind, Interceptor, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_calls_and_typed_application_errors() {
    let (server, _control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    assert_eq!(calc.div(7, 2).await.unwrap(), Ok(3));
    assert_eq!(calc.div(7, 0).await.unwrap(), Err(DivError::DivideByZero));
    assert_eq!(
        calc.div(i64::MIN, -1).await.unwrap(),
        Err(DivError::Overflow { a: i64::MIN, b: -1 })
    );
    // Unit-returning one-way-style method still gets a response.
    calc.record(5).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_complete_out_of_order_on_one_connection() {
    let (server, mut control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();

    // 50 calls that block until released, interleaved with 500 that complete at once.
    let mut gated = Vec::new();
    for key in 0..50u64 {
        let c = calc.clone();
        gated.push((key, tokio::spawn(async move { c.gate(key).await })));
    }
    let mut quick = Vec::new();
    for i in 0..500i64 {
        let c = calc.clone();
        quick.push(tokio::spawn(async move { (i, c.add(i, 1).await) }));
    }
    for q in quick {
        let (i, r) = within("quick call", q).await.unwrap();
        assert_eq!(r.unwrap(), i + 1);
    }
    // Every gated call is still in flight (the quick ones overtook them).
    let mut entered = 0;
    while entered < 50 {
        if let Event::Entered(_) = control.next().await {
            entered += 1;
        }
    }
    assert!(gated.iter().all(|(_, h)| !h.is_finished()));
    // Entered is reported from a handler's first poll, just before its call becomes a task of
    // its own and counts as running: wait for the count.
    within("every gated handler to count as running", async {
        while server.in_flight() != 50 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Release in reverse order; each response must reach its own caller.
    for key in (0..50u64).rev() {
        control.release(key);
    }
    for (key, h) in gated {
        assert_eq!(within("gated call", h).await.unwrap().unwrap(), key);
    }
    within("in-flight count to drop", async {
        while server.in_flight() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        server.connection_count(),
        1,
        "all calls shared one connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_payload_round_trips() {
    let (server, _control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    let data: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let back = calc.echo(ByteBuf::from(data.clone())).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back.into_vec() == data);
    // The connection is still fine for small calls afterwards.
    assert_eq!(calc.add(2, 2).await.unwrap(), 4);
}

/// Busy polling on both sides (or off on the client) changes timing only: sequential calls,
/// a burst of concurrent ones, a pause long enough for every spin to miss, large frames arriving
/// in pieces, and calls again afterwards all get their own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_on_either_side_changes_nothing_but_timing() {
    let spin = Duration::from_micros(50);
    let (server, _control) =
        start_server_with(Server::builder().allow_anonymous().busy_poll(spin)).await;
    for budget in [spin, Duration::ZERO] {
        let client = Client::builder()
            .busy_poll(budget)
            .connect(server.local_addr())
            .await
            .unwrap();
        let calc = CalcClient::new(client);
        for round in 0..3i64 {
            for i in 0..200 {
                assert_eq!(calc.add(i, round).await.unwrap(), i + round);
            }
            let burst = (0..64i64).map(|i| {
                let c = calc.clone();
                async move { (i, c.add(i, 1000).await.unwrap()) }
            });
            for (i, sum) in within("a burst", futures::future::join_all(burst)).await {
                assert_eq!(sum, i + 1000);
            }
            let data: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
            let back = calc.echo(ByteBuf::from(data.clone())).await.unwrap();
            assert!(back.into_vec() == data);
            // Longer than any spin: the next waits sleep (and the policies back off).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_server_share_a_client() {
    let (server, _control) = start_server().await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let calc = CalcClient::new(client.clone());
    let greeter = GreeterClient::new(client);
    assert_eq!(calc.add(20, 22).await.unwrap(), 42);
    assert_eq!(greeter.greet("ada".into()).await.unwrap(), "hello, ada");
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_describe_the_service() {
    let d = CalcClient::DESCRIPTOR;
    assert_eq!(d.name, "test.Calc");
    assert_eq!(d.version, "1.2.3");
    let names: Vec<_> = d.methods.iter().map(|m| m.name).collect();
    assert_eq!(
        names,
        [
            "add",
            "div",
            "echo",
            "gate",
            "boom",
            "context",
            "relay",
            "subscribe",
            "blob",
            "record"
        ]
    );
    assert!(
        d.methods
            .iter()
            .find(|m| m.name == "record")
            .unwrap()
            .idempotent
    );
    assert!(!d.methods[0].idempotent);
    assert_eq!(GreeterClient::DESCRIPTOR.name, "test.Greeter");
    assert_eq!(GreeterClient::DESCRIPTOR.version, "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_sees_its_context_and_nested_calls_inherit_it() {
    let (server, _control) = start_server().await;
    let client = Client::builder()
        .timeout(Duration::from_secs(60))
        .handshake_metadata("app", "web")
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client.with_metadata("tag", "blue"));
    let info = calc.context().await.unwrap();
    assert_eq!(info.service, "test.Calc");
    assert_eq!(info.method, "context");
    assert_ne!(info.trace_id, 0);
    assert_eq!(info.tag.as_deref(), Some("blue"));
    assert_eq!(
        info.app.as_deref(),
        Some("web"),
        "connection metadata from the handshake"
    );
    assert!(info.peer_known);
    let remaining = info.remaining_ms.expect("calls carry a deadline");
    assert!(remaining > 0 && remaining <= 60_000, "{remaining}");

    // A call made from inside a handler keeps the trace id and at most the remaining deadline.
    let relayed = CalcClient::new(client.with_timeout(Duration::from_secs(20)))
        .relay(server.local_addr().to_string())
        .await
        .unwrap();
    assert_ne!(relayed.trace_id, 0);
    assert!(relayed.remaining_ms.unwrap() <= 20_000);
    assert!(Context::current().is_none(), "no context outside handlers");
}

/// (method, trace id, outcome) of every call the interceptor saw finish.
type Seen = Arc<parking_lot::Mutex<Vec<(String, u64, Result<(), ErrorKind>)>>>;

struct Recorder {
    seen: Seen,
    before: Arc<AtomicUsize>,
}

impl Interceptor for Recorder {
    fn before_call(&self, ctx: &Context) -> Result<(), Error> {
        self.before.fetch_add(1, Ordering::SeqCst);
        if ctx.method() == "div" && ctx.metadata().get("deny").is_some() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "div is denied for this caller",
            ));
        }
        Ok(())
    }

    fn after_call(&self, ctx: &Context, outcome: Result<(), &Error>) {
        self.seen.lock().push((
            ctx.method().to_owned(),
            ctx.trace_id(),
            outcome.map_err(|e| e.kind()),
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_interceptor_sees_and_can_reject_calls() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let before = Arc::new(AtomicUsize::new(0));
    let builder = Server::builder().allow_anonymous().interceptor(Recorder {
        seen: seen.clone(),
        before: before.clone(),
    });
    let (server, _control) = start_server_with(builder).await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let calc = CalcClient::new(client.clone());

    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
    let err = CalcClient::new(client.with_metadata("deny", "1"))
        .div(1, 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("div is denied"), "{err}");
    let err = calc.boom("kaboom".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);

    // Nested call: both hops are recorded with the same trace id.
    calc.relay(server.local_addr().to_string()).await.unwrap();

    let seen = seen.lock().clone();
    assert_eq!(before.load(Ordering::SeqCst), 5, "{seen:?}");
    // The rejected call never reached after_call; the others did.
    let methods: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(methods, ["add", "boom", "context", "relay"]);
    assert_eq!(seen[1].2, Err(ErrorKind::Panicked));
    assert_eq!(seen[2].1, seen[3].1, "nested call shares the trace id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_calls_run_without_a_response() {
    let (server, mut control) = start_server().await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let record = CalcClient::DESCRIPTOR.method_index("record").unwrap();
    for v in 0..3u64 {
        client
            .call_one_way(CalcClient::DESCRIPTOR, record, &(v,))
            .await
            .unwrap();
    }
    for v in 0..3u64 {
        control.expect(Event::Recorded(v)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_the_subscribed_client() {
    let (server, control) = start_server().await;
    let client = Client::connect(server.local_addr()).await.unwrap();
    let mut notes = client.notifications();
    let calc = CalcClient::new(client);
    assert_eq!(calc.subscribe("news".into()).await.unwrap(), 1);

    let first = within("welcome notification", notes.recv()).await.unwrap();
    assert_eq!(first.topic(), "news");
    assert_eq!(first.decode::<String>().unwrap(), "welcome to news");

    // Later pushes from outside any call use the stored notifier.
    let notifier = control.notifiers.lock()[0].clone();
    assert!(!notifier.is_closed());
    notifier.notify("news", &42u32).unwrap();
    let second = within("pushed notification", notes.recv()).await.unwrap();
    assert_eq!(second.decode::<u32>().unwrap(), 42);

    // Once the client is gone the notifier says so instead of pretending to deliver.
    drop(calc);
    drop(notes);
    within("notifier sees the disconnect", notifier.closed()).await;
    assert!(notifier.is_closed());
    assert_eq!(
        notifier.notify("news", &1u32).unwrap_err().kind(),
        ErrorKind::ConnectionClosed
    );
}

/// Adds a tag to every call and refuses `div` locally.
struct Tagger {
    after: Arc<AtomicUsize>,
}

impl stardust::ClientInterceptor for Tagger {
    fn before_call(&self, call: &mut stardust::OutgoingCall<'_>) -> Result<(), Error> {
        if call.method.name == "div" {
            return Err(Error::new(
                ErrorKind::Rejected,
                "div is disabled on this client",
            ));
        }
        call.metadata.insert("tag", "from-interceptor");
        Ok(())
    }

    fn after_call(&self, _call: &stardust::OutgoingCall<'_>, outcome: Result<(), &Error>) {
        assert!(outcome.is_ok());
        self.after.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_interceptor_adds_metadata_and_can_refuse_calls() {
    let seen: Seen = Arc::default();
    let before = Arc::new(AtomicUsize::new(0));
    let builder = Server::builder().allow_anonymous().interceptor(Recorder {
        seen,
        before: before.clone(),
    });
    let (server, _control) = start_server_with(builder).await;
    let after = Arc::new(AtomicUsize::new(0));
    let client = Client::builder()
        .interceptor(Tagger {
            after: after.clone(),
        })
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    let info = calc.context().await.unwrap();
    assert_eq!(info.tag.as_deref(), Some("from-interceptor"));
    let err = calc.div(4, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    calc.record(1).await.unwrap();
    assert_eq!(
        before.load(Ordering::SeqCst),
        2,
        "the refused call never reached the provider"
    );
    assert_eq!(
        after.load(Ordering::SeqCst),
        2,
        "after_call ran for the two calls sent"
    );
}
