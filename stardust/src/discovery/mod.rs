//! Discovery: the registry's API, the process's session with the registry, and the
//! [`Stardust`] entry point built on them.

pub mod api;
pub(crate) mod session;
mod star;
pub(crate) mod watch;

pub use star::{Provider, Stardust, StardustBuilder};
