#[stardust::service]
pub trait Store {
    async fn put<'a>(&self, value: String);
}

fn main() {}
