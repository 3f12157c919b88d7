// `Stream<T>` is what a handler sends; the stream a method receives is `Streaming<T>`.
#[stardust::service]
pub trait Files {
    async fn upload(&self, name: String, chunks: ::stardust::Stream<Vec<u8>>) -> u64;
}

fn main() {}
