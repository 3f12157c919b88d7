//! Service descriptions in the registry (issue 21): what providers send with their
//! registrations is kept once per (service, version) and served by `describe` to apps that
//! may call the service; a different description of the same version keeps the first and is
//! shown as a conflict; oversized ones are refused.

mod common;

use common::*;
use stardust::discovery::api::RegistryError;
use stardust_registry::{AppConfig, Config};

/// The test's apps, with a key file in `dir` (a directory of the test's own, removed after it).
fn config(dir: &std::path::Path) -> Config {
    Config::new()
        .with_app(
            "calc",
            AppConfig::with_secret("calc-secret")
                .unwrap()
                .provide(["calc.Calculator"]),
        )
        .with_app(
            "calc2",
            AppConfig::with_secret("calc2-secret")
                .unwrap()
                .provide(["calc.Calculator"]),
        )
        .with_app(
            "shop",
            AppConfig::with_secret("shop-secret")
                .unwrap()
                .consume(["shop.Cart"]),
        )
        .with_app("web", AppConfig::with_secret("web-secret").unwrap())
        .with_key_file(dir.join("keys.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_description_of_a_version_is_kept_and_a_different_one_shown_as_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.local_addr();
    let (first, _) = login(addr, "calc", "calc-secret").await;
    let (second, _) = login(addr, "calc2", "calc2-secret").await;
    let mut r = registration("calc.Calculator", "1.2.0", "127.0.0.1:9001");
    r.description = Some(calc_description("i64"));
    first.register(r.clone()).await.unwrap().unwrap();
    // The same description again (a second instance): no conflict.
    r.endpoint = "127.0.0.1:9002".into();
    first.register(r.clone()).await.unwrap().unwrap();
    let (web, _) = login(addr, "web", "web-secret").await;
    let found = web
        .describe("calc.Calculator".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].version, "1.2.0");
    assert_eq!(found[0].app, "calc");
    assert_eq!(found[0].description, Some(calc_description("i64")));
    assert_eq!(found[0].conflict, None);
    let add = &found[0].description.as_ref().unwrap().methods[0];
    assert_eq!(add.signature(), "add(a: i64, b: i64) -> i64");
    // Another provider of the same version with another signature: the first stays.
    r.endpoint = "127.0.0.1:9003".into();
    r.description = Some(calc_description("u64"));
    second.register(r.clone()).await.unwrap().unwrap();
    let found = web
        .describe("calc.Calculator".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found[0].description, Some(calc_description("i64")));
    let conflict = found[0].conflict.as_deref().expect("a conflict");
    assert!(conflict.contains("calc2"), "{conflict}");
    // Another version is described on its own, listed in version order.
    r.version = "1.10.0".into();
    r.endpoint = "127.0.0.1:9004".into();
    second.register(r).await.unwrap().unwrap();
    let versions: Vec<String> = web
        .describe("calc.Calculator".into())
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, ["1.2.0", "1.10.0"]);
    // An app that may not call the service learns nothing about it.
    let (shop, _) = login(addr, "shop", "shop-secret").await;
    match shop.describe("calc.Calculator".into()).await.unwrap() {
        Err(RegistryError::PermissionDenied(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_descriptions_are_refused_with_the_registration() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let (calc, _) = login(node.local_addr(), "calc", "calc-secret").await;
    let mut r = registration("calc.Calculator", "1.0.0", "127.0.0.1:9001");
    let mut d = calc_description("i64");
    d.methods[0].docs = "x".repeat(64 * 1024);
    r.description = Some(d);
    match calc.register(r).await.unwrap() {
        Err(RegistryError::Invalid(m)) => assert!(m.contains("doc text"), "{m}"),
        other => panic!("{other:?}"),
    }
}
