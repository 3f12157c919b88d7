//! Traffic rules applied by the sidecar agent for the applications behind it: a Rust
//! application and the Python client call through the agent with no rule logic of their own,
//! and get the same routes and faults as an in-process consumer (one shared implementation).

#[path = "common/canary_service.rs"]
mod canary;
mod common;

use std::collections::BTreeMap;

use canary::*;
use common::python::{find_python, run_script};
use common::within;
use stardust::ErrorKind;
use stardust::agent::Agent;
use stardust::balance::Hedging;
use stardust::traffic::FaultAction;
use stardust_registry::RegistryNode;

const N: u64 = 10_000;

async fn agent(
    node: &RegistryNode,
    tune: impl FnOnce(stardust::StardustBuilder) -> stardust::StardustBuilder,
) -> Agent {
    Agent::builder()
        .registry(node.local_addr().to_string())
        .app(WEB.0, WEB.1)
        .listen("127.0.0.1:0")
        .session(|b| tune(b.traffic_seed(20)))
        .start()
        .await
        .expect("agent")
}

/// A registry, the three providers, an agent (built through `tune`) with a Rust application
/// behind it that sees every provider, and an admin.
struct AgentScene {
    /// Kept running for the scene's life.
    _node: RegistryNode,
    providers: Providers,
    agent: Agent,
    client: CanaryClient,
    admin: Admin,
    _dir: tempfile::TempDir,
}

impl AgentScene {
    async fn start(
        tune: impl FnOnce(stardust::StardustBuilder) -> stardust::StardustBuilder,
    ) -> AgentScene {
        let dir = scratch();
        let node = registry(dir.path()).await;
        let providers = Providers::start(&node).await;
        let agent = agent(&node, tune).await;
        let client = app(&agent).await;
        sees_all(&client).await;
        let admin = Admin::new(&node).await;
        AgentScene {
            _node: node,
            providers,
            agent,
            client,
            admin,
            _dir: dir,
        }
    }
}

/// A Rust application behind `agent`.
async fn app(agent: &Agent) -> CanaryClient {
    let star = stardust::Stardust::builder()
        .via_agent(agent.local_addr().to_string())
        .connect()
        .await
        .expect("connect to the agent");
    star.client::<CanaryClient>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_routes_by_weight_and_metadata_and_injects_faults() {
    // No hedging: every call the providers run is one the agent sent once.
    let mut s = AgentScene::start(|b| b.hedging(Hedging::off())).await;
    let (client, admin, providers) = (&s.client, &mut s.admin, &s.providers);
    admin.route_marked_to_canary().await;
    admin
        .route_all("split", &[(90, "=1.4.0"), (10, "=1.5.0")])
        .await;
    admin.synced(&[client]).await;
    let mut new = 0;
    for _ in 0..N {
        let label = within("a call through the agent", client.which())
            .await
            .unwrap();
        new += u64::from(label == "new");
    }
    assert!(within_5_sigma(new, N, 0.10), "{new} of {N} went to 1.5.0");
    let tagged = CanaryClient::new(client.client().with_metadata("x-canary", "yes"));
    for _ in 0..200 {
        assert_eq!(tagged.which().await.unwrap(), "canary");
    }
    // A drill: 20% aborted with the configured kind; none reaches a provider.
    admin
        .set_fault(fault(
            "drill",
            20.0,
            FaultAction::Abort {
                error: "Internal".into(),
            },
        ))
        .await;
    admin.synced(&[client]).await;
    let ran = providers.total();
    let mut aborted = 0;
    for _ in 0..N {
        match client.which().await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
                assert!(e.message().contains("fault `drill`"), "{e}");
                aborted += 1;
            }
        }
    }
    assert!(within_5_sigma(aborted, N, 0.20), "{aborted} of {N} aborted");
    assert!(
        providers.total() - ran <= N - aborted,
        "an aborted call reached a provider"
    );
    s.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_opted_out_of_faults_injects_none() {
    let mut s = AgentScene::start(|b| b.faults(false)).await;
    let (client, admin) = (&s.client, &mut s.admin);
    admin
        .set_fault(fault(
            "drill",
            100.0,
            FaultAction::Abort {
                error: "Internal".into(),
            },
        ))
        .await;
    admin.synced(&[client]).await;
    for _ in 0..200 {
        client
            .which()
            .await
            .expect("no fault through an agent that opted out");
    }
    s.agent.shutdown().await;
}

/// Runs `traffic_calls.py` against the agent; its counts.
async fn python_calls(
    python: &std::path::Path,
    agent: &Agent,
    calls: u64,
    meta: &[&str],
) -> BTreeMap<String, u64> {
    let addr = agent.local_addr().to_string();
    let calls = calls.to_string();
    let mut args = vec![addr.as_str(), "--calls", calls.as_str()];
    for m in meta {
        args.extend(["--meta", m]);
    }
    let output = run_script(python, "traffic_calls.py", &args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "traffic_calls.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `label NAME COUNT` / `error KIND COUNT` lines, keyed `label NAME` / `error KIND`.
    stdout
        .lines()
        .filter_map(|line| {
            let (key, count) = line.rsplit_once(' ')?;
            Some((key.to_owned(), count.parse().ok()?))
        })
        .collect()
}

fn n(counts: &BTreeMap<String, u64>, group: &str, key: &str) -> u64 {
    counts.get(&format!("{group} {key}")).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_gets_routes_and_faults_through_the_agent() {
    let Some(python) = find_python().await else {
        return;
    };
    let mut s = AgentScene::start(|b| b).await;
    let (client, admin) = (&s.client, &mut s.admin);
    admin.route_marked_to_canary().await;
    admin.route_all("rest", &[(1, "=1.5.0")]).await;
    admin
        .set_fault(fault(
            "drill",
            20.0,
            FaultAction::Abort {
                error: "Overloaded".into(),
            },
        ))
        .await;
    admin.synced(&[client]).await;
    let calls = 2_000;
    let plain = python_calls(&python, &s.agent, calls, &[]).await;
    let aborted = n(&plain, "error", "Overloaded");
    assert_eq!(n(&plain, "label", "new") + aborted, calls, "{plain:?}");
    assert!(within_5_sigma(aborted, calls, 0.20), "{plain:?}");
    let marked = python_calls(&python, &s.agent, 500, &["x-canary=1"]).await;
    assert_eq!(
        n(&marked, "label", "canary") + n(&marked, "error", "Overloaded"),
        500,
        "{marked:?}"
    );
    s.agent.shutdown().await;
}
