//! A consumer process: logs in to a registry, finds calc.Calculator providers through it, and
//! calls them directly. See `examples/provider.rs` for the three-terminal setup.
//!
//! With `--forever` it keeps calling, twice a second, until Ctrl-C: watch it ride out a provider
//! or a registry node going away.

use std::time::Duration;

use stardust_workspace::calc::CalculatorClient;
use stardust_workspace::cli::Args;

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    let args = Args::parse("web");
    let star = args.stardust().connect().await?;
    let calc = star.client::<CalculatorClient>();
    if args.forever {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut n: i64 = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tick.tick() => {}
            }
            match (calc.add(n, 1).await, calc.whoami().await) {
                (Ok(sum), Ok(who)) => println!("add({n}, 1) = {sum}   [{who}]"),
                (Err(e), _) | (_, Err(e)) => println!("call failed: {e}"),
            }
            n += 1;
        }
    }
    println!("add(20, 22)  = {}", calc.add(20, 22).await?);
    println!("div(7, 2)    = {:?}", calc.div(7, 2).await?);
    println!("div(1, 0)    = {:?}", calc.div(1, 0).await?);
    println!("whoami()     = {}", calc.whoami().await?);
    Ok(())
}
