// The server encodes every item of the output stream: an item type that is only `Deserialize`
// is reported at the item type.
use stardust::Stream;

#[derive(serde::Deserialize)]
pub struct Line {
    pub text: String,
}

#[stardust::service]
pub trait Logs {
    async fn tail(&self, file: String) -> Stream<Line>;
}

fn main() {}
