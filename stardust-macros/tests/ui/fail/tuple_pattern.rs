#[stardust::service]
pub trait Calculator {
    async fn add(&self, (a, b): (i64, i64)) -> i64;
}

fn main() {}
