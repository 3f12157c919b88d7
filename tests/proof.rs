//! Proof of possession (issue 17): tokens only their owner can use.
//!
//! A registry, real providers, a consumer and a rogue provider, over loopback. The rogue is
//! registered for the consumer's service and relays what the consumer sends it to the real
//! provider; the test then replays the captured token from its own raw sockets (a party without
//! the consumer's key, like another process) to every provider and to the registry. Nothing
//! it does gets in; the consumer keeps working throughout.

mod common;
#[path = "common/doc_frames.rs"]
mod doc_frames;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use common::*;
use stardust::__wire::frame::{self, Header, Kind};
use stardust::__wire::message::{self, Hello, RequestHead};
use stardust::auth::proof::{FEATURE_PROOF, PROOF_MISSING, PROOF_REQUIRED};
use stardust::auth::{ProofKey, TOKEN_KEY};
use stardust::discovery::api::{RegistryClient, RegistryError};
use stardust::{ErrorKind, Metadata, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PROVIDER: (&str, &str) = ("calc-provider", "provider-secret");
const GREETER: (&str, &str) = ("greeter-provider", "greeter-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");
const ROGUE: (&str, &str) = ("rogue", "rogue-secret");

fn config(dir: &tempfile::TempDir) -> Config {
    Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(
            GREETER.0,
            AppConfig::with_secret(GREETER.1)
                .unwrap()
                .provide(["test.Greeter"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        // A registered provider of the consumer's service, like any other.
        .with_app(
            ROGUE.0,
            AppConfig::with_secret(ROGUE.1)
                .unwrap()
                .provide(["test.Calc"]),
        )
        .with_lease_ttl(Duration::from_secs(60))
        .with_key_file(dir.path().join("keys.toml"))
}

async fn registry(config: Config, addr: &str) -> RegistryNode {
    RegistryNode::builder()
        .config(config)
        .bind(addr)
        .await
        .expect("registry")
}

/// Serves `test.Calc` through `star` (registered with the registry).
async fn serve_calc(star: &Stardust) -> stardust::Provider {
    star.serve(
        Server::builder().serve(CalcServer::new(CalcImpl::new().0)),
        "127.0.0.1:0",
    )
    .await
    .expect("serve test.Calc")
}

async fn star(registry: SocketAddr, app: (&str, &str)) -> Stardust {
    Stardust::builder()
        .registry(registry.to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("login")
}

/// Reads one whole frame.
async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<(Header, Vec<u8>)> {
    loop {
        if let Some(h) = frame::parse_header(buf, frame::DEFAULT_MAX_FRAME).unwrap()
            && buf.len() >= h.frame_len()
        {
            let whole = buf.split_to(h.frame_len());
            return Some((h, whole[frame::HEADER_LEN..].to_vec()));
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn encode(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let start = frame::begin(&mut buf, kind, 0, 0);
    buf.extend_from_slice(body);
    frame::finish(&mut buf, start, u32::MAX).unwrap();
    buf.to_vec()
}

fn hello(token: &str, features: &[&str]) -> Vec<u8> {
    let mut meta = Metadata::new();
    meta.insert(TOKEN_KEY, token);
    let hello = Hello {
        protocol: "stardust".into(),
        version: 1,
        agent: "replay".into(),
        max_frame: None,
        meta,
        features: features.iter().map(|f| f.to_string()).collect(),
        stream_window: None,
    };
    let mut buf = BytesMut::new();
    message::put_serde(&mut buf, Kind::Hello, &hello).unwrap();
    buf.to_vec()
}

/// What the rogue saw and what the real provider told it.
#[derive(Debug)]
struct Relayed {
    token: String,
    /// The provider's final answer to the relayed handshake (kind, message).
    outcome: (u8, String),
}

/// The rogue provider: takes a consumer's connection, relays its handshake (Hello, the real
/// provider's Challenge, the consumer's Proof) to `real`, and reports the token it captured and
/// how the real provider answered. The consumer only ever sees its connection closed.
async fn rogue(listener: TcpListener, real: SocketAddr, seen: mpsc::UnboundedSender<Relayed>) {
    loop {
        let Ok((mut victim, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut vbuf = BytesMut::new();
            let Some((h, body)) = read_frame(&mut victim, &mut vbuf).await else {
                return;
            };
            assert_eq!(h.kind, Kind::Hello as u8);
            let parsed = message::parse_hello(&body, &Default::default()).unwrap();
            let token = parsed.meta.get(TOKEN_KEY).expect("a token").to_owned();
            let mut provider = TcpStream::connect(real).await.unwrap();
            let mut pbuf = BytesMut::new();
            provider
                .write_all(&encode(Kind::Hello, &body))
                .await
                .unwrap();
            let (h, body) = read_frame(&mut provider, &mut pbuf).await.unwrap();
            let mut outcome = (h.kind, String::new());
            if h.kind == Kind::Challenge as u8 {
                // Hand the real provider's challenge to the victim, and its proof back.
                victim
                    .write_all(&encode(Kind::Challenge, &body))
                    .await
                    .unwrap();
                if let Some((h, body)) = read_frame(&mut victim, &mut vbuf).await {
                    assert_eq!(h.kind, Kind::Proof as u8);
                    provider
                        .write_all(&encode(Kind::Proof, &body))
                        .await
                        .unwrap();
                    let (h, body) = read_frame(&mut provider, &mut pbuf).await.unwrap();
                    outcome = (h.kind, message::parse_error(&body).message().to_owned());
                }
            }
            let _ = seen.send(Relayed { token, outcome });
            // The victim's connection just closes: it fails over.
        });
    }
}

/// A handshake from a party that holds `token` but not its key: the provider's `GoAway`.
async fn replay(
    addr: SocketAddr,
    token: &str,
    answer_with: Option<&ProofKey>,
) -> (ErrorKind, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    let features: &[&str] = if answer_with.is_some() {
        &[FEATURE_PROOF]
    } else {
        &[]
    };
    stream.write_all(&hello(token, features)).await.unwrap();
    let (mut h, mut body) = within("an answer", read_frame(&mut stream, &mut buf))
        .await
        .expect("an answer");
    if let (Some(key), true) = (answer_with, h.kind == Kind::Challenge as u8) {
        let nonce = message::parse_challenge(&body).unwrap();
        let target = stardust::auth::proof::target_of(addr);
        let sig = key.sign_proof(&nonce, &target, token);
        let mut proof = BytesMut::new();
        message::put_proof(&mut proof, &target, &sig);
        stream
            .write_all(&encode(Kind::Proof, &proof))
            .await
            .unwrap();
        (h, body) = within("an answer", read_frame(&mut stream, &mut buf))
            .await
            .expect("an answer to the proof");
    }
    assert_eq!(h.kind, Kind::GoAway as u8, "the replay must be refused");
    let e = message::parse_error(&body);
    assert!(!e.message().contains(token), "the refusal quotes the token");
    (e.kind(), e.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_tokens_are_useless_to_a_rogue_provider_and_to_replayers() {
    let dir = tempfile::tempdir().unwrap();
    let node = registry(config(&dir), "127.0.0.1:0").await;
    let addr = node.local_addr();

    let provider_star = star(addr, PROVIDER).await;
    let real = serve_calc(&provider_star).await;
    let greeter_star = star(addr, GREETER).await;
    let greeter = greeter_star
        .serve(
            Server::builder().serve(GreeterServer::new(GreeterImpl)),
            "127.0.0.1:0",
        )
        .await
        .unwrap();

    // The rogue registers test.Calc at its relay's address (its own server is a decoy).
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(rogue(relay, real.local_addr(), seen_tx));
    let rogue_star = star(addr, ROGUE).await;
    let (decoy, _decoy_control) = CalcImpl::new();
    let _rogue = rogue_star
        .serve_advertised(
            Server::builder().serve(CalcServer::new(decoy)),
            "127.0.0.1:0",
            Some(relay_addr),
        )
        .await
        .unwrap();

    // The consumer calls until it has tried the rogue; every call still succeeds.
    let consumer = star(addr, CONSUMER).await;
    let client = consumer.client::<CalcClient>();
    let relayed = within("the consumer to meet the rogue", async {
        for i in 0.. {
            assert_eq!(client.add(i, 1).await.expect("calls keep working"), i + 1);
            if let Ok(relayed) = seen.try_recv() {
                return relayed;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        unreachable!()
    })
    .await;
    // Relaying the real provider's challenge got a proof for the rogue's address: refused.
    assert_eq!(relayed.outcome.0, Kind::GoAway as u8, "{relayed:?}");
    assert!(
        relayed.outcome.1.contains("proof of possession failed")
            && relayed.outcome.1.contains(&relay_addr.to_string()),
        "{}",
        relayed.outcome.1
    );
    let token = relayed.token;

    // Replayed without a proof, to the provider it was meant for and to another one.
    for target in [real.local_addr(), greeter.local_addr()] {
        let (kind, why) = replay(target, &token, None).await;
        assert_eq!(
            (kind, why.as_str()),
            (ErrorKind::Unauthorized, PROOF_MISSING)
        );
    }
    // Replayed with a proof made with another key.
    let thief = ProofKey::from_seed([66; 32]);
    let (kind, why) = replay(real.local_addr(), &token, Some(&thief)).await;
    assert_eq!(kind, ErrorKind::Unauthorized, "{why}");
    assert!(why.contains("does not verify"), "{why}");

    // Nor does the token resume a registry session on a connection that did not prove its key.
    let registry = RegistryClient::connect(addr).await.unwrap();
    match registry.resume(token.clone()).await.unwrap() {
        Err(RegistryError::Unauthorized(m)) => assert!(m.contains("did not prove"), "{m}"),
        other => panic!("the registry must refuse the captured token: {other:?}"),
    }

    // The consumer is unharmed, and its calls reach the real provider with its proven key.
    let info = client.context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some(CONSUMER.0));
    assert!(
        info.proof_key.is_some() && info.proof_key == info.bound_key,
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_with_a_bearer_token_is_served_only_where_proof_is_not_required() {
    let dir = tempfile::tempdir().unwrap();
    let node = RegistryNode::builder()
        .config(config(&dir))
        .http_listen("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .await
        .expect("registry");
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let strict = provider_star
        .serve(
            Server::builder().serve(GreeterServer::new(GreeterImpl)),
            "127.0.0.1:0",
        )
        .await
        .unwrap();
    // A provider in a fleet still upgrading: bearer tokens accepted, and counted.
    let lenient = provider_star
        .serve(
            Server::builder()
                .serve(CalcServer::new(CalcImpl::new().0))
                .require_proof(false),
            "127.0.0.1:0",
        )
        .await
        .unwrap();

    // What a client from before proof of possession presents: a bearer token, and a Hello
    // without `features`.
    let now = SystemTime::now();
    let bearer = node
        .keys()
        .mint(CONSUMER.0, None, now, now + Duration::from_secs(600));
    let (kind, why) = replay(strict.local_addr(), &bearer, None).await;
    assert_eq!(
        (kind, why.as_str()),
        (ErrorKind::Unauthorized, PROOF_REQUIRED)
    );

    let mut stream = TcpStream::connect(lenient.local_addr()).await.unwrap();
    let mut buf = BytesMut::new();
    stream.write_all(&hello(&bearer, &[])).await.unwrap();
    let (h, _) = within("HelloAck", read_frame(&mut stream, &mut buf))
        .await
        .unwrap();
    assert_eq!(h.kind, Kind::HelloAck as u8);
    let mut req = BytesMut::new();
    let head = RequestHead {
        id: 1,
        flags: 0,
        service: "test.Calc",
        method: "add",
        timeout_us: 0,
        trace_id: 0,
        meta: &Metadata::new(),
    };
    message::put_request(&mut req, &head, &(40, 2), frame::DEFAULT_MAX_FRAME).unwrap();
    stream.write_all(&req).await.unwrap();
    let (h, body) = within("a response", read_frame(&mut stream, &mut buf))
        .await
        .unwrap();
    assert_eq!(h.kind, Kind::Response as u8);
    assert_eq!(rmp_serde::from_slice::<i64>(&body).unwrap(), 42);

    // The count reaches the registry's metrics with the provider's next status report.
    let http = node.http_addr().expect("monitoring on");
    let line = format!(
        "stardust_process_unbound_tokens_accepted_total{{app=\"{}\"",
        PROVIDER.0
    );
    within("the metric to count the bearer token", async {
        loop {
            let metrics = get(http, "/metrics").await;
            if metrics
                .lines()
                .any(|l| l.starts_with(&line) && l.ends_with(" 1"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A plain HTTP GET of `path`: the body.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_on_a_live_connection_keeps_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    // Tokens live 3 s: the consumer renews with the registry, and on its live provider
    // connection, after about 2 s.
    let node = registry(
        config(&dir).with_token_ttl(Duration::from_secs(3)),
        "127.0.0.1:0",
    )
    .await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let _provider = serve_calc(&provider_star).await;
    let consumer = star(node.local_addr(), CONSUMER).await;
    let client = consumer.client::<CalcClient>();
    let first = client.context().await.unwrap();
    let key = first
        .proof_key
        .clone()
        .expect("the connection proved a key");
    assert_eq!(
        first.bound_key.as_ref(),
        Some(&key),
        "the token is bound to it"
    );

    // Renewed on the live connection: a later expiry, the same connection, the same key.
    let renewed = within("the token to be renewed on the live connection", async {
        loop {
            let info = client.context().await.unwrap();
            if info.expires_ms > first.expires_ms {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(renewed.peer, first.peer, "on the same connection");
    assert_eq!(
        (renewed.proof_key.as_ref(), renewed.bound_key.as_ref()),
        (Some(&key), Some(&key))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumption_after_a_registry_restart_keeps_the_binding() {
    let dir = tempfile::tempdir().unwrap();
    let node = registry(config(&dir), "127.0.0.1:0").await;
    let addr = node.local_addr();
    let provider_star = star(addr, PROVIDER).await;
    let provider = serve_calc(&provider_star).await;
    let consumer = star(addr, CONSUMER).await;
    let client = consumer.client::<CalcClient>();
    let first = client.context().await.unwrap();
    let key = first
        .proof_key
        .clone()
        .expect("the connection proved a key");

    // The registry restarts with the same keys: both sessions resume with their tokens.
    node.shutdown().await;
    let node = registry(config(&dir), &addr.to_string()).await;
    until("both sessions to resume", || {
        node.login_stats().resumed >= 2
    })
    .await;
    assert_eq!(node.login_stats().hashes, 0, "no secret was checked");

    // A new provider replaces the old one: the consumer dials it with the resumed session's
    // token (issued after the first, so it expires later), bound to the same key.
    provider.shutdown().await;
    let _second = serve_calc(&provider_star).await;
    let fresh = within("a call with the resumed token", async {
        loop {
            if let Ok(info) = client.context().await
                && info.expires_ms > first.expires_ms
            {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        (fresh.proof_key.as_ref(), fresh.bound_key.as_ref()),
        (Some(&key), Some(&key))
    );
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The hex dumps of PROTOCOL.md's "Proof of possession": what the runtime sends, byte for byte.
#[test]
fn the_protocol_document_shows_challenge_signed_input_and_proof_exactly() {
    let nonce: [u8; 32] = std::array::from_fn(|i| i as u8);
    let key = ProofKey::from_seed([0x42; 32]);
    let (target, token) = ("127.0.0.1:7000", "sd1.e30.c2ln");
    assert_eq!(
        stardust::auth::proof::encode_key(&key.public_key()),
        "IVL40Zt5HSRFMkLhXy6rbLfP-ntqXtMAl5YOBpiB2xI"
    );
    let mut body = BytesMut::new();
    message::put_challenge(&mut body, &nonce);
    let challenge = encode(Kind::Challenge, &body);
    assert_eq!(challenge, doc_frames::doc_frame("challenge"), "Challenge");
    assert_eq!(message::parse_challenge(&body).unwrap(), nonce);

    let input = stardust::auth::proof::signed_input(&nonce, target, token);
    let marker = "<!-- bytes: proof_input -->";
    let at = doc_frames::DOC
        .find(marker)
        .expect("the signed input's dump")
        + marker.len();
    let block = &doc_frames::DOC[at..];
    let open = block.find("```text\n").unwrap() + "```text\n".len();
    let close = block[open..].find("```").unwrap();
    assert_eq!(
        input,
        doc_frames::hex(&block[open..open + close]),
        "signed input"
    );

    let sig = key.sign_proof(&nonce, target, token);
    let mut body = BytesMut::new();
    message::put_proof(&mut body, target, &sig);
    assert_eq!(
        encode(Kind::Proof, &body),
        doc_frames::doc_frame("proof"),
        "Proof"
    );
}
