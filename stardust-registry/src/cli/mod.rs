//! Subcommands of the `stardust-registry` binary that talk to a running registry as a client.

pub(crate) mod rules;
