//! Discovery: the registry's API, the process's session with the registry, and the
//! [`Stardust`] entry point built on them.

pub mod api;
mod local;
mod provider;
pub(crate) mod session;
mod star;
pub(crate) mod watch;

pub use provider::Provider;
pub use star::{Stardust, StardustBuilder};
