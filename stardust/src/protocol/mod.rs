//! The Stardust wire protocol: frames, message bodies and value encoding.
//!
//! `docs/PROTOCOL.md` is the normative description; this module is its implementation. It is
//! public so that tools (proxies, test harnesses) can speak the protocol without the typed layer.

pub mod codec;
mod decode;
pub mod frame;
pub(crate) mod handshake;
pub mod message;
mod pack;
pub mod registry;
pub mod stream;
pub(crate) mod zero_copy;
