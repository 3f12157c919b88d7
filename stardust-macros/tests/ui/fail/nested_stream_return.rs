// A stream can't be returned inside another type: errors go in the items
// (`Stream<Result<T, E>>`), and a method returns one stream.
#[stardust::service]
pub trait Logs {
    async fn tail(&self, file: String) -> Result<stardust::Stream<String>, String>;
    async fn tail_all(&self, files: Vec<String>) -> Vec<stardust::Stream<String>>;
}

fn main() {}
