// A type inside the return type that is only `Deserialize`: rustc names the inner type and the
// serde trait, still at the return type in the trait.
#[derive(serde::Deserialize)]
pub struct Item {
    pub id: u32,
}

#[stardust::service]
pub trait Store {
    async fn get(&self, id: u32) -> Result<Item, String>;
}

fn main() {}
