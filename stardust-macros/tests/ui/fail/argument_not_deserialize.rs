// The server decodes arguments: a type that is only `Serialize` is reported at the argument.
#[derive(serde::Serialize)]
pub struct Item {
    pub id: u32,
}

#[stardust::service]
pub trait Store {
    async fn put(&self, id: u32, item: Item) -> bool;
}

fn main() {}
