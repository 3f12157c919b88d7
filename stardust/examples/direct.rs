//! The smallest Stardust program: the README's first example ("A service in a minute", direct
//! form) as a binary, with a few thousand calls. A provider and a consumer in one process, plain
//! TCP, anonymous callers, no registry and no TLS.
//!
//! It is what the minimal build (`--no-default-features`: no TLS, no registry) is for, and how
//! its size is measured (release profile, not stripped; Linux x86-64, Rust 1.95):
//!
//! ```text
//! cargo build --release -p stardust --no-default-features --example direct
//! ls -l target/release/examples/direct    # 2.8 MB (2.1 MB stripped)
//! cargo build --release -p stardust --example direct
//! ls -l target/release/examples/direct    # 4.4 MB (3.3 MB stripped): default features
//! ```
//!
//! For scale: the same shape without Stardust (tokio, serde and rmp-serde, length-prefixed
//! frames on one connection) is 1.1 MB. It also runs with the default features
//! (`cargo run -p stardust --example direct`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum DivError {
    DivideByZero,
}

#[stardust::service(name = "calc.Calculator", version = "1.0.0")]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
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
}

/// Calls made, sequentially and then concurrently.
const CALLS: i64 = 2_000;

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    // Provider
    let server = stardust::Server::builder()
        .serve(CalculatorServer::new(MyCalc))
        .allow_anonymous()
        .bind("127.0.0.1:0")
        .await?;

    // Consumer
    let calc = CalculatorClient::connect(server.local_addr()).await?;
    assert_eq!(calc.add(1, 2).await?, 3);
    assert!(matches!(calc.div(1, 0).await?, Err(DivError::DivideByZero)));

    let started = std::time::Instant::now();
    for i in 0..CALLS {
        assert_eq!(calc.add(i, 1).await?, i + 1);
    }
    let calls = (0..CALLS).map(|i| {
        let calc = calc.clone();
        tokio::spawn(async move { calc.div(i * 7, 7).await })
    });
    for (i, call) in calls.collect::<Vec<_>>().into_iter().enumerate() {
        let got = call.await.expect("the call's task panicked")?;
        assert!(matches!(got, Ok(q) if q == i as i64));
    }
    println!(
        "{} calls to {} in {:?}",
        2 * CALLS + 2,
        server.local_addr(),
        started.elapsed()
    );
    Ok(())
}
