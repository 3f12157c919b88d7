//! `stardust-registry services|describe|call|completions`: the built binary against a registry
//! and providers embedded in the test, on loopback.

#[path = "common/binary.rs"]
mod binary;

use binary::{BOUND, run, strings, text};

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};
use stardust::discovery::Provider;
use stardust::{Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};

/// An order line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub item: String,
    pub qty: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub id: u64,
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ShopError {
    OutOfStock { item: String },
}

/// A tiny shop.
#[stardust::service(name = "test.Shop", version = "1.2.0")]
pub trait Shop {
    /// The price of an order, in cents.
    async fn price(&self, order: Order) -> u64;
    /// Takes an order.
    ///
    /// Fails when the item is out of stock.
    async fn take(&self, order: Order) -> Result<Receipt, ShopError>;
    /// The bytes reversed.
    async fn reverse(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
    /// How many prices were asked.
    #[stardust(idempotent)]
    async fn asked(&self) -> u64;
}

struct ShopImpl {
    asked: Arc<AtomicU64>,
}

impl Shop for ShopImpl {
    async fn price(&self, order: Order) -> u64 {
        self.asked.fetch_add(1, Ordering::Relaxed);
        u64::from(order.qty) * 150
    }
    async fn take(&self, order: Order) -> Result<Receipt, ShopError> {
        match order.item.as_str() {
            "tea" => Ok(Receipt {
                id: 7,
                total: u64::from(order.qty) * 150,
            }),
            _ => Err(ShopError::OutOfStock { item: order.item }),
        }
    }
    async fn reverse(&self, data: ByteBuf) -> ByteBuf {
        ByteBuf::from(data.into_iter().rev().collect::<Vec<u8>>())
    }
    async fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// stdout as JSON.
fn json_of(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\nstderr:\n{}", text(&out.stderr)))
}

/// A registry on 127.0.0.1:0 with a provider of `test.Shop` registered through it (app
/// `shop`), apps `ops` (may consume anything) and `web` (may consume `other.Thing` only).
struct Scene {
    runtime: tokio::runtime::Runtime,
    node: Option<RegistryNode>,
    provider: Option<Provider>,
    asked: Arc<AtomicU64>,
    addr: String,
    dir: tempfile::TempDir,
}

impl Scene {
    fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::dev()
            .with_dev(false)
            .with_key_file(dir.path().join("keys.toml"))
            .with_app(
                "shop",
                AppConfig::with_secret("shop-secret")
                    .unwrap()
                    .provide(["test.Shop"]),
            )
            .with_app("ops", AppConfig::with_secret("ops-secret").unwrap())
            .with_app(
                "web",
                AppConfig::with_secret("web-secret")
                    .unwrap()
                    .consume(["other.Thing"]),
            );
        for app in ["ops", "web"] {
            let path = dir.path().join(format!("{app}.secret"));
            std::fs::write(&path, format!("{app}-secret\n")).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let (node, provider) = runtime.block_on(async {
            tokio::time::timeout(BOUND, async {
                let node = RegistryNode::builder()
                    .config(config)
                    .bind("127.0.0.1:0")
                    .await
                    .expect("the registry starts");
                let star = Stardust::builder()
                    .registry(node.local_addr().to_string())
                    .app("shop", "shop-secret")
                    .connect()
                    .await
                    .expect("the provider logs in");
                let server = Server::builder().serve(ShopServer::new(ShopImpl {
                    asked: asked.clone(),
                }));
                let provider = star
                    .serve(server, "127.0.0.1:0")
                    .await
                    .expect("the provider registers");
                (node, provider)
            })
            .await
            .expect("the registry and provider start in time")
        });
        let addr = node.local_addr().to_string();
        Scene {
            runtime,
            node: Some(node),
            provider: Some(provider),
            asked,
            addr,
            dir,
        }
    }

    /// Runs `args` as `app`, through this registry.
    fn cli(&self, app: &str, args: &[&str]) -> Output {
        let mut all = strings(args);
        let secret = self.dir.path().join(format!("{app}.secret"));
        all.extend(strings(&[
            "--registry",
            &self.addr,
            "--app",
            app,
            "--secret-file",
            secret.to_str().unwrap(),
        ]));
        run(&all)
    }

    /// Runs `args` as `ops`, expecting success; its stdout as JSON.
    fn ok_json(&self, args: &[&str]) -> Value {
        let out = self.cli("ops", args);
        assert!(
            out.status.success(),
            "`{}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            text(&out.stderr)
        );
        json_of(&out)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let (provider, node) = (self.provider.take(), self.node.take());
        self.runtime.block_on(async {
            if let Some(provider) = provider {
                let _ = tokio::time::timeout(BOUND, provider.shutdown()).await;
            }
            if let Some(node) = node {
                let _ = tokio::time::timeout(BOUND, node.shutdown()).await;
            }
        });
    }
}

#[test]
fn services_lists_versions_instances_and_health() {
    let scene = Scene::start();
    let list = scene.ok_json(&["services", "--output", "json"]);
    assert_eq!(
        list,
        json!([{
            "name": "test.Shop",
            "versions": [{ "version": "1.2.0", "instances": 1 }],
            "health": { "healthy": 1 },
        }])
    );
    let out = scene.cli("ops", &["services"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(table.contains("test.Shop  1.2.0 (1)"), "{table}");
    // An app lists only what it may call.
    let list = scene.cli("web", &["services", "--output", "json"]);
    assert_eq!(json_of(&list), json!([]));
}

#[test]
fn describe_shows_signatures_and_docs_as_written() {
    let scene = Scene::start();
    let described = scene.ok_json(&["describe", "test.Shop", "--output", "json"]);
    let method = |name: &str, args: Value, returns: &str, docs: &str, sig: &str, idem: bool| {
        json!({
            "name": name, "args": args, "returns": returns, "docs": docs, "idempotent": idem,
            "input_stream": false, "output_stream": false, "signature": sig,
        })
    };
    let order = json!([{ "name": "order", "ty": "Order" }]);
    let expected = json!({
        "service": "test.Shop",
        "versions": [{
            "version": "1.2.0",
            "app": "shop",
            "conflict": null,
            "description": {
                "docs": "A tiny shop.",
                "methods": [
                    method("price", order.clone(), "u64", "The price of an order, in cents.",
                        "price(order: Order) -> u64", false),
                    method("take", order, "Result<Receipt, ShopError>",
                        "Takes an order.\n\nFails when the item is out of stock.",
                        "take(order: Order) -> Result<Receipt, ShopError>", false),
                    method("reverse", json!([{ "name": "data", "ty": "serde_bytes::ByteBuf" }]),
                        "serde_bytes::ByteBuf", "The bytes reversed.",
                        "reverse(data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf", false),
                    method("asked", json!([]), "u64", "How many prices were asked.",
                        "asked() -> u64", true),
                ],
            },
        }],
        "note": described["note"],
    });
    assert_eq!(described, expected);
    assert!(described["note"].as_str().unwrap().contains("§12.1"));

    let out = scene.cli("ops", &["describe", "test.Shop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    for line in [
        "test.Shop 1.2.0 (registered by app `shop`)",
        "  A tiny shop.",
        "  take(order: Order) -> Result<Receipt, ShopError>",
        "      Fails when the item is out of stock.",
        "  asked() -> u64  [idempotent]",
        "Signatures are Rust types as written",
    ] {
        assert!(shown.contains(line), "`{line}` missing from:\n{shown}");
    }
    // A service the app may not call.
    let out = scene.cli("web", &["describe", "test.Shop"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("permission denied"));
}

#[test]
fn call_through_the_registry_prints_results_and_typed_errors() {
    let scene = Scene::start();
    let order = r#"[{"item": "tea", "qty": 2}]"#;
    let price = scene.ok_json(&["call", "test.Shop", "price", order]);
    assert_eq!(price, json!(300));
    // A Result's Ok is unwrapped.
    let receipt = scene.ok_json(&["call", "test.Shop", "take", order, "--output", "json"]);
    assert_eq!(receipt, json!({ "id": 7, "total": 300 }));
    // Bytes in and out, in either form.
    let reversed = scene.ok_json(&["call", "test.Shop", "reverse", r#"[{"$hex": "010203"}]"#]);
    assert_eq!(reversed, json!({ "$base64": "AwIB" }));
    let reversed = scene.ok_json(&[
        "call",
        "test.Shop",
        "reverse",
        r#"[{"$base64": "AQID"}]"#,
        "--bytes",
        "hex",
    ]);
    assert_eq!(reversed, json!({ "$hex": "030201" }));

    // The typed error: exit 3, the error as JSON on stdout.
    let out = scene.cli(
        "ops",
        &[
            "call",
            "test.Shop",
            "take",
            r#"[{"item": "gin", "qty": 1}]"#,
        ],
    );
    assert_eq!(code(&out), Some(3), "{}", text(&out.stderr));
    assert_eq!(json_of(&out), json!({ "OutOfStock": { "item": "gin" } }));

    // Usage errors, nothing sent: not a JSON array, the wrong number of arguments, an unknown
    // method.
    for (args, says) in [
        ("{}", "JSON array"),
        ("[1, 2]", "takes 1 argument"),
        ("not json", "not JSON"),
    ] {
        let out = scene.cli("ops", &["call", "test.Shop", "price", args]);
        assert_eq!(code(&out), Some(2), "{args}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    let out = scene.cli("ops", &["call", "test.Shop", "nope", "[]"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    assert_eq!(scene.asked.load(Ordering::Relaxed), 1);

    // An app that may not consume the service is refused.
    let out = scene.cli("web", &["call", "test.Shop", "price", order]);
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(scene.asked.load(Ordering::Relaxed), 1);
}

#[test]
fn repeat_makes_every_call_and_sums_them_up() {
    let scene = Scene::start();
    let summary = scene.ok_json(&[
        "call",
        "test.Shop",
        "price",
        r#"[{"item": "tea", "qty": 1}]"#,
        "--repeat",
        "50",
        "--concurrency",
        "4",
        "--output",
        "json",
    ]);
    assert_eq!(summary["calls"], 50, "{summary}");
    assert_eq!(summary["ok"], 50, "{summary}");
    assert_eq!(summary["errors"], json!({}), "{summary}");
    let latency = &summary["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() <= latency["p99"].as_f64().unwrap());
    assert!(latency["p99"].as_f64().unwrap() <= latency["max"].as_f64().unwrap());
    assert_eq!(scene.asked.load(Ordering::Relaxed), 50);

    // Typed errors are counted by kind; exit 3.
    let out = scene.cli(
        "ops",
        &[
            "call",
            "test.Shop",
            "take",
            r#"[{"item": "gin", "qty": 1}]"#,
            "--repeat",
            "5",
            "--concurrency",
            "2",
        ],
    );
    assert_eq!(code(&out), Some(3), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("calls 5, ok 0, errors 5"), "{shown}");
    assert!(shown.contains("Err (typed): 5"), "{shown}");
}

#[test]
fn call_through_an_agent() {
    let scene = Scene::start();
    let agent = scene.runtime.block_on(async {
        tokio::time::timeout(
            BOUND,
            stardust::agent::Agent::builder()
                .registry(scene.addr.clone())
                .app("ops", "ops-secret")
                .listen("127.0.0.1:0")
                .start(),
        )
        .await
        .expect("the agent starts in time")
        .expect("the agent starts")
    });
    let at = agent.local_addr().to_string();
    let out = run(&strings(&[
        "call",
        "test.Shop",
        "take",
        r#"[{"item": "tea", "qty": 3}]"#,
        "--agent",
        &at,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_of(&out), json!({ "id": 7, "total": 450 }));
    // Without a description, the reply's shape tells a Result's error.
    let out = run(&strings(&[
        "call",
        "test.Shop",
        "take",
        r#"[{"item": "gin", "qty": 1}]"#,
        "--agent",
        &at,
        "--output",
        "json",
    ]));
    assert_eq!(code(&out), Some(3), "{}", text(&out.stderr));
    assert_eq!(json_of(&out), json!({ "OutOfStock": { "item": "gin" } }));
    scene.runtime.block_on(async {
        let _ = tokio::time::timeout(BOUND, agent.shutdown()).await;
    });
}

#[test]
fn call_straight_at_an_anonymous_provider() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let server = runtime.block_on(async {
        tokio::time::timeout(
            BOUND,
            Server::builder()
                .serve(ShopServer::new(ShopImpl {
                    asked: asked.clone(),
                }))
                .allow_anonymous()
                .bind("127.0.0.1:0"),
        )
        .await
        .expect("the server starts in time")
        .expect("the server starts")
    });
    let at = server.local_addr().to_string();
    let out = run(&strings(&[
        "call",
        "test.Shop",
        "price",
        r#"[{"item": "tea", "qty": 4}]"#,
        "--addr",
        &at,
        "--meta",
        "x-test=1",
        "--timeout",
        "5s",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(json_of(&out), json!(600));
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    // A method the provider does not have: a framework error, exit 1.
    let out = run(&strings(&[
        "call",
        "test.Shop",
        "nope",
        "[]",
        "--addr",
        &at,
    ]));
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).is_empty());
    // --addr and --app do not mix: a usage error.
    let out = run(&strings(&[
        "call",
        "test.Shop",
        "asked",
        "[]",
        "--addr",
        &at,
        "--app",
        "ops",
    ]));
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    runtime.block_on(async {
        let _ = tokio::time::timeout(BOUND, server.shutdown()).await;
    });
}

#[test]
fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&strings(&["completions", shell]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains("stardust-registry"), "{shell}:\n{script}");
        assert!(script.contains("describe"), "{shell}:\n{script}");
    }
    let out = run(&strings(&["call", "--help"]));
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in [
        "Exit codes:",
        "--agent <ADDR>",
        "--addr <ADDR>",
        "--repeat <N>",
        "--idempotent",
        "--bytes",
    ] {
        assert!(help.contains(word), "`{word}` missing from:\n{help}");
    }
}
