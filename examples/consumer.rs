//! A consumer process: logs in to a registry, finds calc.Calculator providers through it, and
//! calls them directly. See `examples/provider.rs` for the three-terminal setup.

use stardust::Stardust;
use stardust_workspace::calc::CalculatorClient;
use stardust_workspace::cli::Args;

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    let args = Args::parse("web");
    let star = Stardust::builder()
        .registry(&args.registry)
        .app(&args.app, &args.secret)
        .connect()
        .await?;
    let calc = star.client::<CalculatorClient>();
    println!("add(20, 22)  = {}", calc.add(20, 22).await?);
    println!("div(7, 2)    = {:?}", calc.div(7, 2).await?);
    println!("div(1, 0)    = {:?}", calc.div(1, 0).await?);
    println!("whoami()     = {}", calc.whoami().await?);
    Ok(())
}
