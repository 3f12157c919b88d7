//! The `test.Canary` service of the traffic-management tests: one service registered in two
//! versions (1.4.0 and 1.5.0) and as a tagged canary, an embedded registry with an admin app,
//! and a way to know that a consumer applies the rules an admin just set.
//!
//! Knowing when rules arrived: the service's first route, `probe`, decides only calls of the
//! `probe` method. Flipping it between "no instance, fail" and "any instance" after an edit and
//! waiting until a consumer's probe calls flip too proves the consumer holds rules at least as
//! new as the edit (a service's rules travel whole): an event to wait on, not a sleep.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stardust::discovery::api::{RegistryClient, RegistryError};
use stardust::traffic::{Fallback, Fault, FaultAction, Match, Route, RulesEdit, Weighted};
use stardust::{Client, ErrorKind, Server, Stardust};
use stardust_registry::{AppConfig, Config, RegistryNode};

use super::common::within;

pub const SERVICE: &str = "test.Canary";
pub const PROVIDER: (&str, &str) = ("canary-provider", "provider-secret");
pub const WEB: (&str, &str) = ("web", "web-secret");
pub const BATCH: (&str, &str) = ("batch", "batch-secret");
pub const OPS: (&str, &str) = ("ops", "ops-secret");

pub mod v14 {
    #[stardust::service(name = "test.Canary", version = "1.4.0")]
    pub trait Canary {
        /// The answering provider's label.
        #[stardust(idempotent)]
        async fn which(&self) -> String;
        /// Likewise; only the `probe` route decides these calls.
        #[stardust(idempotent)]
        async fn probe(&self) -> String;
    }
}

pub mod v15 {
    #[stardust::service(name = "test.Canary", version = "1.5.0")]
    pub trait Canary {
        #[stardust(idempotent)]
        async fn which(&self) -> String;
        #[stardust(idempotent)]
        async fn probe(&self) -> String;
    }
}

pub use v14::CanaryClient;

/// A provider's answers: its label, and how many calls it ran.
#[derive(Clone)]
pub struct Label(pub &'static str, pub Arc<AtomicU64>);

impl v14::Canary for Label {
    async fn which(&self) -> String {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.to_owned()
    }
    async fn probe(&self) -> String {
        self.0.to_owned()
    }
}

impl v15::Canary for Label {
    async fn which(&self) -> String {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.to_owned()
    }
    async fn probe(&self) -> String {
        self.0.to_owned()
    }
}

/// The registry's config: a provider, two consumer apps and an admin; rules kept in `dir`.
pub fn config(dir: &std::path::Path) -> Config {
    let mut config = Config::new()
        .with_app(
            PROVIDER.0,
            AppConfig::with_secret(PROVIDER.1).unwrap().provide(["*"]),
        )
        .with_app(WEB.0, AppConfig::with_secret(WEB.1).unwrap())
        .with_app(BATCH.0, AppConfig::with_secret(BATCH.1).unwrap())
        .with_app(
            OPS.0,
            AppConfig::with_secret(OPS.1).unwrap().roles(["admin"]),
        )
        .with_lease_ttl(Duration::from_secs(30))
        .with_key_file(dir.join("keys.toml"));
    config.rules_file = Some(dir.join("rules.toml"));
    config
}

/// A fresh directory for one test's registry files (removed when dropped).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub async fn registry(dir: &std::path::Path) -> RegistryNode {
    RegistryNode::builder()
        .config(config(dir))
        .http_listen("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .await
        .expect("registry")
}

/// A consumer handle of `app` (heartbeats every 200 ms, seeded draws).
pub async fn consumer(
    node: &RegistryNode,
    app: (&str, &str),
    tune: impl FnOnce(stardust::StardustBuilder) -> stardust::StardustBuilder,
) -> Stardust {
    tune(Stardust::builder())
        .registry(node.local_addr().to_string())
        .app(app.0, app.1)
        .heartbeat(Duration::from_millis(200))
        .timeout(Duration::from_secs(15))
        .traffic_seed(20)
        .connect()
        .await
        .expect("consumer login")
}

/// The three providers: `stable` (1.4.0), `new` (1.5.0) and `canary` (1.4.0, tagged
/// `canary=true`), each with its own handle.
pub struct Providers {
    pub calls: Vec<(&'static str, Arc<AtomicU64>)>,
    _handles: Vec<(Stardust, stardust::Provider)>,
}

impl Providers {
    pub async fn start(node: &RegistryNode) -> Providers {
        let mut calls = Vec::new();
        let mut handles = Vec::new();
        for (label, new_version, canary) in [
            ("stable", false, false),
            ("new", true, false),
            ("canary", false, true),
        ] {
            let mut builder = Stardust::builder()
                .registry(node.local_addr().to_string())
                .app(PROVIDER.0, PROVIDER.1)
                .heartbeat(Duration::from_millis(200));
            if canary {
                builder = builder.tag("canary", "true");
            }
            let star = builder.connect().await.expect("provider login");
            let count = Arc::new(AtomicU64::new(0));
            let service = Label(label, count.clone());
            let server = if new_version {
                Server::builder().serve(v15::CanaryServer::new(service))
            } else {
                Server::builder().serve(v14::CanaryServer::new(service))
            };
            let provider = star.serve(server, "127.0.0.1:0").await.expect("serve");
            calls.push((label, count));
            handles.push((star, provider));
        }
        Providers {
            calls,
            _handles: handles,
        }
    }

    /// Calls each provider ran, by label.
    pub fn ran(&self, label: &str) -> u64 {
        self.calls
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, c)| c.load(Ordering::SeqCst))
    }

    pub fn total(&self) -> u64 {
        self.calls
            .iter()
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }
}

/// Waits until `client` sees all three providers (discovery caught up).
pub async fn sees_all(client: &CanaryClient) {
    within("the consumer to see every provider", async {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 3 {
            if let Ok(label) = client.which().await {
                seen.insert(label);
            }
        }
    })
    .await;
}

/// A logged-in registry client of `app`.
pub async fn registry_client(node: &RegistryNode, app: (&str, &str)) -> RegistryClient {
    let client = RegistryClient::new(
        Client::builder()
            .proof_key(stardust::auth::ProofKey::generate().unwrap())
            .connect(node.local_addr())
            .await
            .unwrap(),
    );
    client
        .login(app.0.into(), app.1.into())
        .await
        .unwrap()
        .expect("login");
    client
}

pub fn route(name: &str, matches: Match, to: &[(u32, &str)], fallback: Fallback) -> Route {
    Route {
        name: name.into(),
        matches,
        to: to
            .iter()
            .map(|(weight, subset)| Weighted {
                weight: *weight,
                subset: (*subset).into(),
            })
            .collect(),
        fallback,
    }
}

/// A fault on the `which` method (never on probes).
pub fn fault(name: &str, percent: f64, action: FaultAction) -> Fault {
    Fault {
        name: name.into(),
        matches: Match {
            methods: vec!["which".into()],
            ..Match::default()
        },
        percent,
        action,
    }
}

/// An admin's hand on the rules of [`SERVICE`], with the probe route first.
pub struct Admin {
    pub client: RegistryClient,
    /// The probe currently sends probes nowhere (they fail).
    probe_fails: bool,
}

impl Admin {
    /// Logs in as the admin app and sets the probe route (before any other rule), letting
    /// probes through: what a consumer without rules does too, so the first
    /// [`synced`](Self::synced) flips it to failing.
    pub async fn new(node: &RegistryNode) -> Admin {
        let mut admin = Admin {
            client: registry_client(node, OPS).await,
            probe_fails: false,
        };
        admin.set_probe().await;
        admin
    }

    async fn set_probe(&mut self) {
        let subset = if self.probe_fails { "tag:none" } else { "*" };
        let probe = route(
            "probe",
            Match {
                methods: vec!["probe".into()],
                ..Match::default()
            },
            &[(1, subset)],
            Fallback::Fail,
        );
        self.edit(RulesEdit::SetRoute {
            service: SERVICE.into(),
            route: probe,
        })
        .await
        .expect("set the probe route");
    }

    /// Applies one edit; the registry's answer.
    pub async fn edit(&self, edit: RulesEdit) -> Result<u64, RegistryError> {
        within("an edit of the rules", self.client.edit_rules(edit, None))
            .await
            .expect("edit_rules call")
    }

    pub async fn set_route(&self, route: Route) {
        self.edit(RulesEdit::SetRoute {
            service: SERVICE.into(),
            route,
        })
        .await
        .expect("set route");
    }

    /// The route `marked`: calls carrying the `x-canary` metadata key (any value) go to the
    /// canary only, or fail when it is gone.
    pub async fn route_marked_to_canary(&self) {
        let marked = Match {
            metadata: [("x-canary".to_owned(), "*".to_owned())].into(),
            ..Match::default()
        };
        self.set_route(route(
            "marked",
            marked,
            &[(1, "tag:canary")],
            Fallback::Fail,
        ))
        .await;
    }

    /// The route `name` for every call: to `to` (weight, subset), failing when empty.
    pub async fn route_all(&self, name: &str, to: &[(u32, &str)]) {
        self.set_route(route(name, Match::default(), to, Fallback::Fail))
            .await;
    }

    pub async fn set_fault(&self, fault: Fault) {
        self.edit(RulesEdit::SetFault {
            service: SERVICE.into(),
            fault,
        })
        .await
        .expect("set fault");
    }

    pub async fn remove_route(&self, name: &str) {
        self.edit(RulesEdit::RemoveRoute {
            service: SERVICE.into(),
            name: name.into(),
        })
        .await
        .expect("remove route");
    }

    pub async fn remove_fault(&self, name: &str) {
        self.edit(RulesEdit::RemoveFault {
            service: SERVICE.into(),
            name: name.into(),
        })
        .await
        .expect("remove fault");
    }

    /// Returns once every one of `clients` applies the rules as they are now.
    pub async fn synced(&mut self, clients: &[&CanaryClient]) {
        self.probe_fails = !self.probe_fails;
        self.set_probe().await;
        for client in clients {
            within("a consumer to apply the rules just set", async {
                loop {
                    let failed = match client.probe().await {
                        Ok(_) => false,
                        Err(e) if e.kind() == ErrorKind::NoProvider => {
                            assert!(e.message().contains("route `probe`"), "{e}");
                            true
                        }
                        Err(e) => panic!("probe call: {e}"),
                    };
                    if failed == self.probe_fails {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await;
        }
    }
}

/// Whether `hits` out of `n` is within 5 standard deviations of share `p`.
pub fn within_5_sigma(hits: u64, n: u64, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (hits as f64 - mean).abs() <= 5.0 * sd
}

/// One test's world: a registry, the three providers, a consumer of one app with its client
/// (already seeing every provider), and an admin.
pub struct Scene {
    pub node: RegistryNode,
    pub providers: Providers,
    pub star: Stardust,
    pub client: CanaryClient,
    pub admin: Admin,
    /// The registry's files; removed when the scene is dropped.
    _dir: tempfile::TempDir,
}

impl Scene {
    /// Starts it, the consumer logged in as `app` and built through `tune`.
    pub async fn start(
        app: (&str, &str),
        tune: impl FnOnce(stardust::StardustBuilder) -> stardust::StardustBuilder,
    ) -> Scene {
        let dir = scratch();
        let node = registry(dir.path()).await;
        let providers = Providers::start(&node).await;
        let star = consumer(&node, app, tune).await;
        let client = star.client_matching::<CanaryClient>("*");
        sees_all(&client).await;
        let admin = Admin::new(&node).await;
        Scene {
            node,
            providers,
            star,
            client,
            admin,
            _dir: dir,
        }
    }
}
