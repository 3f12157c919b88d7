#[stardust::service]
pub trait Store {
    async fn put<V: serde::Serialize>(&self, value: V);
}

fn main() {}
