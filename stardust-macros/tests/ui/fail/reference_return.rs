#[stardust::service]
pub trait Greeter {
    async fn name(&self) -> &'static str;
}

fn main() {}
