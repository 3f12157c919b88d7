#[stardust::service]
pub trait Logger {
    async fn log(&self, format: String, rest: ...);
}

fn main() {}
