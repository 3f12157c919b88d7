#[stardust::service]
pub trait Store<K> {
    async fn get(&self, key: K) -> Option<String>;
}

fn main() {}
