#[stardust::service]
pub trait Calculator {
    async extern "C" fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
