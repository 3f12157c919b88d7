//! Quickstart: a provider and a consumer of one service, in one process, on loopback.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// An application error, delivered to the caller typed.
#[derive(Debug, Serialize, Deserialize)]
pub enum DivError {
    DivideByZero,
}

/// The service: a plain trait with `async fn`s.
#[stardust::service(name = "calc.Calculator", version = "1.0.0")]
pub trait Calculator {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, failing on a zero divisor.
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    /// Tells the caller who it is, as the provider sees it.
    async fn whoami(&self) -> String;
}

struct MyCalc;

impl Calculator for MyCalc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            Err(DivError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }

    async fn whoami(&self) -> String {
        let ctx = stardust::Context::current().expect("handlers run with a context");
        format!(
            "peer {}, trace {:016x}, {} ms left",
            ctx.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            ctx.trace_id(),
            ctx.remaining().map(|d| d.as_millis()).unwrap_or(0)
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    // Provider: host the service on an OS-chosen loopback port.
    let server = stardust::Server::builder()
        .serve(CalculatorServer::new(MyCalc))
        .bind("127.0.0.1:0")
        .await?;
    println!("provider listening on {}", server.local_addr());

    // Consumer: a typed proxy over one multiplexed connection.
    let calc = CalculatorClient::connect(server.local_addr()).await?;
    println!("add(1, 2)       = {}", calc.add(1, 2).await?);
    println!("div(10, 4)      = {:?}", calc.div(10, 4).await?);
    println!("div(1, 0)       = {:?}", calc.div(1, 0).await?);
    println!(
        "whoami()        = {}",
        calc.with_timeout(Duration::from_secs(2)).whoami().await?
    );

    // Many calls in flight at once share the connection.
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
    let missing = stardust::Client::connect(server.local_addr()).await?;
    let err = missing
        .call::<_, i64>(&MISSING, 0, &(1, 2))
        .await
        .expect_err("no such service");
    println!("unknown service -> {err}");

    server.shutdown().await;
    println!("provider shut down gracefully");
    Ok(())
}

static MISSING: stardust::ServiceDescriptor = stardust::ServiceDescriptor {
    name: "calc.Missing",
    version: "1.0.0",
    methods: &[stardust::MethodDescriptor {
        name: "add",
        idempotent: false,
    }],
};
