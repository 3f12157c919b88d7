#[stardust::service]
pub trait Counter {
    async fn get(mut self) -> u64;
}

fn main() {}
