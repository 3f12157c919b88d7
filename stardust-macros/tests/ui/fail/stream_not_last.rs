// The input stream travels after the other arguments: `Streaming<T>` must be the last argument.
#[stardust::service]
pub trait Files {
    async fn upload(&self, chunks: stardust::Streaming<Vec<u8>>, name: String) -> u64;
}

fn main() {}
