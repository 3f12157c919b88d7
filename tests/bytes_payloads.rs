//! `Bytes` arguments and results (the zero-copy path: large payloads queued as segments of
//! their own and written with vectored writes, received as slices of the frame): every size
//! around the threshold, several payloads in one call, many calls at once on one connection
//! with small and large frames interleaved (segments must stay in order within and across
//! writes), over plain TCP and TLS, and against a peer that encodes bytes its own way.

mod common;

use bytes::Bytes;
use common::pki::TestCa;
use common::within;
use stardust::{Client, Server};

#[stardust::service(name = "test.Blobs", version = "1.0.0")]
pub trait Blobs {
    async fn echo(&self, data: Bytes) -> Bytes;
    /// Several payloads and other values in one argument list.
    async fn join(&self, tag: u8, a: Bytes, note: String, b: bytes::Bytes) -> Bytes;
    async fn len(&self, data: Bytes) -> u64;
    async fn make(&self, n: u64) -> Bytes;
}

struct BlobsImpl;

impl Blobs for BlobsImpl {
    async fn echo(&self, data: Bytes) -> Bytes {
        data
    }

    async fn join(&self, tag: u8, a: Bytes, note: String, b: Bytes) -> Bytes {
        let mut out = vec![tag];
        out.extend_from_slice(&a);
        out.extend_from_slice(note.as_bytes());
        out.extend_from_slice(&b);
        Bytes::from(out)
    }

    async fn len(&self, data: Bytes) -> u64 {
        data.len() as u64
    }

    async fn make(&self, n: u64) -> Bytes {
        pattern(n as usize, 7)
    }
}

fn pattern(n: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

const SIZES: [usize; 8] = [0, 1, 4095, 4096, 4097, 64 * 1024, 300_000, 2 * 1024 * 1024];

async fn server(tls: Option<&TestCa>) -> Server {
    let mut builder = Server::builder().allow_anonymous();
    if let Some(ca) = tls {
        builder = builder.tls(ca.server_tls());
    }
    builder
        .serve(BlobsServer::new(BlobsImpl))
        .bind("127.0.0.1:0")
        .await
        .expect("bind")
}

async fn client(server: &Server, tls: Option<&TestCa>) -> BlobsClient {
    let mut builder = Client::builder();
    if let Some(ca) = tls {
        builder = builder.tls(ca.client_tls());
    }
    BlobsClient::new(builder.connect(server.local_addr()).await.expect("connect"))
}

async fn every_size_and_shape(c: &BlobsClient) {
    for n in SIZES {
        let data = pattern(n, n as u8);
        assert_eq!(
            within("echo", c.echo(data.clone())).await.unwrap(),
            data,
            "{n}"
        );
        assert_eq!(within("len", c.len(data.clone())).await.unwrap(), n as u64);
        assert_eq!(
            within("make", c.make(n as u64)).await.unwrap(),
            pattern(n, 7)
        );
        let (a, b) = (pattern(n, 1), pattern(n / 2 + 5000, 2));
        let joined = within("join", c.join(9, a.clone(), "mid".into(), b.clone()))
            .await
            .unwrap();
        let mut want = vec![9u8];
        want.extend_from_slice(&a);
        want.extend_from_slice(b"mid");
        want.extend_from_slice(&b);
        assert_eq!(joined, want, "join of {n}");
    }
}

/// Many calls in flight at once, small and large, so that batches mix frame bytes and segments
/// and large frames are written in several pieces: each reply is its own request's payload.
async fn interleaved(c: &BlobsClient) {
    let calls = (0..200u64).map(|i| {
        let c = c.clone();
        async move {
            let n = match i % 4 {
                0 => 3,
                1 => 5000,
                2 => 70_000 + i as usize,
                _ => 200_000,
            };
            let data = pattern(n, i as u8);
            let got = c.echo(data.clone()).await.unwrap();
            assert_eq!(got, data, "call {i} got another payload");
        }
    });
    within("200 interleaved echoes", futures::future::join_all(calls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_payloads_of_every_size_round_trip() {
    let server = server(None).await;
    let c = client(&server, None).await;
    every_size_and_shape(&c).await;
    interleaved(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_payloads_round_trip_over_tls() {
    let ca = TestCa::new("bytes-payloads");
    let server = server(Some(&ca)).await;
    let c = client(&server, Some(&ca)).await;
    every_size_and_shape(&c).await;
    interleaved(&c).await;
}

/// The wire is the ordinary MessagePack `bin`: a peer that encodes the arguments with serde's
/// own `Bytes` support (copying) is understood, and its replies decode there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_format_is_plain_bin() {
    let server = server(None).await;
    let raw = Client::builder()
        .connect(server.local_addr())
        .await
        .expect("connect");
    for n in [10, 100_000] {
        let data = pattern(n, 3);
        let echoed: Bytes = within(
            "echo via the dynamic client",
            raw.call(
                BlobsClient::DESCRIPTOR,
                0,
                &(serde_bytes::ByteBuf::from(data.to_vec()),),
            ),
        )
        .await
        .unwrap();
        assert_eq!(echoed, data);
    }
}
