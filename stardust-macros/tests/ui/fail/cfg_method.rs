#[stardust::service]
pub trait Calculator {
    #[cfg(feature = "experimental")]
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn sub(&self, a: i64, b: i64) -> i64;
}

fn main() {}
