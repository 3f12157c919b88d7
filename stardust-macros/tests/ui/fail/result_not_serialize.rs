// The server encodes return values: a type that is only `Deserialize` is reported at the
// return type.
#[derive(serde::Deserialize)]
pub struct Item {
    pub id: u32,
}

#[stardust::service]
pub trait Store {
    async fn get(&self, id: u32) -> Item;
}

fn main() {}
