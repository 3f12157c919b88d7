//! Helpers shared by the registry's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use stardust::Notifications;
use stardust::discovery::api::{
    DISCOVERY_TOPIC, DiscoveryEvent, LoginReply, Registration, RegistryClient,
};
use stardust_registry::{Config, RegistryNode};

/// Generous bound for anything a test waits on: hitting it means a real hang.
pub const BOUND: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for: {what}"),
    }
}

/// Starts a registry with `config` on an OS-chosen loopback port.
pub async fn start(config: Config) -> RegistryNode {
    RegistryNode::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .expect("registry starts")
}

/// A fresh connection to the registry at `addr`.
pub async fn connect(addr: SocketAddr) -> RegistryClient {
    within("connecting", RegistryClient::connect(addr))
        .await
        .expect("connect")
}

/// A fresh connection, logged in as `app`.
pub async fn login(addr: SocketAddr, app: &str, secret: &str) -> (RegistryClient, LoginReply) {
    let client = connect(addr).await;
    let reply = within("login", client.login(app.into(), secret.into()))
        .await
        .expect("login call")
        .unwrap_or_else(|e| panic!("login as {app} refused: {e}"));
    (client, reply)
}

/// A registration with default weight and no tags.
pub fn registration(service: &str, version: &str, endpoint: &str) -> Registration {
    Registration {
        service: service.into(),
        version: version.into(),
        endpoint: endpoint.into(),
        weight: 100,
        tags: Default::default(),
        tls: false,
    }
}

/// Waits (bounded) for the next discovery push on `notifications`.
pub async fn next_event(notifications: &mut Notifications) -> DiscoveryEvent {
    within("a discovery push", async {
        loop {
            let n = notifications.recv().await.expect("the client is gone");
            if n.topic() == DISCOVERY_TOPIC {
                return n.decode::<DiscoveryEvent>().expect("a DiscoveryEvent");
            }
        }
    })
    .await
}

/// Endpoints of the instances in `event`, in order.
pub fn endpoints(instances: &[stardust::discovery::api::Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.endpoint.as_str()).collect()
}
