#[stardust::service]
pub trait Counter {
    async fn get(self) -> u64;
}

fn main() {}
