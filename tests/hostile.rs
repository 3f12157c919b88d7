//! Hostile peers: what an unauthenticated (or authenticated but malicious) peer can make a
//! provider do must be small and proportional to what it sends.
//!
//! Each test sends something no well-behaved client would, checks the documented answer (an
//! `Error` for that request, or a `GoAway` and a close), checks that a well-behaved client on
//! another connection keeps succeeding throughout, and checks the *cost*: the CPU time of the
//! server runtime's threads and the rise of the process's heap high-water mark stay under a
//! bound written in the test. The bounds are generous (the real costs are milliseconds and
//! kilobytes); what they rule out is cost that grows with what a header claims or with the
//! square of what was sent (an 80,000-key handshake used to cost seconds of CPU).

#[path = "hostile/bed.rs"]
mod bed;
mod common;
#[path = "hostile/meter.rs"]
mod meter;
#[path = "hostile/wire.rs"]
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bed::{Bed, key, mint, trusted};
use common::{BOUND, CalcClient};
use meter::SERIAL;
use stardust::__wire::frame::Kind;
use stardust::auth::token::KeySet;
use stardust::auth::{BoxFuture, KeyFetcher, StaticToken, TokenVerifier};
use stardust::{Client, Error, ErrorKind, MetadataLimits};
use wire::{Raw, add_args, frame, header, hello_body, meta_map, request_body};

/// The most CPU one hostile connection's worst frame may cost the server.
const CPU_BOUND: Duration = Duration::from_secs(1);
const MIB: usize = 1024 * 1024;

#[test]
fn an_80000_key_hello_is_refused_at_its_header_and_others_are_served_meanwhile() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    let hello = frame(Kind::Hello, 0, &hello_body(&meta_map(&[], 80_000), None));
    assert!(hello.len() > 512 * 1024, "{}", hello.len());
    let ((code, ordinary), cpu, heap) = bed.measure(async {
        let mut raw = Raw::connect(bed.addr()).await;
        let send = raw.send(&hello);
        // An ordinary client connects and calls while the big Hello is on its way.
        let ordinary = async {
            let started = Instant::now();
            let client = Client::builder()
                .credentials(StaticToken(bed.token.clone()))
                .connect(bed.addr())
                .await
                .unwrap();
            assert_eq!(CalcClient::new(client).add(1, 2).await.unwrap(), 3);
            started.elapsed()
        };
        let ((), ordinary) = tokio::join!(send, ordinary);
        (raw.goaway(BOUND).await.error(), ordinary)
    });
    eprintln!("an ordinary handshake and call meanwhile took {ordinary:?}");
    assert_eq!(code.0, ErrorKind::FrameTooLarge, "{}", code.1);
    assert!(code.1.contains("65536"), "{}", code.1);
    assert!(cpu < CPU_BOUND, "{cpu:?}");
    assert!(heap < 4 * MIB, "{heap}");
}

#[test]
fn an_80000_key_hello_under_raised_limits_decodes_in_linear_time() {
    let _serial = SERIAL.lock();
    let mut limits = MetadataLimits::DEFAULT;
    limits.max_entries = 100_000;
    limits.max_total = 4 * MIB;
    let bed = Bed::new(|b| b.max_hello_size(4 * MIB as u32).metadata_limits(limits));
    let meta = meta_map(&[("token", &bed.token)], 80_000);
    let hello = frame(Kind::Hello, 0, &hello_body(&meta, None));
    let (kind, cpu, _) = bed.measure(async {
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&hello).await;
        raw.next(BOUND).await.expect("an answer").kind
    });
    assert_eq!(
        kind,
        Kind::HelloAck as u8,
        "accepted: every key within the limits"
    );
    assert!(cpu < CPU_BOUND, "{cpu:?}");

    // The same Hello against the default entry limit: refused at the map header.
    let bed = Bed::new(|b| b.max_hello_size(4 * MIB as u32));
    let ((code, why), cpu, _) = bed.measure(async {
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&hello).await;
        raw.goaway(BOUND).await.error()
    });
    assert_eq!(code, ErrorKind::LimitExceeded, "{why}");
    assert!(
        why.contains("connection metadata has 80001 entries"),
        "{why}"
    );
    assert!(cpu < CPU_BOUND, "{cpu:?}");
}

#[test]
fn request_metadata_over_the_limits_fails_only_that_request() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    let ((), cpu, _) = bed.measure(async {
        let mut raw = bed.authenticated().await;
        let cases: [(Vec<u8>, &str); 4] = [
            (meta_map(&[], 80_000), "has 80000 entries"),
            (meta_map(&[(&"k".repeat(300), "")], 0), "key of 300 bytes"),
            (
                meta_map(&[("k", &"v".repeat(9000))], 0),
                "value of 9000 bytes",
            ),
            // 20 values of 4000 bytes: each within its limit, 80,000 bytes in all.
            (
                {
                    let v = "v".repeat(4000);
                    let pairs: Vec<(String, &str)> =
                        (0..20).map(|i| (i.to_string(), v.as_str())).collect();
                    let refs: Vec<(&str, &str)> =
                        pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    meta_map(&refs, 0)
                },
                "over the limit of 65536 bytes",
            ),
        ];
        for (id, (meta, says)) in (1u64..).zip(cases) {
            let body = request_body("test.Calc", "add", &meta, &add_args(1, 2));
            raw.send(&frame(Kind::Request, id, &body)).await;
            let answer = raw.next(BOUND).await.expect("an answer");
            assert_eq!(answer.id, id);
            let (code, why) = answer.error();
            assert_eq!(code, ErrorKind::LimitExceeded, "{why}");
            assert!(why.contains(says), "{why}");
        }
        // The connection is still good.
        let body = request_body("test.Calc", "add", &meta_map(&[], 0), &add_args(2, 3));
        raw.send(&frame(Kind::Request, 99, &body)).await;
        let answer = raw.next(BOUND).await.expect("a response");
        assert_eq!((answer.kind, answer.id), (Kind::Response as u8, 99));
        assert_eq!(rmp_serde::from_slice::<i64>(&answer.body).unwrap(), 5);
    });
    assert!(cpu < CPU_BOUND, "{cpu:?}");
}

#[test]
fn absurd_lengths_cost_what_was_sent_not_what_was_claimed() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    // 200 handshakes claiming a Hello just under the limit, each sending 1 KiB of it: the server
    // holds what arrived, not 200 x 64 KiB (nor, before the Hello limit, 200 x 16 MiB).
    let (held, cpu, heap) = bed.measure(async {
        let mut held = Vec::new();
        for _ in 0..200 {
            let mut raw = Raw::connect(bed.addr()).await;
            raw.send(&header(Kind::Hello, 0, 60 * 1024)).await;
            raw.send(&[0x80; 1024]).await;
            held.push(raw);
        }
        // Every byte of them is in the server's hands.
        for raw in &held {
            raw.wait_read_by_server(bed.addr()).await;
        }
        held
    });
    assert!(cpu < CPU_BOUND, "{cpu:?}");
    assert!(
        heap < 16 * MIB,
        "200 stalled handshakes held {} KiB",
        heap / 1024
    );
    drop(held);

    // A header claiming 4 GiB: refused at once.
    let ((code, why), _, _) = bed.measure(async {
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&header(Kind::Hello, 0, u32::MAX - 10)).await;
        raw.goaway(BOUND).await.error()
    });
    assert_eq!(code, ErrorKind::FrameTooLarge, "{why}");

    // After the handshake: a request claiming 16 MiB that sends 256 KiB and stalls.
    let (raw, _, heap) = bed.measure(async {
        let mut raw = bed.authenticated().await;
        raw.send(&header(Kind::Request, 1, 16 * MIB as u32 - 100))
            .await;
        raw.send(&vec![0u8; 256 * 1024]).await;
        raw.wait_read_by_server(bed.addr()).await;
        raw
    });
    assert!(
        heap < 4 * MIB,
        "a stalled 16 MiB claim held {} KiB",
        heap / 1024
    );
    drop(raw);
}

#[test]
fn deep_nesting_and_huge_headers_cost_nothing() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    let ((), cpu, heap) = bed.measure(async {
        // A Hello whose unknown key holds 60,000 nested arrays: stepped over, accepted.
        let mut nested = vec![0x91u8; 60_000];
        nested.push(0xc0);
        let meta = meta_map(&[("token", &bed.token)], 0);
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&frame(Kind::Hello, 0, &hello_body(&meta, Some(&nested))))
            .await;
        assert_eq!(raw.next(BOUND).await.unwrap().kind, Kind::HelloAck as u8);

        let empty = meta_map(&[], 0);
        let cases: [(&str, Vec<u8>, Vec<u8>, ErrorKind); 5] = [
            // Arguments nested 60,000 deep: the decoder's depth limit, not a stack overflow.
            (
                "add",
                empty.clone(),
                nested.clone(),
                ErrorKind::InvalidArguments,
            ),
            // An argument array claiming four billion elements, holding none.
            (
                "add",
                empty.clone(),
                vec![0xdd, 0xff, 0xff, 0xff, 0xff],
                ErrorKind::InvalidArguments,
            ),
            // A byte string claiming 4 GiB.
            (
                "echo",
                empty.clone(),
                vec![0x91, 0xc6, 0xff, 0xff, 0xff, 0xff],
                ErrorKind::InvalidArguments,
            ),
            // A metadata map claiming four billion entries.
            (
                "add",
                vec![0xdf, 0xff, 0xff, 0xff, 0xff],
                add_args(1, 2),
                ErrorKind::LimitExceeded,
            ),
            // A metadata key claiming 4 GiB.
            (
                "add",
                vec![0x81, 0xdb, 0xff, 0xff, 0xff, 0xff],
                add_args(1, 2),
                ErrorKind::Protocol,
            ),
        ];
        for (id, (method, meta, args, expected)) in (1u64..).zip(cases) {
            raw.send(&frame(
                Kind::Request,
                id,
                &request_body("test.Calc", method, &meta, &args),
            ))
            .await;
            let answer = raw.next(BOUND).await.expect("an answer");
            let (code, why) = answer.error();
            assert_eq!((answer.id, code), (id, expected), "{why}");
        }
        // In a Hello, the four-billion-entry map is refused as a limit too.
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&frame(
            Kind::Hello,
            0,
            &hello_body(&[0xdf, 0xff, 0xff, 0xff, 0xff], None),
        ))
        .await;
        assert_eq!(raw.goaway(BOUND).await.error().0, ErrorKind::LimitExceeded);
    });
    assert!(cpu < CPU_BOUND, "{cpu:?}");
    assert!(heap < 4 * MIB, "{heap}");
}

#[test]
fn garbage_early_calls_truncation_and_duplicate_ids() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    let ((), cpu, _) = bed.measure(async {
        // Garbage, a call before the handshake, and a length shorter than the header.
        let add = request_body("test.Calc", "add", &meta_map(&[], 0), &add_args(1, 2));
        for first in [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            frame(Kind::Request, 1, &add),
            vec![0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut raw = Raw::connect(bed.addr()).await;
            raw.send(&first).await;
            let (code, why) = raw.goaway(BOUND).await.error();
            assert!(
                matches!(code, ErrorKind::Protocol | ErrorKind::FrameTooLarge),
                "{code:?} {why}"
            );
        }
        // A Hello cut short, then a close: the server lets go of the connection.
        let before = bed.server.connection_count();
        let mut raw = Raw::connect(bed.addr()).await;
        let hello = frame(Kind::Hello, 0, &hello_body(&meta_map(&[], 0), None));
        raw.send(&hello[..hello.len() / 2]).await;
        drop(raw);
        let deadline = Instant::now() + BOUND;
        while bed.server.connection_count() > before {
            assert!(
                Instant::now() < deadline,
                "the truncated handshake was kept"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A request with elements after the sixth (a later revision's): they are skipped, and
        // never read as arguments.
        let mut raw = bed.authenticated().await;
        let mut seven = add.clone();
        seven[0] = 0x97;
        seven.extend_from_slice(&[0xa6, b'f', b'u', b't', b'u', b'r', b'e']);
        raw.send(&frame(Kind::Request, 5, &seven)).await;
        let answer = raw.next(BOUND).await.expect("an answer");
        assert_eq!((answer.kind, answer.id), (Kind::Response as u8, 5));
        assert_eq!(rmp_serde::from_slice::<i64>(&answer.body).unwrap(), 3);
        // Two live requests with one id both run and both answer (PROTOCOL.md §16).
        let mut two = frame(Kind::Request, 7, &add);
        two.extend_from_slice(&frame(Kind::Request, 7, &add));
        raw.send(&two).await;
        for _ in 0..2 {
            let answer = raw.next(BOUND).await.expect("an answer");
            assert_eq!((answer.kind, answer.id), (Kind::Response as u8, 7));
        }
    });
    assert!(cpu < CPU_BOUND, "{cpu:?}");
}

/// The registry's keys, counting how often they are fetched.
struct CountingKeys(AtomicUsize);

impl KeyFetcher for CountingKeys {
    fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(trusted()) })
    }
}

#[test]
fn a_storm_of_unknown_key_ids_costs_the_registry_one_fetch_per_interval() {
    let _serial = SERIAL.lock();
    let keys = Arc::new(CountingKeys(AtomicUsize::new(0)));
    let verifier = TokenVerifier::new(trusted()).with_fetcher(keys.clone());
    let bed = Bed::new(move |b| b.authenticator(verifier));
    let started = Instant::now();
    let addr = bed.addr();
    let ((), cpu, _) = bed.measure(async {
        let storm = (0..400).map(|i| async move {
            let token = mint(&format!("bogus-{i}"), &key(9));
            let client = Client::builder()
                .credentials(StaticToken(token))
                .connect(addr)
                .await;
            assert_eq!(client.unwrap_err().kind(), ErrorKind::Unauthorized);
        });
        // In waves below the pending-handshake limit.
        let storm: Vec<_> = storm.collect();
        let mut storm = storm.into_iter();
        loop {
            let wave: Vec<_> = storm.by_ref().take(100).collect();
            if wave.is_empty() {
                break;
            }
            futures::future::join_all(wave).await;
        }
    });
    let fetched = keys.0.load(Ordering::SeqCst);
    let allowed = 1 + started.elapsed().as_secs() as usize;
    eprintln!(
        "400 bogus key ids in {:?}: {fetched} key fetches",
        started.elapsed()
    );
    assert!(
        fetched >= 1 && fetched <= allowed,
        "{fetched} fetches, at most {allowed}"
    );
    assert!(cpu < 4 * CPU_BOUND, "400 refused handshakes: {cpu:?}");
}

#[test]
fn a_refused_peer_that_keeps_sending_is_cut_off() {
    let _serial = SERIAL.lock();
    let bed = Bed::new(|b| b);
    let (sent, cpu, _) = bed.measure(async {
        // No token: refused. Then pings, as fast as the server takes them.
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&frame(Kind::Hello, 0, &hello_body(&meta_map(&[], 0), None)))
            .await;
        let pings: Vec<u8> = (0..4096).flat_map(|i| frame(Kind::Ping, i, &[])).collect();
        let mut sent = 0usize;
        while sent < 256 * MIB {
            use tokio::io::AsyncWriteExt;
            if raw.sock.write_all(&pings).await.is_err() {
                break;
            }
            sent += pings.len();
        }
        sent
    });
    eprintln!(
        "the refused peer got {} KiB in before the server closed",
        sent / 1024
    );
    assert!(
        sent < 64 * MIB,
        "the server kept reading a refused peer: {sent} bytes"
    );
    assert!(cpu < CPU_BOUND, "{cpu:?}");
}

/// A `Hello` without a token that announces `key` for proof of possession (as a registry
/// connection does), so the server challenges.
fn hello_announcing(key: &[u8; 32]) -> Vec<u8> {
    let mut meta = stardust::Metadata::new();
    meta.insert(
        stardust::auth::proof::PROOF_KEY_META,
        stardust::auth::proof::encode_key(key),
    );
    let hello = stardust::__wire::message::Hello {
        protocol: "stardust".into(),
        version: 1,
        agent: "hostile".into(),
        max_frame: None,
        meta,
        features: vec![stardust::auth::proof::FEATURE_PROOF.into()],
        stream_window: None,
    };
    let mut buf = bytes::BytesMut::new();
    stardust::__wire::message::put_serde(&mut buf, Kind::Hello, &hello).unwrap();
    buf.to_vec()
}

#[test]
fn wrong_proofs_cost_the_server_one_signature_check_each() {
    let _serial = SERIAL.lock();
    // Anonymous callers allowed: anyone may announce a key and be challenged, no token needed.
    let bed = Bed::new(|b| b.allow_anonymous());
    let key = stardust::auth::ProofKey::from_seed([7; 32]).public_key();
    // Signatures by another key: well formed, so the server does the whole check.
    let thief = stardust::auth::ProofKey::from_seed([8; 32]);
    const ROUNDS: usize = 200;
    let (refusals, cpu, heap) = bed.measure(async {
        let mut refusals = Vec::new();
        for _ in 0..ROUNDS {
            let mut raw = Raw::connect(bed.addr()).await;
            raw.send(&hello_announcing(&key)).await;
            let challenge = raw.next(BOUND).await.expect("a Challenge");
            assert_eq!(challenge.kind, Kind::Challenge as u8);
            let mut body = bytes::BytesMut::new();
            let target = stardust::auth::proof::target_of(bed.addr());
            let nonce = stardust::__wire::message::parse_challenge(&challenge.body).unwrap();
            let sig = thief.sign_proof(&nonce, &target, "");
            stardust::__wire::message::put_proof(&mut body, &target, &sig);
            raw.send(&frame(Kind::Proof, 0, &body)).await;
            refusals.push(raw.goaway(BOUND).await.error());
        }
        refusals
    });
    for (kind, why) in &refusals {
        assert_eq!(*kind, ErrorKind::Unauthorized, "{why}");
        assert!(why.contains("proof of possession failed"), "{why}");
    }
    eprintln!("{ROUNDS} wrong proofs: server CPU {cpu:?}");
    assert!(cpu < CPU_BOUND, "{cpu:?}");
    assert!(heap < 4 * MIB, "{heap}");

    // A Proof larger than the Hello limit is refused at its header, unread.
    let (code, cpu, _) = bed.measure(async {
        let mut raw = Raw::connect(bed.addr()).await;
        raw.send(&hello_announcing(&key)).await;
        raw.next(BOUND).await.expect("a Challenge");
        raw.send(&header(Kind::Proof, 0, u32::MAX - 10)).await;
        raw.goaway(BOUND).await.error()
    });
    assert_eq!(code.0, ErrorKind::FrameTooLarge, "{}", code.1);
    assert!(cpu < CPU_BOUND, "{cpu:?}");
}
