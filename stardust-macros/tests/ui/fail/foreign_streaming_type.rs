// A type of the user's own called `Streaming`, as the last argument: taken for stardust's input
// stream, and the generated check says how to name it instead.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Streaming<T> {
    pub items: Vec<T>,
}

#[stardust::service]
pub trait Files {
    async fn upload(&self, name: String, chunks: Streaming<u8>) -> u64;
}

fn main() {}
