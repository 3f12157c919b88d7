//! What proof of possession costs: connection setup (TCP, handshake, first call) and calls, for
//! the same provider configured three ways, side by side in one run:
//!
//! - `anonymous`: no token at all (`allow_anonymous`), the floor;
//! - `bearer`: a token without a key, `require_proof(false)`: the handshake as it was before
//!   proof of possession (one frame each way, one signature check on the server);
//! - `bound`: a token bound to the client's key, the default: one more round trip (`Challenge`,
//!   `Proof`), a signature made by the client and one more checked by the server;
//!
//! and a plain TCP connect as the baseline. Then per call: sequential `add`s on one connection
//! of each kind (a proof is made once per connection, so calls should not differ).
//!
//! ```text
//! cargo bench --bench handshake                        # full: 3 rounds x 2,000 connections
//! STARDUST_HANDSHAKE_QUICK=1 cargo test --bench handshake   # smoke run, debug build
//! ```
//!
//! Provider and consumer run in one process on separate runtimes (2 workers each), over
//! 127.0.0.1. Variants run interleaved, the order rotating each round; figures are medians over
//! rounds. Nothing is asserted about speed; a failed connect or call exits non-zero.

#[path = "common/machine.rs"]
mod machine;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use stardust::auth::token::{self, Claims};
use stardust::auth::{ProofKey, StaticToken, TokenVerifier};
use stardust::{Client, Server};

#[stardust::service(name = "bench.Handshake", version = "1.0.0")]
pub trait Handshake {
    /// The smallest useful call.
    async fn add(&self, a: i64, b: i64) -> i64;
}

#[derive(Clone)]
struct Impl;

impl Handshake for Impl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Tcp,
    Anonymous,
    Bearer,
    Bound,
}

const VARIANTS: [Variant; 4] = [
    Variant::Tcp,
    Variant::Anonymous,
    Variant::Bearer,
    Variant::Bound,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Tcp => "tcp-connect",
            Variant::Anonymous => "anonymous",
            Variant::Bearer => "bearer (before)",
            Variant::Bound => "bound (proof)",
        }
    }
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn mint(bound_to: Option<[u8; 32]>) -> String {
    let now = SystemTime::now();
    let claims = Claims {
        kid: "bench".into(),
        app: "bench-consumer".into(),
        iat_ms: token::unix_ms(now),
        exp_ms: token::unix_ms(now + Duration::from_secs(3600)),
        consume: None,
        cnf: bound_to,
    };
    token::encode(&claims, |m| signing_key().sign(m).to_bytes())
}

struct Bed {
    anonymous: SocketAddr,
    bearer: SocketAddr,
    bound: SocketAddr,
    bearer_token: String,
    bound_token: String,
    key: ProofKey,
    _servers: Vec<Server>,
}

fn start(rt: &tokio::runtime::Runtime) -> Bed {
    rt.block_on(async {
        let keys = || {
            TokenVerifier::new(
                [("bench".to_owned(), signing_key().verifying_key())]
                    .into_iter()
                    .collect(),
            )
        };
        let serve = |b: stardust::ServerBuilder| async move {
            b.serve(HandshakeServer::new(Impl))
                .bind("127.0.0.1:0")
                .await
                .expect("bind")
        };
        let anonymous = serve(Server::builder().allow_anonymous()).await;
        let bearer = serve(Server::builder().authenticator(keys()).require_proof(false)).await;
        let bound = serve(Server::builder().authenticator(keys())).await;
        let key = ProofKey::from_seed([5; 32]);
        Bed {
            anonymous: anonymous.local_addr(),
            bearer: bearer.local_addr(),
            bound: bound.local_addr(),
            bearer_token: mint(None),
            bound_token: mint(Some(key.public_key())),
            key,
            _servers: vec![anonymous, bearer, bound],
        }
    })
}

/// A connected client of `variant` (not for `Tcp`).
async fn connect(bed: &Bed, variant: Variant) -> HandshakeClient {
    let builder = Client::builder();
    let (builder, addr) = match variant {
        Variant::Anonymous | Variant::Tcp => (builder, bed.anonymous),
        Variant::Bearer => (
            builder.credentials(StaticToken(bed.bearer_token.clone())),
            bed.bearer,
        ),
        Variant::Bound => (
            builder
                .credentials(StaticToken(bed.bound_token.clone()))
                .proof_key(bed.key.clone()),
            bed.bound,
        ),
    };
    let client = builder.connect(addr).await.unwrap_or_else(|e| {
        eprintln!("{}: connect failed: {e}", variant.name());
        std::process::exit(1)
    });
    HandshakeClient::new(client)
}

/// Microseconds of each of `n` connection setups (connect, handshake, first call answered).
async fn setups(bed: &Bed, variant: Variant, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        if variant == Variant::Tcp {
            let s = tokio::net::TcpStream::connect(bed.anonymous)
                .await
                .expect("connect");
            drop(s);
        } else {
            let client = connect(bed, variant).await;
            let sum = client.add(i as i64, 1).await.unwrap_or_else(|e| {
                eprintln!("{}: first call failed: {e}", variant.name());
                std::process::exit(1)
            });
            assert_eq!(sum, i as i64 + 1);
        }
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times
}

/// Microseconds of each of `n` sequential calls on one connection.
async fn calls(bed: &Bed, variant: Variant, n: usize) -> Vec<f64> {
    let client = connect(bed, variant).await;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let sum = client.add(i as i64, 2).await.expect("call");
        times.push(started.elapsed().as_secs_f64() * 1e6);
        assert_eq!(sum, i as i64 + 2);
    }
    times
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = match std::env::var("STARDUST_HANDSHAKE_QUICK").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !std::env::args().any(|a| a == "--bench"),
    };
    let (rounds, conns, ncalls) = if quick {
        (1, 50, 500)
    } else {
        (3, 2_000, 20_000)
    };
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bed = start(&server_rt);
    // Per variant and round: setup p50, setup p99, setups/s, call p50, call p99.
    let mut figures: Vec<Vec<[f64; 5]>> = vec![Vec::new(); VARIANTS.len()];
    let load = machine::load_average();
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            let variant = VARIANTS[i];
            let (setup, call) = client_rt.block_on(async {
                // A few warm-up setups first.
                setups(&bed, variant, conns / 20 + 1).await;
                let started = Instant::now();
                let mut setup = setups(&bed, variant, conns).await;
                let rate = conns as f64 / started.elapsed().as_secs_f64();
                setup.sort_by(f64::total_cmp);
                let mut call = if variant == Variant::Tcp {
                    vec![0.0]
                } else {
                    calls(&bed, variant, ncalls).await
                };
                call.sort_by(f64::total_cmp);
                ((setup, rate), call)
            });
            let ((setup, rate), call) = (setup, call);
            figures[i].push([
                percentile(&setup, 0.5),
                percentile(&setup, 0.99),
                rate,
                percentile(&call, 0.5),
                percentile(&call, 0.99),
            ]);
        }
    }
    println!(
        "#### {} — {} mode, {} rounds x {conns} connections and {ncalls} calls, {} CPUs ({}), load {load} at start\n",
        machine::utc_date(),
        if quick { "quick" } else { "full" },
        rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        machine::cpu_model(),
    );
    println!("| variant | setup p50 µs | setup p99 µs | setups/s | call p50 µs | call p99 µs |");
    println!("|---|--:|--:|--:|--:|--:|");
    for (i, variant) in VARIANTS.iter().enumerate() {
        let col = |c: usize| median(figures[i].iter().map(|f| f[c]).collect());
        let calls = if *variant == Variant::Tcp {
            "| – | – |".to_owned()
        } else {
            format!("| {:.1} | {:.1} |", col(3), col(4))
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} {calls}",
            variant.name(),
            col(0),
            col(1),
            col(2)
        );
    }
    let p50 = |i: usize| median(figures[i].iter().map(|f| f[0]).collect());
    println!(
        "\nproof of possession adds {:.0} µs to a connection's setup (bound - bearer, p50); \
         the extra round trip alone is about a plain TCP connect's {:.0} µs",
        p50(3) - p50(2),
        p50(0)
    );
}
