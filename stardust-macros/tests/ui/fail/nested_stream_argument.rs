// A stream can't be optional or nested in another type: the input stream is a plain
// `Streaming<T>` argument (send an empty stream for "nothing").
#[stardust::service]
pub trait Files {
    async fn upload(&self, name: String, chunks: Option<stardust::Streaming<Vec<u8>>>) -> u64;
}

fn main() {}
