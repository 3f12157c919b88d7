#[stardust::service]
pub trait Calculator {
    async fn add(&self, _: i64, b: i64) -> i64;
}

fn main() {}
