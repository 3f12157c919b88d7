//! The Stardust wire protocol: frames, message bodies and value encoding.
//!
//! `docs/PROTOCOL.md` is the normative description; this module is its implementation. It is
//! public so that tools (proxies, test harnesses) can speak the protocol without the typed layer.

pub mod codec;
pub mod frame;
pub mod message;
