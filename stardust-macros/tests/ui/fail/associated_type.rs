#[stardust::service]
pub trait Store {
    type Key;
    async fn len(&self) -> u64;
}

fn main() {}
