#[stardust::service]
pub trait Greeter {
    async fn greet_all(&self, names: Vec<&str>) -> String;
    async fn greet_cow(&self, name: std::borrow::Cow<'_, str>) -> String;
}

fn main() {}
