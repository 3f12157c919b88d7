//! A provider process: logs in to a registry, serves the calculator, registers it, and keeps
//! serving until Ctrl-C (then deregisters and shuts down gracefully).
//!
//! ```text
//! cargo run -p stardust-registry -- serve --dev          # terminal 1
//! cargo run --example provider                           # terminal 2
//! cargo run --example consumer                           # terminal 3
//! ```
//!
//! Options: `--registry ADDR` (default 127.0.0.1:7600; repeat it, or give a comma-separated
//! list, for the nodes of a registry sharing one etcd), `--app ID` and the secret in the
//! `STARDUST_SECRET` environment variable (defaults suit a dev-mode registry).

use stardust::Server;
use stardust_workspace::calc::{CalculatorServer, MyCalc};
use stardust_workspace::cli::Args;

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    let args = Args::parse("calc-provider");
    let star = args.stardust().connect().await?;
    let provider = star
        .serve(
            Server::builder().serve(CalculatorServer::new(MyCalc)),
            "127.0.0.1:0",
        )
        .await?;
    println!(
        "provider `{}` serving calc.Calculator on {} (registered with {}); Ctrl-C to stop",
        star.app(),
        provider.endpoint(),
        args.registries.join(", ")
    );
    let _ = tokio::signal::ctrl_c().await;
    provider.shutdown().await;
    println!("deregistered and stopped");
    Ok(())
}
