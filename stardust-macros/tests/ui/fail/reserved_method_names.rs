#[stardust::service]
pub trait Session {
    async fn connect(&self, addr: String);
    async fn new(&self) -> u64;
    async fn client(&self) -> String;
    async fn with_timeout(&self, millis: u64);
}

fn main() {}
