//! Memory comes back: a provider's resident memory levels off over rounds of connections that
//! come and go, instead of growing with every round.
//!
//! The provider runs in a child process (see `common::child`), so its RSS is its own: not the
//! test's clients, runtime or allocator state. Each round opens [`CONNECTIONS`] token-authenticated
//! connections, holds them until all are up, makes one call on each, closes them all, and waits
//! until the provider's open files are back to what they were before the round (every connection
//! torn down) before reading its RSS.
#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use futures::StreamExt;
use stardust::auth::token::{self, Claims};
use stardust::auth::{StaticToken, TokenVerifier};
use stardust::{Client, Server};

use common::child::{self, ChildProcess};
use common::*;

/// Connections per round: what a burst of consumers reconnecting at once brings.
const CONNECTIONS: usize = 2_000;
const ROUNDS: usize = 10;
/// How far the provider's RSS may rise above its value after the first round (issue 14).
const ALLOWED_GROWTH: u64 = 32 * 1024 * 1024;
/// Handshakes in progress at once: well under the provider's `max_pending_handshakes` (256), so
/// no connection is turned away.
const CONNECTING_AT_ONCE: usize = 64;
const KEY_ID: &str = "mem";
const CHILD: &str = "memory_provider_child";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn mint_token() -> String {
    let now = SystemTime::now();
    let claims = Claims {
        kid: KEY_ID.to_owned(),
        app: "memory-test".to_owned(),
        iat_ms: token::unix_ms(now),
        exp_ms: token::unix_ms(now + Duration::from_secs(3600)),
        consume: None,
    };
    token::encode(&claims, |m| signing_key().sign(m).to_bytes())
}

/// The provider under measurement: the test services behind a token verifier, on a runtime like
/// `#[tokio::main]`'s (one worker per core).
#[test]
#[ignore = "the provider process of `provider_rss_levels_off_over_rounds_of_connections`; runs \
            only when that test starts it"]
fn memory_provider_child() {
    if !child::is_child(CHILD) {
        return;
    }
    child::raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let keys = [(KEY_ID.to_owned(), signing_key().verifying_key())]
        .into_iter()
        .collect();
    let (server, _control) = runtime.block_on(start_server_with(
        Server::builder().authenticator(TokenVerifier::new(keys)),
    ));
    child::announce(server.local_addr());
    child::wait_for_parent();
    drop(server);
}

/// Opens `CONNECTIONS` authenticated connections (all up at once), makes one call on each, and
/// closes them.
async fn round(addr: SocketAddr, token: &str, round: usize) {
    let clients: Vec<CalcClient> = futures::stream::iter(0..CONNECTIONS)
        .map(|_| async {
            let client = Client::builder()
                .credentials(StaticToken(token.to_owned()))
                .connect(addr)
                .await
                .expect("an authenticated connection");
            CalcClient::new(client)
        })
        .buffer_unordered(CONNECTING_AT_ONCE)
        .collect()
        .await;
    let calls = futures::stream::iter(clients.iter().enumerate())
        .map(|(i, c)| async move { (i, c.add(round as i64, i as i64).await) })
        .buffer_unordered(CONNECTING_AT_ONCE * 4);
    calls
        .for_each(|(i, sum)| async move {
            assert_eq!(sum.expect("a call"), (round + i) as i64);
        })
        .await;
    drop(clients);
}

#[test]
fn provider_rss_levels_off_over_rounds_of_connections() {
    let limit = child::raise_fd_limit();
    assert!(
        limit as usize > CONNECTIONS + 256,
        "this test needs {CONNECTIONS} open files and more, but the hard limit is {limit}"
    );
    let (provider, addr) = ChildProcess::spawn(CHILD);
    let addr: SocketAddr = addr.parse().expect("the provider's address");
    let token = mint_token();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let idle_fds = provider.open_fds();
    let start_rss = provider.rss_bytes();
    let started = Instant::now();
    let mut rss = Vec::with_capacity(ROUNDS);
    for n in 1..=ROUNDS {
        let began = Instant::now();
        runtime.block_on(round(addr, &token, n));
        provider.wait_until("its connections to close", |p| p.open_fds() <= idle_fds);
        rss.push(provider.rss_bytes());
        eprintln!(
            "round {n}: {:.1} s, provider RSS {} KiB, CPU {:.1} s",
            began.elapsed().as_secs_f64(),
            rss[n - 1] / 1024,
            provider.cpu_time().as_secs_f64()
        );
    }
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let series: Vec<String> = rss.iter().map(|&b| mib(b)).collect();
    println!(
        "provider RSS (MiB): start {}, after each round of {CONNECTIONS} connections: {} \
         ({:.1} s, provider CPU {:.1} s)",
        mib(start_rss),
        series.join(" -> "),
        started.elapsed().as_secs_f64(),
        provider.cpu_time().as_secs_f64(),
    );
    let (first, last) = (rss[0], *rss.last().expect("rounds"));
    let peak = rss.iter().copied().max().expect("rounds");
    assert!(
        peak <= first + ALLOWED_GROWTH,
        "the provider's RSS grew from {} MiB after round 1 to {} MiB (last {} MiB; allowed: +{} \
         MiB): {}",
        mib(first),
        mib(peak),
        mib(last),
        mib(ALLOWED_GROWTH),
        series.join(" -> ")
    );
}
