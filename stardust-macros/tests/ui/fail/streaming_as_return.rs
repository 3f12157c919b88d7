// `Streaming<T>` is what a handler receives; the stream a method returns is `Stream<T>`.
#[stardust::service]
pub trait Logs {
    async fn tail(&self, file: String) -> stardust::Streaming<String>;
}

fn main() {}
