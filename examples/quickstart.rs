//! Quickstart: a registry, a provider and a consumer in one process, on loopback, with no
//! configuration to write.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The flow is the real one: the provider logs in to the registry and registers its service; the
//! consumer logs in, gets a token, asks the registry who provides the service, connects to the
//! provider directly and presents its token; the provider checks it and serves the calls.

use std::time::{Duration, Instant};

use stardust::{Server, Stardust};
use stardust_registry::{Config, RegistryNode};
use stardust_workspace::calc::{CalculatorClient, CalculatorServer, MyCalc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The registry, embedded, in dev mode: apps are created on their first login.
    let registry = RegistryNode::builder()
        .config(Config::dev())
        .bind("127.0.0.1:0")
        .await?;
    let registry_addr = registry.local_addr().to_string();
    println!("registry (dev mode) listening on {registry_addr}");

    // Provider: log in, serve the calculator, register it.
    let provider_star = Stardust::builder()
        .registry(&registry_addr)
        .app("calc-provider", "provider-secret")
        .connect()
        .await?;
    let provider = provider_star
        .serve(
            Server::builder().serve(CalculatorServer::new(MyCalc)),
            "127.0.0.1:0",
        )
        .await?;
    println!(
        "provider `calc-provider` serving calc.Calculator on {}",
        provider.endpoint()
    );

    // Consumer: log in, and get a typed proxy that finds providers through the registry.
    let consumer = Stardust::builder()
        .registry(&registry_addr)
        .app("web", "web-secret")
        .connect()
        .await?;
    let calc = consumer.client::<CalculatorClient>();
    println!("add(1, 2)       = {}", calc.add(1, 2).await?);
    println!("div(10, 4)      = {:?}", calc.div(10, 4).await?);
    println!("div(1, 0)       = {:?}", calc.div(1, 0).await?);
    println!(
        "whoami()        = {}",
        calc.with_timeout(Duration::from_secs(2)).whoami().await?
    );

    // Many calls in flight at once share one connection to the provider.
    let started = Instant::now();
    let calls = (0..10_000).map(|i| {
        let calc = calc.clone();
        async move { calc.add(i, i).await }
    });
    let results = futures::future::try_join_all(calls).await?;
    let sum: i64 = results.iter().sum();
    println!(
        "10000 concurrent adds: sum {sum} in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );

    // Framework errors are typed and say what happened.
    let nobody = Stardust::builder()
        .registry(&registry_addr)
        .app("web", "wrong-secret")
        .connect()
        .await
        .expect_err("wrong secret");
    println!("login with a wrong secret -> {nobody}");

    // Deregister first (consumers stop sending), then finish in-flight calls and stop.
    provider.shutdown().await;
    println!("provider deregistered and shut down gracefully");
    registry.shutdown().await;
    Ok(())
}
