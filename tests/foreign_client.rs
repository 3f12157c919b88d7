//! A Stardust client written only from `docs/PROTOCOL.md`, talking to a real Stardust server.
//!
//! The client side uses nothing from `stardust` — in particular no `stardust::protocol` item —
//! only `std::net::TcpStream` (blocking, with 10 s read/write timeouts so nothing can hang) and
//! the low-level `rmp` functions, the way a developer in another language would use their
//! MessagePack library. If these tests pass, the document is sufficient to implement a client.
//!
//! The server side is the real runtime hosting a hand-written `stardust::Service` (the proc
//! macro is not needed). Each test runs the server on a multi-threaded tokio runtime and the
//! blocking client inside `spawn_blocking`. All waits are bounded; nothing sleeps to
//! synchronise.

#[path = "foreign_client/calc_server.rs"]
mod calc_server;
#[path = "foreign_client/doc_client.rs"]
mod doc_client;

use std::net::Shutdown;
use std::time::Duration;

use calc_server::*;
use doc_client::*;
use stardust::Server;

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_client_talks_to_a_stardust_server() {
    let TestServer {
        server,
        shared: _shared,
        events,
    } = start(Server::builder().allow_anonymous()).await;
    let addr = server.local_addr();

    client(move || {
        // Handshake (§3).
        let (mut c, ack) = Conn::handshake_with(addr, 16 * 1024 * 1024);
        assert_eq!(ack.get("max_frame"), Some(&int(16 * 1024 * 1024)));
        assert!(
            ack.get("agent")
                .unwrap()
                .as_str()
                .starts_with("stardust-rust/"),
            "{ack:?}"
        );

        // calc.Calculator.add(1, 2), byte for byte the example of §14.3, answered by the
        // example of §14.4.
        let body = request_body(
            "calc.Calculator",
            "add",
            5_000_000,
            0x0123_4567_89ab_cdef,
            &[],
            vec![int(1), int(2)],
        );
        let request = frame_bytes(REQUEST, 0, 1, &body);
        assert_eq!(request, doc_frame("request_add"));
        c.send_raw(&request);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("response_add"));
        assert_eq!(f.value(), int(3));

        // A slow and a fast call pipelined in one write: the fast one is answered first (§1).
        let mut both = frame_bytes(
            REQUEST,
            0,
            10,
            &request_body("calc.Calculator", "hold", 10_000_000, 1, &[], vec![]),
        );
        both.extend(frame_bytes(
            REQUEST,
            IDEMPOTENT,
            11,
            &request_body(
                "calc.Calculator",
                "add",
                10_000_000,
                2,
                &[],
                vec![int(20), int(22)],
            ),
        ));
        c.send_raw(&both);
        assert_eq!(c.response(11), int(42));
        // Let the slow call finish: two answers, ids 10 and 12, in either order.
        c.call(12, "release", vec![]);
        let mut answered = Vec::new();
        for _ in 0..2 {
            let f = c.recv();
            assert_eq!(f.kind, RESPONSE, "{f:?}");
            answered.push((f.id, f.value()));
        }
        answered.sort_by_key(|(id, _)| *id);
        assert_eq!(answered, [(10, s("held")), (12, V::Nil)]);

        // The same pipelining with a real timer: sleep(1 s) then add, in one write, so both
        // reach the server together and the add's head start is the whole second.
        let req = |id, method, args| {
            let body = request_body("calc.Calculator", method, 10_000_000, 0, &[], args);
            frame_bytes(REQUEST, 0, id, &body)
        };
        let (sleep, add) = (
            req(13, "sleep", vec![int(1000)]),
            req(14, "add", vec![int(2); 2]),
        );
        c.send_raw(&[sleep, add].concat());
        assert_eq!(c.response(14), int(4));
        assert_eq!(c.response(13), int(1000));

        // Framework errors are typed Error frames (§4, §5); §14.5 byte for byte.
        c.call(2, "mul", vec![int(1), int(2)]);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("error_unknown_method"));
        assert_eq!(
            f.error(),
            (
                3,
                "service `calc.Calculator` has no method `mul`".to_owned()
            )
        );
        c.call_flags(15, 0, "calc.Nope", "add", vec![int(1), int(2)]);
        assert_eq!(c.error(15).0, 2, "UnknownService");
        c.call(16, "add", vec![s("x"), int(2)]);
        assert_eq!(c.error(16).0, 4, "InvalidArguments");
        c.call(17, "add", vec![int(1)]);
        assert_eq!(c.error(17).0, 4, "a missing non-Option argument");

        // A malformed request body fails only that request (§11).
        c.send(
            REQUEST,
            0,
            18,
            &V::Arr(vec![s("calc.Calculator"), s("add")]).to_bytes(),
        );
        assert_eq!(c.error(18).0, 13, "Protocol");
        c.send(REQUEST, 0, 19, &[0xc1]);
        assert_eq!(c.error(19).0, 13, "Protocol");
        c.call(20, "add", vec![int(1), int(1)]);
        assert_eq!(c.response(20), int(2), "the connection survived");

        // Application errors are values: Result as {"Ok": v} / {"Err": e} in a Response (§4).
        c.call(21, "div", vec![int(6), int(3)]);
        assert_eq!(c.response(21), map(&[("Ok", int(2))]));
        c.call(22, "div", vec![int(1), int(0)]);
        let f = c.recv();
        assert_eq!((f.kind, f.id), (RESPONSE, 22));
        assert_eq!(
            f.body,
            [
                0x81, 0xa3, 0x45, 0x72, 0x72, 0xb0, 0x64, 0x69, 0x76, 0x69, 0x73, 0x69, 0x6f, 0x6e,
                0x20, 0x62, 0x79, 0x20, 0x7a, 0x65, 0x72, 0x6f
            ]
        );
        assert_eq!(f.value(), map(&[("Err", s("division by zero"))]));

        // Forgiving argument arrays (§4): an extra trailing argument is ignored; a missing
        // trailing Option is None.
        c.call(23, "add", vec![int(1), int(2), s("from a newer caller")]);
        assert_eq!(c.response(23), int(3));
        c.call(24, "label", vec![int(7)]);
        assert_eq!(c.response(24), s("7:none"));
        c.call(25, "label", vec![int(7), s("x")]);
        assert_eq!(c.response(25), s("7:x"));
        // Extra request elements and unknown metadata are ignored (§13).
        let mut body = V::Arr(vec![
            s("calc.Calculator"),
            s("add"),
            int(1_000_000),
            int(0),
            map(&[("x-unknown", s("1")), ("x-other", s("2"))]),
            V::Arr(vec![int(5), int(6)]),
            s("a seventh element from the future"),
        ])
        .to_bytes();
        c.send(REQUEST, 0, 26, &body);
        assert_eq!(c.response(26), int(11));
        // A deadline of 50 ms on a 5 s call (§4).
        body = request_body("calc.Calculator", "sleep", 50_000, 0, &[], vec![int(5000)]);
        c.send(REQUEST, 0, 27, &body);
        assert_eq!(c.error(27).0, 5, "DeadlineExceeded");

        // Ping / Pong (§7, §14.7).
        let ping = frame_bytes(PING, 0, 7, &[]);
        assert_eq!(ping, doc_frame("ping"));
        c.send_raw(&ping);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("pong"));

        // Cancel (§6, §14.6): the handler is stopped, and nothing is ever sent for its id.
        c.call(3, "forever", vec![]);
        let cancel = frame_bytes(CANCEL, 0, 3, &[]);
        assert_eq!(cancel, doc_frame("cancel"));
        c.send_raw(&cancel);
        wait_event(&events, "forever dropped");
        c.call(31, "add", vec![int(30), int(1)]);
        assert_eq!(c.response(31), int(31), "no frame for the cancelled call");
        // Cancelling an unknown or finished id is ignored.
        c.send(CANCEL, 0, 31, &[]);
        c.send(CANCEL, 0, 999, &[]);

        // Notify (§8, §14.8): sent by the handler before it returns, so it arrives first.
        c.call(40, "publish", vec![]);
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("notify"));
        assert_eq!(f.kind, NOTIFY);
        assert_eq!(
            f.value(),
            V::Arr(vec![s("calc.done"), map(&[("sum", int(3))])])
        );
        assert_eq!(c.response(40), V::Nil, "unit return is nil");

        // One-way requests (§10) never get a Response or an Error, even when they fail. The
        // Pong proves nothing else was queued before it.
        c.call_flags(0, ONE_WAY, "calc.Calculator", "add", vec![int(1), int(2)]);
        c.call_flags(0, ONE_WAY | IDEMPOTENT, "calc.Calculator", "mul", vec![]);
        c.call_flags(0, ONE_WAY, "calc.Nope", "add", vec![]);
        c.call_flags(0, ONE_WAY, "calc.Calculator", "add", vec![s("bad")]);
        c.send(REQUEST, ONE_WAY, 0, &[0x90]);
        c.send(PING, 0, 8, &[]);
        let f = c.recv();
        assert_eq!((f.kind, f.id), (PONG, 8), "{f:?}");

        // A bad handshake on a second connection gets a GoAway (§3); the first is unaffected.
        let mut bad = Conn::connect(addr);
        let hello = map(&[("protocol", s("grpc")), ("version", int(1))]).to_bytes();
        bad.send(HELLO, 0, 0, &hello);
        let (code, message) = bad.goaway_then_eof();
        assert_eq!(code, 13, "{message}");
        assert!(message.contains("grpc"), "{message}");
        c.call(50, "add", vec![int(4), int(5)]);
        assert_eq!(c.response(50), int(9));

        // Closing our side ends the connection cleanly.
        c.stream.shutdown(Shutdown::Write).unwrap();
        c.eof();
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_a_goaway() {
    let t = start(Server::builder().allow_anonymous().max_frame_size(1024)).await;
    let addr = t.server.local_addr();
    let slow = start(
        Server::builder()
            .allow_anonymous()
            .handshake_timeout(Duration::from_millis(200)),
    )
    .await;
    let slow_addr = slow.server.local_addr();

    client(move || {
        let refused = |first_frame: Vec<u8>| {
            let mut c = Conn::connect(addr);
            c.send_raw(&first_frame);
            c.goaway_then_eof()
        };
        let hello = |entries: &[(&str, V)]| frame_bytes(HELLO, 0, 0, &map(entries).to_bytes());

        // Wrong protocol name.
        let (code, msg) = refused(hello(&[("protocol", s("http")), ("version", int(1))]));
        assert_eq!(code, 13, "{msg}");
        // Version 0.
        let (code, msg) = refused(hello(&[("protocol", s("stardust")), ("version", int(0))]));
        assert_eq!(code, 13, "{msg}");
        // Missing version.
        let (code, msg) = refused(hello(&[("protocol", s("stardust"))]));
        assert_eq!(code, 13, "{msg}");
        // Body is not a map.
        let (code, msg) = refused(frame_bytes(HELLO, 0, 0, &s("hello").to_bytes()));
        assert_eq!(code, 13, "{msg}");
        // The first frame is not a Hello.
        let (code, msg) = refused(frame_bytes(PING, 0, 1, &[]));
        assert_eq!(code, 13, "{msg}");
        let (code, msg) = refused(frame_bytes(
            REQUEST,
            0,
            1,
            &request_body("calc.Calculator", "add", 0, 0, &[], vec![int(1), int(2)]),
        ));
        assert_eq!(code, 13, "{msg}");
        // A Hello over the server's frame limit (only the header is sent).
        let mut header = frame_bytes(HELLO, 0, 0, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        let (code, msg) = refused(header);
        assert_eq!(code, 12, "FrameTooLarge: {msg}");

        // No Hello within the handshake timeout.
        let mut c = Conn::connect(slow_addr);
        let (code, msg) = c.goaway_then_eof();
        assert_eq!((code, msg.as_str()), (13, "no handshake received in time"));

        // Version negotiation and a forgiving Hello: a newer version, keys in another order,
        // an unknown key, no agent/max_frame/meta.
        let mut c = Conn::connect(addr);
        c.send_raw(&hello(&[
            ("version", int(7)),
            ("future_option", V::Bool(true)),
            ("protocol", s("stardust")),
        ]));
        let ack = c.recv_raw().expect("HelloAck");
        assert_eq!(ack.kind, HELLO_ACK, "{ack:?}");
        let ack = ack.value();
        assert_eq!(ack.get("version"), Some(&int(1)), "min(7, 1)");
        assert_eq!(
            ack.get("max_frame"),
            Some(&int(1024)),
            "the server's own limit"
        );
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        // Requests may go out right after the Hello without waiting (tolerated, not required),
        // and max_frame may be nil.
        let mut c = Conn::connect(addr);
        let mut bytes = hello(&[
            ("protocol", s("stardust")),
            ("version", int(1)),
            ("max_frame", V::Nil),
        ]);
        bytes.extend(frame_bytes(
            REQUEST,
            0,
            9,
            &request_body("calc.Calculator", "add", 0, 0, &[], vec![int(4), int(4)]),
        ));
        c.send_raw(&bytes);
        assert_eq!(c.recv().kind, HELLO_ACK);
        assert_eq!(c.response(9), int(8));
    })
    .await;
    drop(slow);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_the_connection() {
    let t = start(Server::builder().allow_anonymous().max_frame_size(1024)).await;
    let addr = t.server.local_addr();

    client(move || {
        // An unknown frame kind: GoAway(Protocol), then the server closes (§2).
        let mut c = Conn::handshake(addr);
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        c.send(42, 0, 0, &[]);
        let (code, msg) = c.goaway_then_eof();
        assert_eq!(code, 13, "{msg}");

        // Frames a client must never send.
        for kind in [HELLO, HELLO_ACK, RESPONSE, ERROR] {
            let mut c = Conn::handshake(addr);
            c.send(kind, 0, 1, &[0xc0]);
            let (code, msg) = c.goaway_then_eof();
            assert_eq!(code, 13, "kind {kind}: {msg}");
        }

        // A request over the server's limit (1024): it is answered with FrameTooLarge for its
        // id, then GoAway(FrameTooLarge) and close, since the stream cannot be resynchronised
        // (§11). Only the header is sent; the server decides on it alone.
        let mut c = Conn::handshake(addr);
        let body = request_body(
            "calc.Calculator",
            "add",
            0,
            0,
            &[],
            vec![V::Bin(vec![0; 900]), int(1)],
        );
        c.send(REQUEST, 0, 2, &body);
        assert_eq!(
            c.error(2).0,
            4,
            "a 950-byte request is fine (but not an i64)"
        );
        let mut header = frame_bytes(REQUEST, 0, 77, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        c.send_raw(&header);
        let (code, msg) = c.error(77);
        assert_eq!(code, 12, "{msg}");
        let (code, msg) = c.goaway_then_eof();
        assert_eq!(code, 12, "{msg}");

        // The same for a one-way request: no Error, only the GoAway.
        let mut c = Conn::handshake(addr);
        let mut header = frame_bytes(REQUEST, ONE_WAY, 0, &[]);
        header[..4].copy_from_slice(&5000u32.to_be_bytes());
        c.send_raw(&header);
        assert_eq!(c.goaway_then_eof().0, 12);

        // A length under 10 is impossible: GoAway(Protocol).
        let mut c = Conn::handshake(addr);
        let mut header = frame_bytes(PING, 0, 0, &[]);
        header[..4].copy_from_slice(&3u32.to_be_bytes());
        c.send_raw(&header);
        assert_eq!(c.goaway_then_eof().0, 13);
    })
    .await;
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_respects_the_clients_frame_limit() {
    let t = start(Server::builder().allow_anonymous()).await;
    let addr = t.server.local_addr();

    client(move || {
        let (mut c, _) = Conn::handshake_with(addr, 1024);
        // A response over our limit is replaced by an Error for its id (§11)...
        c.call(1, "blob", vec![int(2000)]);
        let (code, msg) = c.error(1);
        assert_eq!(code, 12, "{msg}");
        assert!(msg.contains("1024"), "{msg}");
        // ...and the connection stays usable.
        c.call(2, "blob", vec![int(100)]);
        assert_eq!(c.response(2), V::Bin(vec![0xab; 100]), "serde_bytes is bin");
        c.call(3, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(3), int(3));
    })
    .await;
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_in_flight_calls() {
    let TestServer {
        server,
        shared,
        events,
    } = start(Server::builder().allow_anonymous()).await;
    let addr = server.local_addr();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();

    let client = tokio::task::spawn_blocking(move || {
        let mut c = Conn::handshake(addr);
        c.call(10, "hold", vec![]);
        wait_event(&events, "hold started");
        go_tx.send(()).unwrap();

        // §9, §14.9: GoAway(ShuttingDown), byte for byte.
        let f = c.recv();
        assert_eq!(f.raw, doc_frame("goaway_shutting_down"), "{f:?}");
        assert_eq!(f.error().0, 11);
        // A request sent anyway is refused with ShuttingDown and not run.
        c.call(11, "add", vec![int(1), int(2)]);
        let (code, msg) = c.error(11);
        assert_eq!(code, 11, "{msg}");
        // The call in flight completes and is answered; then the server closes.
        shared.release.notify_one();
        assert_eq!(c.response(10), s("held"));
        c.eof();
    });

    tokio::time::timeout(IO_TIMEOUT, go_rx)
        .await
        .expect("the client started its call in time")
        .expect("the client thread failed");
    let shutdown = tokio::spawn(server.shutdown());
    if let Err(e) = client.await {
        std::panic::resume_unwind(e.into_panic());
    }
    tokio::time::timeout(IO_TIMEOUT, shutdown)
        .await
        .expect("shutdown finished once the connection drained")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keepalive_pings_and_gives_up_on_silence() {
    let t = start(
        Server::builder()
            .allow_anonymous()
            .keepalive(Duration::from_millis(100), Duration::from_millis(1500)),
    )
    .await;
    let addr = t.server.local_addr();

    client(move || {
        let mut c = Conn::handshake(addr);
        // We stay silent: the server pings (nonces count from 1), and we answer (§7).
        let f = c.recv_raw().expect("a Ping");
        assert_eq!((f.kind, f.flags, f.id), (PING, 0, 1), "{f:?}");
        assert!(f.body.is_empty());
        c.send(PONG, 0, f.id, &[]);
        c.call(1, "add", vec![int(1), int(2)]);
        assert_eq!(c.response(1), int(3));
        // Now we stop answering: only pings arrive, then the server closes without a GoAway.
        for _ in 0..10_000 {
            match c.recv_raw() {
                Some(f) => assert_eq!(f.kind, PING, "{f:?}"),
                None => return,
            }
        }
        panic!("the server kept pinging a silent client");
    })
    .await;
    t.server.shutdown().await;
}
