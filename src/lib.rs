//! Shared code of the workspace's examples (the root package owns `examples/`, `tests/` and
//! `benches/`; it is never published).

pub mod calc;
pub mod cli;
