// The server decodes every item of the input stream: an item type that is only `Serialize` is
// reported at the item type.
use stardust::Streaming;

#[derive(serde::Serialize)]
pub struct Chunk {
    pub data: Vec<u8>,
}

#[stardust::service]
pub trait Files {
    async fn upload(&self, name: String, chunks: Streaming<Chunk>) -> u64;
}

fn main() {}
