//! TLS end to end: the registry, providers and consumers over TLS with certificates made at run
//! time, clear errors for the wrong CA, mutual TLS, and the TLS write path under load.

mod common;

use std::time::Duration;

use common::pki::TestCa;
use common::*;
use serde_bytes::ByteBuf;
use stardust::discovery::api::RegistryClient;
use stardust::tls::{ClientTls, ServerTls};
use stardust::{Client, ErrorKind, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};

const PROVIDER: (&str, &str) = ("calc-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");

/// A TLS registry configured the way an operator would: PEM files named in its config.
async fn tls_registry(ca: &TestCa) -> (RegistryNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let id = ca.issue(&["127.0.0.1", "localhost"]);
    std::fs::write(dir.path().join("registry.crt"), id.cert).unwrap();
    std::fs::write(dir.path().join("registry.key"), id.key).unwrap();
    let config = Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_lease_ttl(Duration::from_secs(30))
        .with_key_file(dir.path().join("keys.toml"))
        .with_tls(
            dir.path().join("registry.crt"),
            dir.path().join("registry.key"),
        );
    let node = RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .expect("registry");
    (node, dir)
}

async fn star(registry: std::net::SocketAddr, app: (&str, &str), tls: ClientTls) -> Stardust {
    Stardust::builder()
        .registry(registry.to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(200))
        .tls(tls)
        .connect()
        .await
        .expect("login over TLS")
}

/// Serves `test.Calc` over TLS with a certificate from `ca`, registered through `star`.
async fn serve_over_tls(star: &Stardust, ca: &TestCa) -> (stardust::Provider, Control) {
    let (calc, control) = CalcImpl::new();
    let provider = star
        .serve(
            Server::builder()
                .serve(CalcServer::new(calc))
                .tls(ca.server_tls()),
            "127.0.0.1:0",
        )
        .await
        .expect("serve over TLS");
    (provider, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_flow_runs_over_tls_end_to_end() {
    let ca = TestCa::new("stardust test CA");
    let (node, _dir) = tls_registry(&ca).await;

    let provider_star = star(node.local_addr(), PROVIDER, ca.client_tls()).await;
    let (_provider, _control) = serve_over_tls(&provider_star, &ca).await;

    let consumer = star(node.local_addr(), CONSUMER, ca.client_tls()).await;
    let calc = consumer.client::<CalcClient>();
    assert_eq!(within("a call over TLS", calc.add(1, 2)).await.unwrap(), 3);
    // The token travelled inside TLS and the provider verified it.
    let info = calc.context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some(CONSUMER.0));

    // The registry lists the provider as speaking TLS.
    let registry = Client::builder()
        .tls(ca.client_tls())
        .connect(node.local_addr())
        .await
        .unwrap();
    let registry = RegistryClient::new(registry);
    registry
        .login(CONSUMER.0.into(), CONSUMER.1.into())
        .await
        .unwrap()
        .unwrap();
    let found = registry
        .discover("test.Calc".into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(found[0].tls, "the provider is advertised as speaking TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_is_refused_with_the_certificate_problem() {
    let ca = TestCa::new("the real CA");
    let impostor = TestCa::new("some other CA");
    let (server, _control) =
        start_server_with(Server::builder().allow_anonymous().tls(ca.server_tls())).await;

    let err = within(
        "the refused connect",
        Client::builder()
            .tls(impostor.client_tls())
            .connect(server.local_addr()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("TLS handshake"), "{msg}");
    assert!(msg.contains("invalid peer certificate"), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(msg.contains("CA bundle"), "{msg}");

    // The registry too: a process with the wrong CA cannot log in, and says why.
    let (node, _dir) = tls_registry(&ca).await;
    let err = Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(CONSUMER.0, CONSUMER.1)
        .tls(impostor.client_tls())
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new("stardust test CA");
    let id = ca.issue(&["provider.example"]);
    let (server, _control) = start_server_with(
        Server::builder()
            .allow_anonymous()
            .tls(ServerTls::from_pem(&id.cert, &id.key).unwrap()),
    )
    .await;
    // Dialled by IP: the certificate does not name it.
    let err = Client::builder()
        .tls(ca.client_tls())
        .connect(server.local_addr())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // Told which name to expect, the same certificate verifies.
    let client = Client::builder()
        .tls(ca.client_tls().server_name("provider.example").unwrap())
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    assert_eq!(calc.add(2, 2).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls_peers_fail_fast_instead_of_hanging() {
    let ca = TestCa::new("stardust test CA");
    let (tls_server, _c1) =
        start_server_with(Server::builder().allow_anonymous().tls(ca.server_tls())).await;
    let (plain_server, _c2) = start_server().await;

    // A plaintext Hello is not a TLS ClientHello: the server drops the connection.
    let err = within(
        "plaintext client vs TLS server",
        Client::connect(tls_server.local_addr()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(
        err.message().contains("speaks TLS") && err.message().contains("ClientTls"),
        "the error says what to configure: {err}"
    );
    // A TLS client meeting a plaintext server fails its handshake, and is told why.
    let err = within(
        "TLS client vs plaintext server",
        Client::builder()
            .tls(ca.client_tls())
            .connect(plain_server.local_addr()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
    assert!(
        err.message().contains("does not speak TLS"),
        "the error says the server is plaintext: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_clients_ca() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let id = server_ca.issue(&["127.0.0.1"]);
    let tls = ServerTls::mutual_from_pem(&id.cert, &id.key, &client_ca.pem).unwrap();
    let (server, _control) = start_server_with(Server::builder().allow_anonymous().tls(tls)).await;

    // No client certificate: refused (TLS 1.3 reports it on the first read, so the connect
    // fails either in the handshake or when the Hello is answered).
    let anonymous = Client::builder()
        .tls(server_ca.client_tls())
        .connect(server.local_addr())
        .await;
    match anonymous {
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::Connect | ErrorKind::ConnectionClosed),
            "{e}"
        ),
        Ok(c) => {
            let e = CalcClient::new(c).add(1, 1).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConnectionClosed, "{e}");
        }
    }

    // A certificate from some other CA: refused too.
    let stranger = TestCa::new("stranger CA").issue(&["client"]);
    let refused = Client::builder()
        .tls(ClientTls::mutual_from_pem(&server_ca.pem, &stranger.cert, &stranger.key).unwrap())
        .connect(server.local_addr())
        .await;
    if let Ok(c) = refused {
        assert!(CalcClient::new(c).add(1, 1).await.is_err());
    }

    // A certificate from the client CA: served.
    let me = client_ca.issue(&["client"]);
    let client = Client::builder()
        .tls(ClientTls::mutual_from_pem(&server_ca.pem, &me.cert, &me.key).unwrap())
        .connect(server.local_addr())
        .await
        .unwrap();
    assert_eq!(CalcClient::new(client).add(20, 22).await.unwrap(), 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_and_large_calls_survive_the_tls_write_path() {
    let ca = TestCa::new("stardust test CA");
    let (server, _control) =
        start_server_with(Server::builder().allow_anonymous().tls(ca.server_tls())).await;
    let client = Client::builder()
        .tls(ca.client_tls())
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);

    // Large messages both ways: far more than a TLS record and than the socket buffers.
    for len in [0usize, 1, 16 * 1024 - 1, 16 * 1024 + 7, 1 << 20, 4 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let back = within("a large echo", calc.echo(ByteBuf::from(data.clone())))
            .await
            .unwrap();
        assert_eq!(back.into_vec(), data, "echo of {len} bytes");
    }

    // Many calls in flight at once, mixed sizes, each answer matched to its call.
    let calls: Vec<_> = (0..400i64)
        .map(|i| {
            let calc = calc.clone();
            tokio::spawn(async move {
                if i % 10 == 0 {
                    let blob = calc.blob(64 * 1024 + i as u32).await.unwrap();
                    assert_eq!(blob.len(), 64 * 1024 + i as usize);
                } else {
                    assert_eq!(calc.add(i, i).await.unwrap(), 2 * i);
                }
            })
        })
        .collect();
    for call in calls {
        within("a concurrent call", call).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_tls_gets_a_clear_error_from_a_tls_provider() {
    // A plaintext registry (loopback) listing a TLS provider: the consumer has no CA to check
    // the provider with, and is told so instead of being silently downgraded.
    let ca = TestCa::new("stardust test CA");
    let node = RegistryNode::builder()
        .config(Config::dev())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let plain = |app: &'static str| {
        Stardust::builder()
            .registry(node.local_addr().to_string())
            .app(app, "secret")
            .connect()
    };
    let provider_star = plain("provider").await.unwrap();
    let (_provider, _control) = serve_over_tls(&provider_star, &ca).await;
    let consumer = plain("consumer").await.unwrap();
    let err = within("the call", consumer.client::<CalcClient>().add(1, 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("speaks TLS"), "{err}");
}

/// TLS providers behind a plaintext registry: `provider_tls` dials providers over TLS while the
/// registry connection stays plaintext (and `registry_tls` is the reverse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_the_registry_take_their_tls_settings_separately() {
    let ca = TestCa::new("stardust test CA");
    let dir = tempfile::tempdir().unwrap();
    let registry = RegistryNode::builder()
        .config(
            Config::new()
                .with_app(
                    PROVIDER.0,
                    AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
                )
                .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
                .with_key_file(dir.path().join("keys.toml")),
        )
        .bind("127.0.0.1:0")
        .await
        .expect("a plaintext registry");
    let plain = |app: (&'static str, &'static str)| {
        Stardust::builder()
            .registry(registry.local_addr().to_string())
            .app(app.0, app.1)
    };
    let provider_star = plain(PROVIDER).connect().await.expect("plaintext login");
    let (_provider, _control) = serve_over_tls(&provider_star, &ca).await;

    let consumer = plain(CONSUMER)
        .provider_tls(ca.client_tls())
        .connect()
        .await
        .expect("plaintext login, TLS to providers");
    let calc = consumer.client::<CalcClient>();
    assert_eq!(within("a call over TLS", calc.add(2, 3)).await.unwrap(), 5);

    // TLS for the registry alone: a plaintext registry refuses to be spoken to that way.
    let err = plain(CONSUMER)
        .registry_tls(ca.client_tls())
        .connect()
        .await
        .expect_err("the registry is plaintext");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert!(err.message().contains("does not speak TLS"), "{err}");
}
