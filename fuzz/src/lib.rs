//! Fuzz targets for the decoders a Stardust process runs on bytes from untrusted peers.
//!
//! Every target is a plain `fn(&[u8])` that panics only on a bug: a crash inside a decoder, or
//! a broken invariant the target checks (a frame the reader hands out that is not the bytes
//! that were sent, a value that does not survive re-encoding, a forged token that verifies).
//! `src/main.rs` hands them to AFL++; `tests/corpus.rs` replays the committed corpus and every
//! crash reproduction through them in a plain `cargo test`.

pub mod echo;
pub mod seeds;
pub mod targets;

/// A fuzz target: its name (the corpus directory and `stardust-fuzz`'s argument) and its
/// function.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name, as in `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// Runs one input; panics only on a bug.
    pub run: fn(&[u8]),
}

/// Every target, in the order `run-all.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: targets::frame::run,
    },
    Target {
        name: "hello",
        run: targets::hello::run,
    },
    Target {
        name: "request",
        run: targets::request::run,
    },
    Target {
        name: "response",
        run: targets::response::run,
    },
    Target {
        name: "error",
        run: targets::error::run,
    },
    Target {
        name: "notify",
        run: targets::notify::run,
    },
    Target {
        name: "goaway",
        run: targets::goaway::run,
    },
    Target {
        name: "token",
        run: targets::token::run,
    },
    Target {
        name: "registry_args",
        run: targets::registry_args::run,
    },
    Target {
        name: "monitor_http",
        run: targets::monitor_http::run,
    },
    Target {
        name: "server",
        run: targets::server::run,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
