//! Signing keys: persistence across restarts, rotation, minted tokens.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use stardust::auth::token;
use stardust_registry::{Config, RegistryNode, key_set, rotate_key_file};

fn config(dir: &tempfile::TempDir) -> Config {
    // Dev mode for the apps (created on login), a real key file for the keys.
    Config::dev().with_key_file(dir.path().join("keys.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(config(&dir)).await;
    let addr = first.local_addr();
    let (client, reply) = login(addr, "web", "pw").await;
    drop(client);
    first.shutdown().await;

    let second = RegistryNode::builder()
        .config(config(&dir))
        .bind(addr)
        .await
        .expect("the same port binds again after shutdown");
    assert_eq!(second.local_addr(), addr);
    let fresh = connect(addr).await;
    let keys = fresh.public_keys().await.unwrap();
    let claims = token::verify(&reply.token, &key_set(&keys), SystemTime::now())
        .expect("a token from before the restart verifies with the new node's keys");
    assert_eq!(claims.app, "web");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_registry_picks_up_a_rotated_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(&dir)).await;
    let path = dir.path().join("keys.toml");
    let (client, before) = login(node.local_addr(), "web", "pw").await;
    let old_kid = token::peek(&before.token).unwrap().kid;

    // What `stardust-registry rotate-key` does, while the registry runs.
    let new_kid = rotate_key_file(&path, node.config().token_ttl).unwrap();
    assert_ne!(new_kid, old_kid);

    let keys = client.public_keys().await.unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);
    // The old token still verifies; new tokens are signed with the new key.
    token::verify(&before.token, &key_set(&keys), SystemTime::now()).unwrap();
    let renewed = client.renew().await.unwrap().unwrap();
    assert_eq!(token::peek(&renewed.token).unwrap().kid, new_kid);
    token::verify(&renewed.token, &key_set(&renewed.keys), SystemTime::now()).unwrap();
    let (_, relogin) = login(node.local_addr(), "web", "pw").await;
    assert_eq!(token::peek(&relogin.token).unwrap().kid, new_kid);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_for_tests() {
    let node = start(Config::dev()).await;
    let now = SystemTime::now();
    let valid = node.keys().mint(
        "web",
        Some(vec!["calc.Calculator".into()]),
        now,
        now + Duration::from_secs(60),
    );
    let claims = token::verify(&valid, &node.keys().key_set(), now).unwrap();
    assert_eq!(claims.consume, Some(vec!["calc.Calculator".to_owned()]));

    let past = now - Duration::from_secs(7200);
    let expired = node
        .keys()
        .mint("web", None, past, past + Duration::from_secs(3600));
    let e = token::verify(&expired, &node.keys().key_set(), now).unwrap_err();
    assert_eq!(e.kind(), stardust::ErrorKind::Unauthorized);
    assert!(e.message().contains("expired"), "{e}");
    node.shutdown().await;
}
