#[stardust::service]
pub trait Counter {
    async fn get(&'static self) -> u64;
}

fn main() {}
