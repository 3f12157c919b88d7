// The client encodes arguments: a type that is only `Deserialize` is reported at the argument.
#[derive(serde::Deserialize)]
pub struct Item {
    pub id: u32,
}

#[stardust::service]
pub trait Store {
    async fn put(&self, item: Item) -> bool;
}

fn main() {}
