#[stardust::service]
pub trait Counter {
    async fn get(self: Box<Self>) -> u64;
}

fn main() {}
