// A call has one input stream: a second `Streaming<T>` argument is rejected.
#[stardust::service]
pub trait Merge {
    async fn merge(&self, left: stardust::Streaming<u32>, right: stardust::Streaming<u32>) -> u64;
}

fn main() {}
