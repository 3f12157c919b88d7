//! The test bed of `tests/hostile.rs`: a provider requiring tokens on a runtime of its own, the
//! tokens it trusts, and a well-behaved client calling it throughout each test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signer, SigningKey};
use parking_lot::Mutex;
use stardust::__wire::frame::Kind;
use stardust::auth::token::{self, Claims, KeySet};
use stardust::auth::{StaticToken, TokenVerifier};
use stardust::{Client, Error, Server, ServerBuilder};

use crate::common::{BOUND, CalcClient, start_server_with};
use crate::meter::{HeapMeter, ServerRuntime};
use crate::wire::{Raw, frame, hello_body, meta_map};

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn mint(kid: &str, k: &SigningKey) -> String {
    let claims = Claims {
        kid: kid.into(),
        app: "web".into(),
        iat_ms: token::unix_ms(SystemTime::now()),
        exp_ms: token::unix_ms(SystemTime::now() + Duration::from_secs(3600)),
        consume: None,
        cnf: None,
    };
    token::encode(&claims, |m| k.sign(m).to_bytes())
}

pub fn trusted() -> KeySet {
    [("k1".to_owned(), key(1).verifying_key())]
        .into_iter()
        .collect()
}

/// A provider requiring tokens on a runtime of its own, a client runtime, and a well-behaved
/// client calling it steadily on its own connection.
pub struct Bed {
    pub srt: ServerRuntime,
    pub crt: tokio::runtime::Runtime,
    pub server: Server,
    pub token: String,
    pub bystander: Bystander,
}

impl Bed {
    pub fn new(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Bed {
        let srt = ServerRuntime::new();
        // Bearer tokens (proof not required): the raw connections below speak the handshake
        // as one frame each way. The cost of hostile proofs is measured separately.
        let builder = configure(
            Server::builder()
                .authenticator(TokenVerifier::new(trusted()))
                .require_proof(false),
        );
        let (server, _control) = srt.rt.block_on(start_server_with(builder));
        let crt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let token = mint("k1", &key(1));
        let bystander = crt.block_on(Bystander::start(server.local_addr(), &token));
        Bed {
            srt,
            crt,
            server,
            token,
            bystander,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// Runs `hostile` on the client runtime and returns the server's CPU time and the heap's
    /// rise while it ran; the bystander must have kept succeeding throughout.
    pub fn measure<T>(&self, hostile: impl Future<Output = T>) -> (T, Duration, usize) {
        let cpu = self.srt.cpu();
        let heap = HeapMeter::start();
        let out = self.crt.block_on(async {
            self.bystander.one_more_success().await;
            let out = hostile.await;
            self.bystander.one_more_success().await;
            out
        });
        let used = self.srt.cpu().saturating_sub(cpu);
        let rise = heap.peak_rise();
        eprintln!("server CPU {used:?}, heap rise {} KiB", rise / 1024);
        (out, used, rise)
    }

    /// A raw connection through the handshake with a valid token.
    pub async fn authenticated(&self) -> Raw {
        let mut raw = Raw::connect(self.addr()).await;
        let meta = meta_map(&[("token", &self.token)], 0);
        raw.send(&frame(Kind::Hello, 0, &hello_body(&meta, None)))
            .await;
        let ack = raw.next(BOUND).await.expect("a HelloAck");
        assert_eq!(ack.kind, Kind::HelloAck as u8);
        raw
    }
}

/// A well-behaved client making a call every 20 ms on its own connection; any failure fails the
/// test.
pub struct Bystander {
    pub ok: Arc<AtomicUsize>,
    pub failure: Arc<Mutex<Option<Error>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    pub async fn start(addr: std::net::SocketAddr, token: &str) -> Bystander {
        let client = Client::builder()
            .credentials(StaticToken(token.to_owned()))
            .connect(addr)
            .await
            .unwrap();
        let calc = CalcClient::new(client);
        let (ok, failure) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
        let (ok2, failure2) = (ok.clone(), failure.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0i64.. {
                tick.tick().await;
                match calc.add(i, 1).await {
                    Ok(sum) if sum == i + 1 => ok2.fetch_add(1, Ordering::SeqCst),
                    Ok(sum) => panic!("add({i}, 1) = {sum}"),
                    Err(e) => {
                        *failure2.lock() = Some(e);
                        return;
                    }
                };
            }
        });
        Bystander { ok, failure, task }
    }

    /// Waits for one more successful call (an event, bounded), failing on any failed call.
    pub async fn one_more_success(&self) {
        let target = self.ok.load(Ordering::SeqCst) + 1;
        let deadline = Instant::now() + BOUND;
        while self.ok.load(Ordering::SeqCst) < target {
            if let Some(e) = self.failure.lock().as_ref() {
                panic!("the well-behaved client's call failed: {e}");
            }
            assert!(Instant::now() < deadline, "the well-behaved client stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.task.abort();
    }
}
