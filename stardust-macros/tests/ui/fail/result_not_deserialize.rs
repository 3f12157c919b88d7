// The client decodes return values: a type that is only `Serialize` is reported at the return
// type.
#[derive(serde::Serialize)]
pub struct Item {
    pub id: u32,
}

#[stardust::service]
pub trait Store {
    async fn get(&self, id: u32) -> Item;
}

fn main() {}
