#[stardust::service]
pub trait Store {
    async fn put(&self, value: String)
    where
        Self: Sized;
}

fn main() {}
