#[stardust::service(version = "1.0.0", version = "2.0.0")]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
