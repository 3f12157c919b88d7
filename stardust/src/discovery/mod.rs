//! Discovery: talking to the registry, and the [`Stardust`](crate::Stardust) entry point built on it.

pub mod api;
