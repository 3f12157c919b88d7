//! The whole flow over real sockets: an embedded registry, providers and consumers that log in,
//! register, discover, present tokens to each other, and survive a registry restart.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use stardust::auth::StaticToken;
use stardust::discovery::api::{DISCOVERY_TOPIC, DiscoveryEvent, Registration, RegistryClient};
use stardust::{Client, ErrorKind, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};

const PROVIDER: (&str, &str) = ("calc-provider", "provider-secret");
const CONSUMER: (&str, &str) = ("web", "web-secret");
const LIMITED: (&str, &str) = ("greeter-only", "limited-secret");

/// A registry with three apps: a provider, a consumer, and a consumer limited to `test.Greeter`.
fn config() -> Config {
    Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(CONSUMER.0, AppConfig::with_secret(CONSUMER.1).unwrap())
        .with_app(
            LIMITED.0,
            AppConfig::with_secret(LIMITED.1)
                .unwrap()
                .consume(["test.Greeter"]),
        )
        .with_lease_ttl(Duration::from_secs(30))
}

/// A fresh directory for a registry's key file.
fn key_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stardust-flow-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An embedded registry on an OS-chosen port, with its own key file unless `config` names one.
async fn registry(config: Config) -> RegistryNode {
    let config = match config.key_file {
        Some(_) => config,
        None => config.with_key_file(key_dir().join("keys.toml")),
    };
    RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

async fn star(node_addr: std::net::SocketAddr, app: (&str, &str)) -> Stardust {
    Stardust::builder()
        .registry(node_addr.to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .expect("login")
}

/// Starts a provider of `test.Calc` and `test.Greeter` registered through `star`.
async fn provide(star: &Stardust) -> (stardust::Provider, Control) {
    let (calc, control) = CalcImpl::new();
    let provider = star
        .serve(
            Server::builder()
                .serve(CalcServer::new(calc))
                .serve(GreeterServer::new(GreeterImpl)),
            "127.0.0.1:0",
        )
        .await
        .expect("serve");
    (provider, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_login_register_discover_call() {
    let node = registry(config()).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (_provider, _control) = provide(&provider_star).await;

    let consumer = star(node.local_addr(), CONSUMER).await;
    let calc = consumer.client::<CalcClient>();
    assert_eq!(within("first call", calc.add(1, 2)).await.unwrap(), 3);
    // The provider knows who calls, from the token alone.
    let info = calc.context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some(CONSUMER.0));
    let greeter = consumer.client::<GreeterClient>();
    assert_eq!(greeter.greet("ada".into()).await.unwrap(), "hello, ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_unknown_app_are_refused() {
    let node = registry(config()).await;
    let err = Stardust::builder()
        .registry(node.local_addr().to_string())
        .app(CONSUMER.0, "not-the-secret")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(
        !err.to_string().contains("not-the-secret"),
        "secrets never echo: {err}"
    );

    let err = Stardust::builder()
        .registry(node.local_addr().to_string())
        .app("stranger", "whatever")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Unauthorized,
        "no dev mode: unknown apps are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_list_is_enforced_by_registry_and_provider() {
    let node = registry(config()).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (provider, _control) = provide(&provider_star).await;

    let limited = star(node.local_addr(), LIMITED).await;
    // The registry refuses to tell it where test.Calc is...
    let err = limited.client::<CalcClient>().add(1, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // ...and the provider refuses it when dialled directly with a valid token (bound to the
    // key this client proved to the registry, and proves again to the provider).
    let key = stardust::auth::ProofKey::from_seed([3; 32]);
    let registry = RegistryClient::new(
        Client::builder()
            .proof_key(key.clone())
            .connect(node.local_addr())
            .await
            .unwrap(),
    );
    let login = registry
        .login(LIMITED.0.into(), LIMITED.1.into())
        .await
        .unwrap()
        .unwrap();
    let direct = Client::builder()
        .credentials(StaticToken(login.token))
        .proof_key(key)
        .connect(provider.local_addr())
        .await
        .unwrap();
    let err = CalcClient::new(direct.clone()).add(1, 2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    // What it is allowed to call works on the same connection.
    assert_eq!(
        GreeterClient::new(direct).greet("x".into()).await.unwrap(),
        "hello, x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_by_the_provider() {
    let node = registry(config()).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (provider, _control) = provide(&provider_star).await;
    let addr = provider.local_addr();
    let now = SystemTime::now();

    let refused = |token: String| async move {
        let result = Client::builder()
            .credentials(StaticToken(token))
            .connect(addr)
            .await;
        match result {
            Ok(client) => CalcClient::new(client).add(1, 1).await.unwrap_err(),
            Err(e) => e,
        }
    };

    // Expired: minted already expired, no sleeping.
    let expired = node.keys().mint(
        CONSUMER.0,
        None,
        now - Duration::from_secs(120),
        now - Duration::from_secs(60),
    );
    let e = refused(expired).await;
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.to_string().contains("expired"), "{e}");

    // Forged: a token from another registry (another key) for a kid this provider cannot find.
    let other = registry(Config::dev()).await;
    let forged = other
        .keys()
        .mint(CONSUMER.0, None, now, now + Duration::from_secs(60));
    assert_eq!(refused(forged).await.kind(), ErrorKind::Unauthorized);

    // Tampered: a valid token whose claims were edited.
    let good = node
        .keys()
        .mint("nobody-special", None, now, now + Duration::from_secs(60));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let claims = stardust::auth::token::peek(&good).unwrap();
    let edited = stardust::auth::token::Claims {
        app: "admin".into(),
        ..claims
    };
    let body = rmp_serde::to_vec_named(&edited).unwrap();
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body);
    let e = refused(parts.join(".")).await;
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert!(e.to_string().contains("signature"), "{e}");

    // No token at all.
    let e = match Client::connect(addr).await {
        Ok(client) => CalcClient::new(client).add(1, 1).await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
}

/// Subscribes a raw registry client to `test.Calc` and returns its notification stream.
async fn watch_calc(
    node: std::net::SocketAddr,
) -> (RegistryClient, stardust::Notifications, usize) {
    let registry = RegistryClient::connect(node).await.unwrap();
    registry
        .login(CONSUMER.0.into(), CONSUMER.1.into())
        .await
        .unwrap()
        .unwrap();
    let notes = registry.client().notifications();
    let now = registry
        .subscribe("test.Calc".into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    (registry, notes, now.len())
}

async fn next_event(notes: &mut stardust::Notifications) -> DiscoveryEvent {
    loop {
        let n = within("a discovery event", notes.recv())
            .await
            .expect("stream open");
        if n.topic() == DISCOVERY_TOPIC {
            return n.decode().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deregistration_reaches_subscribers() {
    let node = registry(config()).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (provider, _control) = provide(&provider_star).await;
    let (_registry, mut notes, count) = watch_calc(node.local_addr()).await;
    assert_eq!(count, 1);
    provider.shutdown().await;
    let event = next_event(&mut notes).await;
    assert!(event.instances.is_empty(), "{event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_provider_is_removed_within_the_ttl() {
    let node = registry(config().with_lease_ttl(Duration::from_millis(500))).await;
    let (_watcher, mut notes, _) = watch_calc(node.local_addr()).await;

    // A provider that registers, then hangs: its connection stays open, heartbeats stop.
    let hung = RegistryClient::connect(node.local_addr()).await.unwrap();
    hung.login(PROVIDER.0.into(), PROVIDER.1.into())
        .await
        .unwrap()
        .unwrap();
    hung.register(Registration {
        service: "test.Calc".into(),
        version: "1.2.3".into(),
        endpoint: "127.0.0.1:9".into(),
        weight: 100,
        tags: Default::default(),
        tls: false,
        description: None,
    })
    .await
    .unwrap()
    .unwrap();
    let added = next_event(&mut notes).await;
    assert_eq!(added.instances.len(), 1);
    let removed = next_event(&mut notes).await;
    assert!(
        removed.instances.is_empty(),
        "expired after the TTL without heartbeats"
    );

    // A provider whose process dies (connection dropped) disappears at once.
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (provider, _control) = provide(&provider_star).await;
    assert_eq!(next_event(&mut notes).await.instances.len(), 1);
    drop(provider_star);
    drop(provider);
    assert!(next_event(&mut notes).await.instances.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_restart_is_survived() {
    let dir = key_dir();
    let cfg = config().with_key_file(dir.join("keys.toml"));
    let node = registry(cfg.clone()).await;
    let addr = node.local_addr();

    let provider_star = star(addr, PROVIDER).await;
    let (_provider, _control) = provide(&provider_star).await;
    let consumer = star(addr, CONSUMER).await;
    let calc = consumer.client::<CalcClient>();
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);

    // The registry goes away: providers keep serving, consumers keep calling from their list.
    node.shutdown().await;
    for i in 0..20 {
        assert_eq!(calc.add(i, 1).await.unwrap(), i + 1);
    }

    // It comes back on the same port: the provider re-registers by itself, and a new consumer
    // can resolve it.
    let node = RegistryNode::builder()
        .config(cfg)
        .bind(addr)
        .await
        .unwrap();
    let (_registry, mut notes, count) = watch_calc(addr).await;
    if count == 0 {
        let event = next_event(&mut notes).await;
        assert_eq!(event.instances.len(), 1, "provider re-registered");
    }
    let late = star(addr, CONSUMER).await;
    assert_eq!(
        within(
            "call through the new registry",
            late.client::<CalcClient>().add(2, 2)
        )
        .await
        .unwrap(),
        4
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_and_new_tokens_valid() {
    let node = registry(config()).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (provider, _control) = provide(&provider_star).await;
    let now = SystemTime::now();
    let key = stardust::auth::ProofKey::from_seed([4; 32]);
    let mint = || {
        node.keys().mint_bound(
            CONSUMER.0,
            None,
            Some(key.public_key()),
            now,
            now + Duration::from_secs(60),
        )
    };
    let old = mint();
    node.keys().rotate().unwrap();
    let new = mint();
    assert_ne!(
        stardust::auth::token::peek(&old).unwrap().kid,
        stardust::auth::token::peek(&new).unwrap().kid
    );
    // The provider only knew the old key at login; it fetches the new one when it sees it.
    for token in [new, old] {
        let client = Client::builder()
            .credentials(StaticToken(token))
            .proof_key(key.clone())
            .connect(provider.local_addr())
            .await
            .unwrap();
        assert_eq!(CalcClient::new(client).add(3, 4).await.unwrap(), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_renewed_on_live_connections() {
    // Tokens live 6 s and are renewed at two thirds of their lifetime, which leaves the renewal
    // (the session's, then the connection's) about 1.5 s even on a loaded machine. Calls go on
    // until the first token has expired, however long that takes, all over one connection.
    const TTL: Duration = Duration::from_secs(6);
    let node = registry(config().with_token_ttl(TTL)).await;
    let provider_star = star(node.local_addr(), PROVIDER).await;
    let (_provider, _control) = provide(&provider_star).await;
    let consumer = star(node.local_addr(), CONSUMER).await;
    let calc = consumer.client::<CalcClient>();
    // The consumer's token was issued before this point: past `expired` it no longer holds.
    let expired = tokio::time::Instant::now() + TTL + Duration::from_millis(500);
    let first = calc.context().await.unwrap();
    assert_eq!(first.caller.as_deref(), Some(CONSUMER.0));
    loop {
        let last = tokio::time::Instant::now() >= expired;
        let info = calc.context().await.unwrap();
        assert_eq!(info.peer, first.peer, "the same connection throughout");
        if last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_addresses_are_tried_in_turn() {
    let node = registry(config()).await;
    // A port nobody listens on: bind one, note it, free it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let star = Stardust::builder()
        .registry(dead.to_string())
        .registry(node.local_addr().to_string())
        .app(CONSUMER.0, CONSUMER.1)
        .connect()
        .await
        .expect("the second address answers");
    assert_eq!(star.app(), CONSUMER.0);

    let err = Stardust::builder()
        .registry(dead.to_string())
        .app(CONSUMER.0, CONSUMER.1)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_provides_only_what_its_provide_list_names() {
    const NOTHING: (&str, &str) = ("no-provide-list", "nothing-secret");
    const GREETER_ONLY: (&str, &str) = ("greeter-provider", "greeter-secret");
    let apps = config()
        .with_app(NOTHING.0, AppConfig::with_secret(NOTHING.1).unwrap())
        .with_app(
            GREETER_ONLY.0,
            AppConfig::with_secret(GREETER_ONLY.1)
                .unwrap()
                .provide(["test.Greeter"]),
        );
    let node = registry(apps.clone()).await;
    let greeter = || Server::builder().serve(GreeterServer::new(GreeterImpl));

    // No `provide` list: nothing, and the refusal names the key to set.
    let nothing = star(node.local_addr(), NOTHING).await;
    let err = nothing.serve(greeter(), "127.0.0.1:0").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message().contains("no `provide`")
            && err.message().contains("[apps.no-provide-list]")
            && err.message().contains(r#"provide = ["test.Greeter"]"#),
        "{err}"
    );
    // A list: what it names, and nothing else.
    let limited = star(node.local_addr(), GREETER_ONLY).await;
    let _served = limited.serve(greeter(), "127.0.0.1:0").await.unwrap();
    let (calc, _control) = CalcImpl::new();
    let err = limited
        .serve(
            Server::builder().serve(CalcServer::new(calc)),
            "127.0.0.1:0",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.message().contains("apps.greeter-provider.provide"),
        "{err}"
    );
    // `["*"]`: anything (the provider app of every other test here).
    let any = star(node.local_addr(), PROVIDER).await;
    let _any = provide(&any).await;

    // Dev mode lets every app provide anything, whatever its config says.
    let dev = registry(
        apps.with_dev(true)
            .with_key_file(key_dir().join("keys.toml")),
    )
    .await;
    let nothing = star(dev.local_addr(), NOTHING).await;
    let _served = nothing.serve(greeter(), "127.0.0.1:0").await.unwrap();
}
