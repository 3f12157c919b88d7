//! One module per target; each exposes `run(&[u8])`.

pub mod error;
pub mod frame;
pub mod goaway;
pub mod hello;
pub mod monitor_http;
pub mod notify;
pub mod registry_args;
pub mod request;
pub mod response;
pub mod server;
pub mod token;

mod roundtrip;

pub(crate) use roundtrip::encode;
