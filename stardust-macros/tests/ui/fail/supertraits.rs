#[stardust::service]
pub trait Calculator: Send + Sync {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
