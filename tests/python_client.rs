//! A non-Rust application calling a Rust provider: the Python client in `tests/python/`
//! (standard library + `msgpack`, written from `docs/PROTOCOL.md` alone) runs
//! `tests/python/test_against.py` against a real provider hosting the shared test services plus
//! [`Types`] below, and `tests/python/test_offline.py` against a scripted fake server (frames a
//! correct server never sends: malformed, oversized, unknown kinds).
//!
//! Needs `python3` with the `msgpack` module (Debian's `python3-msgpack`). The interpreter is
//! `STARDUST_PYTHON` if set, otherwise the first of `python3` on `PATH` and `/usr/bin/python3`
//! that can import `msgpack` (a `python3` from pyenv or a virtualenv may lack Debian's module).
//! Without one the tests print `SKIPPED` and pass, unless `STARDUST_REQUIRE_EXTERNAL=1` (CI),
//! where they fail.
//!
//! The same script runs twice: against a plain provider that accepts anonymous callers, and
//! through the sidecar agent (`stardust::agent`) to a provider registered with a registry, the
//! way a non-Rust application joins a deployment.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::python::{check, find_python, run_script};
use common::*;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::Semaphore;

/// The provider's keepalive hang-up (it pings after 200 ms of silence): the script's keepalive
/// check holds a call past it, so only a client that answers pings keeps the connection. Far
/// above how late a loaded machine answers a ping.
const KEEPALIVE_HANGUP_MS: u64 = 3000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

/// Every enum shape of PROTOCOL.md §12: unit, newtype, tuple and struct variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Poly {
        points: Vec<Point>,
        label: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Color {
    Red,
    Green,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub kind: String,
    pub area: f64,
    pub corners: u32,
    pub label: Option<String>,
    pub points: Vec<Point>,
    /// The shape itself, sent back: a nested enum inside a struct.
    pub shape: Shape,
}

/// Extreme and assorted scalar values, and a struct with bytes and nested collections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extremes {
    pub u64_max: u64,
    pub i64_min: i64,
    pub u8_max: u8,
    pub f32_half: f32,
    pub f64_third: f64,
    pub yes: bool,
    pub letter: char,
    pub text: String,
    pub color: Color,
    pub nothing: Option<u32>,
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
    pub plain_bytes: Vec<u8>,
    pub pair: (u16, String),
    pub nested: BTreeMap<String, Vec<Option<i32>>>,
    pub unit: (),
}

/// A service made for foreign clients: value shapes, optional parameters, and handlers the
/// caller itself controls (`hold` waits until someone calls `release` with the same key), so
/// that ordering tests need no sleeps.
#[stardust::service(name = "test.Types")]
pub trait Types {
    /// Describes a shape (enum in, struct out).
    async fn describe(&self, shape: Shape) -> Summary;
    /// `Some(2x)`, or `None` for `None` (also when the argument is left out).
    async fn maybe_double(&self, x: Option<i64>) -> Option<i64>;
    /// Fixed extreme values.
    async fn extremes(&self) -> Extremes;
    /// Swaps keys and values: a map with integer keys comes back.
    async fn invert(&self, map: HashMap<String, u32>) -> BTreeMap<u32, String>;
    /// A trailing optional parameter, as a service grows one (PROTOCOL.md §13).
    async fn greet(&self, name: String, title: Option<String>) -> String;
    /// Waits until `release(key)`, then returns `key`.
    async fn hold(&self, key: String) -> String;
    /// Lets one `hold(key)` (present or future) return.
    async fn release(&self, key: String) -> bool;
    /// Takes bytes and returns their length and sum.
    async fn checksum(&self, data: ByteBuf) -> (u64, u64);
    /// 0..n, one item each (a server stream).
    async fn count(&self, n: u64) -> stardust::Stream<u64>;
    /// The sum of the items (a client stream).
    async fn total(&self, items: stardust::Streaming<u64>) -> u64;
    /// Each message upper-cased (a stream both ways); an item `{"Err": ..}` for an empty one.
    async fn shout(
        &self,
        input: stardust::Streaming<String>,
    ) -> stardust::Stream<Result<String, String>>;
}

#[derive(Default, Clone)]
pub struct TypesImpl {
    holds: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl TypesImpl {
    fn gate(&self, key: &str) -> Arc<Semaphore> {
        self.holds
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }
}

impl Types for TypesImpl {
    async fn describe(&self, shape: Shape) -> Summary {
        let (kind, area, corners, label, points) = match &shape {
            Shape::Empty => ("empty", 0.0, 0, None, vec![]),
            Shape::Circle(r) => ("circle", std::f64::consts::PI * r * r, 0, None, vec![]),
            Shape::Rect(w, h) => ("rect", f64::from(*w) * f64::from(*h), 4, None, vec![]),
            Shape::Poly { points, label } => (
                "poly",
                0.0,
                points.len() as u32,
                label.clone(),
                points.clone(),
            ),
        };
        Summary {
            kind: kind.to_owned(),
            area,
            corners,
            label,
            points,
            shape,
        }
    }

    async fn maybe_double(&self, x: Option<i64>) -> Option<i64> {
        x.map(|x| x * 2)
    }

    async fn extremes(&self) -> Extremes {
        Extremes {
            u64_max: u64::MAX,
            i64_min: i64::MIN,
            u8_max: u8::MAX,
            f32_half: 0.5,
            f64_third: 1.0 / 3.0,
            yes: true,
            letter: 'λ',
            text: "grüße, 世界".to_owned(),
            color: Color::Green,
            nothing: None,
            raw: vec![0, 1, 2, 255],
            plain_bytes: vec![1, 2, 3],
            pair: (7, "seven".to_owned()),
            nested: BTreeMap::from([
                ("a".to_owned(), vec![Some(1), None, Some(-3)]),
                ("b".to_owned(), vec![]),
            ]),
            unit: (),
        }
    }

    async fn invert(&self, map: HashMap<String, u32>) -> BTreeMap<u32, String> {
        map.into_iter().map(|(k, v)| (v, k)).collect()
    }

    async fn greet(&self, name: String, title: Option<String>) -> String {
        match title {
            Some(title) => format!("hello, {title} {name}"),
            None => format!("hello, {name}"),
        }
    }

    async fn hold(&self, key: String) -> String {
        self.gate(&key)
            .acquire()
            .await
            .expect("gate closed")
            .forget();
        key
    }

    async fn release(&self, key: String) -> bool {
        self.gate(&key).add_permits(1);
        true
    }

    async fn checksum(&self, data: ByteBuf) -> (u64, u64) {
        (data.len() as u64, data.iter().map(|&b| u64::from(b)).sum())
    }

    async fn count(&self, n: u64) -> stardust::Stream<u64> {
        stardust::Stream::iter(0..n)
    }

    async fn total(&self, mut items: stardust::Streaming<u64>) -> u64 {
        let mut sum = 0u64;
        while let Some(Ok(n)) = items.next().await {
            sum = sum.wrapping_add(n);
        }
        sum
    }

    async fn shout(
        &self,
        mut input: stardust::Streaming<String>,
    ) -> stardust::Stream<Result<String, String>> {
        let (tx, out) = stardust::Stream::channel(8);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = input.next().await {
                let reply = if msg.is_empty() {
                    Err("nothing to shout".to_owned())
                } else {
                    Ok(msg.to_uppercase())
                };
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
        });
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_a_rust_provider() {
    let Some(python) = find_python().await else {
        return;
    };
    let (calc, _control) = CalcImpl::new();
    let server = stardust::Server::builder()
        .allow_anonymous()
        // Pings after 200 ms of silence; hangs up after 3 s without a frame.
        .keepalive(
            Duration::from_millis(200),
            Duration::from_millis(KEEPALIVE_HANGUP_MS),
        )
        .serve(CalcServer::new(calc))
        .serve(GreeterServer::new(GreeterImpl))
        .serve(TypesServer::new(TypesImpl::default()))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = server.local_addr().to_string();
    let keepalive = KEEPALIVE_HANGUP_MS.to_string();
    let output = run_script(
        &python,
        "test_against.py",
        &[&addr, "--keepalive-check-ms", &keepalive],
    )
    .await;
    server.shutdown().await;
    check("test_against.py", &output);
}

/// The Sidecar issue's proof: the Python client, with no credentials, calls a registered Rust
/// provider through the local agent, which logs in, discovers, authenticates and balances for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_a_rust_provider_through_the_agent() {
    let Some(python) = find_python().await else {
        return;
    };
    let registry = stardust_registry::RegistryNode::builder()
        .config(stardust_registry::Config::dev())
        .bind("127.0.0.1:0")
        .await
        .expect("registry");
    let provider_star = stardust::Stardust::builder()
        .registry(registry.local_addr().to_string())
        .app("py-provider", "provider-secret")
        .connect()
        .await
        .expect("provider login");
    let (calc, _control) = CalcImpl::new();
    let provider = provider_star
        .serve(
            stardust::Server::builder()
                .serve(CalcServer::new(calc))
                .serve(GreeterServer::new(GreeterImpl))
                .serve(TypesServer::new(TypesImpl::default())),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    let agent = stardust::agent::Agent::builder()
        .registry(registry.local_addr().to_string())
        .app("py-app", "app-secret")
        .listen("127.0.0.1:0")
        .start()
        .await
        .expect("agent");
    let addr = agent.local_addr().to_string();
    let output = run_script(
        &python,
        "test_against.py",
        &[
            &addr,
            // What an agent answers differently from a provider, by design (PROTOCOL.md §18):
            // a service nobody provides is `NoProvider`, not `UnknownService`, and provider
            // notifications are not relayed to local apps.
            "--skip",
            "unknown_service",
            "--skip",
            "notifications",
        ],
    )
    .await;
    agent.shutdown().await;
    provider.shutdown().await;
    registry.shutdown().await;
    check("test_against.py via the agent", &output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_survives_malformed_frames() {
    let Some(python) = find_python().await else {
        return;
    };
    let output = run_script(&python, "test_offline.py", &[]).await;
    check("test_offline.py", &output);
}
