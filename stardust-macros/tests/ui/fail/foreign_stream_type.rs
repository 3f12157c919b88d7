// The macro recognises streams by name: a type of the user's own called `Stream` is taken for
// stardust's, and the generated check says how to name it instead.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Stream<T> {
    pub items: Vec<T>,
}

#[stardust::service]
pub trait Logs {
    async fn lines(&self, file: String) -> Stream<String>;
}

fn main() {}
