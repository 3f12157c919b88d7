//! Logging in: credentials, dev mode, tokens, and sessions.

mod common;

use std::time::SystemTime;

use common::*;
use stardust::auth::token;
use stardust::discovery::api::{RegistryError, Status};
use stardust_registry::{AppConfig, Config, key_set};

fn config() -> Config {
    Config::dev()
        .with_dev(false)
        .with_app(
            "billing",
            AppConfig::with_secret("billing-secret")
                .unwrap()
                .consume(["calc.Calculator"]),
        )
        .with_app("web", AppConfig::with_secret("web-secret").unwrap())
}

fn refused() -> RegistryError {
    RegistryError::Unauthorized("unknown app or wrong secret".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_issues_a_token_that_verifies_with_the_returned_keys() {
    // Config::dev() minus dev mode: apps from the config, signing key in memory.
    let mut cfg = config();
    cfg.dev = false;
    let dir = tempfile::tempdir().unwrap();
    cfg.key_file = Some(dir.path().join("keys.toml"));
    let node = start(cfg).await;
    let (_client, reply) = login(node.local_addr(), "billing", "billing-secret").await;
    assert_eq!(reply.app, "billing");
    assert!(!reply.keys.is_empty());

    let claims = token::verify(&reply.token, &key_set(&reply.keys), SystemTime::now())
        .expect("the token verifies with the keys from the reply");
    assert_eq!(claims.app, "billing");
    assert_eq!(claims.exp_ms, reply.expires_at_ms);
    assert_eq!(claims.consume, Some(vec!["calc.Calculator".to_owned()]));
    assert_eq!(claims.kid, node.keys().signing_kid());
    // Default token TTL: one hour.
    assert_eq!(claims.exp_ms - claims.iat_ms, 3_600_000);

    // No consume list: the token allows any service.
    let (_web, reply) = login(node.local_addr(), "web", "web-secret").await;
    let claims = token::verify(&reply.token, &key_set(&reply.keys), SystemTime::now()).unwrap();
    assert_eq!(claims.consume, None);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_unknown_app_are_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config().with_key_file(dir.path().join("keys.toml"))).await;
    let client = connect(node.local_addr()).await;

    let wrong = client
        .login("billing".into(), "not-the-secret".into())
        .await
        .unwrap();
    assert_eq!(wrong.unwrap_err(), refused());
    let unknown = client
        .login("nobody".into(), "billing-secret".into())
        .await
        .unwrap();
    assert_eq!(unknown.unwrap_err(), refused());

    // The refused connection is still anonymous.
    let e = client.renew().await.unwrap().unwrap_err();
    assert_eq!(e, RegistryError::Unauthorized("log in first".into()));

    // And the same connection can still log in properly.
    let ok = client
        .login("billing".into(), "billing-secret".into())
        .await
        .unwrap();
    assert_eq!(ok.unwrap().app, "billing");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_creates_apps_on_first_login() {
    let node = start(Config::dev()).await;
    let (_first, reply) = login(node.local_addr(), "newcomer", "first-secret").await;
    assert_eq!(reply.app, "newcomer");
    token::verify(&reply.token, &key_set(&reply.keys), SystemTime::now()).unwrap();

    // The first secret sticks: another secret is refused, the same one works again.
    let other = connect(node.local_addr()).await;
    let e = other
        .login("newcomer".into(), "second-secret".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e, refused());
    let again = other
        .login("newcomer".into(), "first-secret".into())
        .await
        .unwrap();
    assert!(again.is_ok());

    // Nonsense app names are not created.
    let e = other
        .login("has space".into(), "x".into())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RegistryError::Invalid(_)), "{e:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_but_login_and_public_keys_needs_a_session() {
    let node = start(Config::dev()).await;
    let client = connect(node.local_addr()).await;
    let need = RegistryError::Unauthorized("log in first".into());

    assert_eq!(client.renew().await.unwrap().unwrap_err(), need);
    assert_eq!(
        client
            .register(registration("calc.Calculator", "1.0.0", "127.0.0.1:9000"))
            .await
            .unwrap()
            .unwrap_err(),
        need
    );
    assert_eq!(
        client
            .deregister("calc.Calculator".into(), "127.0.0.1:9000".into())
            .await
            .unwrap()
            .unwrap_err(),
        need
    );
    assert_eq!(
        client
            .heartbeat(Status::default())
            .await
            .unwrap()
            .unwrap_err(),
        need
    );
    assert_eq!(
        client
            .discover("calc.Calculator".into(), "*".into())
            .await
            .unwrap()
            .unwrap_err(),
        need
    );
    assert_eq!(
        client
            .subscribe("calc.Calculator".into(), "*".into())
            .await
            .unwrap()
            .unwrap_err(),
        need
    );
    // Framework-level view of the same refusal.
    let as_framework: stardust::Error = need.into();
    assert_eq!(as_framework.kind(), stardust::ErrorKind::Unauthorized);

    // public_keys is open to anyone: providers fetch keys without logging in.
    let keys = client.public_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].kid, node.keys().signing_kid());

    // Once logged in, the same connection may call everything.
    client
        .login("web".into(), "pw".into())
        .await
        .unwrap()
        .unwrap();
    client.heartbeat(Status::default()).await.unwrap().unwrap();
    client
        .discover("calc.Calculator".into(), "*".into())
        .await
        .unwrap()
        .unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_connections() {
    let node = start(Config::dev()).await;
    let (logged_in, _) = login(node.local_addr(), "web", "pw").await;
    // A second connection of the same process is anonymous until it logs in itself.
    let other = connect(node.local_addr()).await;
    assert!(other.renew().await.unwrap().is_err());

    // renew: a fresh token for the session's app.
    let renewed = logged_in.renew().await.unwrap().unwrap();
    assert_eq!(renewed.app, "web");
    let claims = token::verify(&renewed.token, &key_set(&renewed.keys), SystemTime::now()).unwrap();
    assert_eq!(claims.app, "web");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_without_config_refuses_to_start() {
    // Dev mode is never implied: it must be asked for with `Config::dev()`.
    let err = stardust_registry::RegistryNode::builder()
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Config::dev()"), "{err}");
}
