// Stream items are decoded into values the receiving side owns: they can't borrow, in either
// direction.
#[stardust::service]
pub trait Logs {
    async fn tail(&self, file: String) -> stardust::Stream<&str>;
    async fn append(&self, file: String, lines: stardust::Streaming<Vec<&'static str>>);
}

fn main() {}
