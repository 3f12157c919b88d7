#[stardust::service]
pub struct Calculator;

fn main() {}
