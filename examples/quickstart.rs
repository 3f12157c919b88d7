//! Quickstart: a registry, a provider and a consumer in one process, on loopback, with no
//! configuration to write.
//!
//! ```text
//! cargo run --example quickstart            # then open the console URL it prints; Ctrl-C stops
//! cargo run --example quickstart -- --once  # one round of calls, then exit (what CI runs)
//! ```
//!
//! The flow is the real one: the provider logs in to the registry and registers its service; the
//! consumer logs in, gets a token, asks the registry who provides the service, connects to the
//! provider directly and presents its token; the provider checks it and serves the calls. Then
//! the consumer keeps calling, a few calls a second, while the registry's web console shows the
//! service, its instance and their figures live, until Ctrl-C.

use std::time::{Duration, Instant};

use stardust::{Server, Stardust};
use stardust_registry::{Config, Error as RegistryError, RegistryNode};
use stardust_workspace::calc::{CalculatorClient, CalculatorServer, MyCalc};

/// The console's usual port; another free port if it is taken.
const CONSOLE: &str = "127.0.0.1:7601";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--once") => true,
        Some(other) => {
            eprintln!("unknown option `{other}`; usage: quickstart [--once]");
            std::process::exit(2);
        }
    };

    // The registry, embedded, in dev mode (apps are created on their first login), with its
    // monitoring console over HTTP on loopback.
    let start = |http: &'static str| {
        RegistryNode::builder()
            .config(Config::dev())
            .http_listen(http)
            .bind("127.0.0.1:0")
    };
    let registry = match start(CONSOLE).await {
        Err(RegistryError::HttpBind { .. }) => start("127.0.0.1:0").await?,
        other => other?,
    };
    let registry_addr = registry.local_addr().to_string();
    let console = format!(
        "http://{}/",
        registry.http_addr().expect("the console is on")
    );
    println!("registry (dev mode) listening on {registry_addr}");
    println!("console: {console}");

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

    if !once {
        println!(
            "\nthe consumer keeps calling, a few calls a second: watch them at {console}\n\
             (Ctrl-C to stop)"
        );
        keep_calling(&calc, &console).await;
        println!("\nCtrl-C: stopping");
    }

    // Deregister first (consumers stop sending), then finish in-flight calls and stop.
    provider.shutdown().await;
    println!("provider deregistered and shut down gracefully");
    registry.shutdown().await;
    Ok(())
}

/// Calls `add` about five times a second and `div` once (every tenth one by zero: an
/// application error, answered like any other), printing a line every ten seconds, until
/// Ctrl-C.
async fn keep_calling(calc: &CalculatorClient, console: &str) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (mut calls, mut failed, mut n) = (0u64, 0u64, 0i64);
    let mut report = Instant::now();
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let result = if n % 5 == 0 {
            calc.div(n, if n % 50 == 0 { 0 } else { 7 }).await.map(drop)
        } else {
            calc.add(n, n).await.map(drop)
        };
        calls += 1;
        if let Err(e) = result {
            failed += 1;
            println!("call failed: {e}");
        }
        if report.elapsed() >= Duration::from_secs(10) {
            report = Instant::now();
            println!("{calls} calls so far ({failed} failed); console: {console}");
        }
    }
}
