//! Subcommands of the `stardust-registry` binary that talk to a running registry as a client.

pub(crate) mod call;
pub(crate) mod conn;
pub(crate) mod rules;
pub(crate) mod tools;
