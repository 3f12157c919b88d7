//! Stardust: turn a plain Rust trait into a fast networked service.
#![warn(missing_docs)]

mod client;
mod context;
mod error;
mod interceptor;
mod metadata;
pub mod protocol;
mod server;
mod service;
mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use client::{Client, ClientBuilder, Notification, Notifications};
pub use context::Context;
pub use error::{Error, ErrorKind};
pub use interceptor::{ClientInterceptor, Interceptor, OutgoingCall};
pub use metadata::Metadata;
pub use server::{Notifier, Server, ServerBuilder};
pub use service::{Call, MethodDescriptor, Service, ServiceClient, ServiceDescriptor};
pub use stardust_macros::service;
pub use tokio::net::ToSocketAddrs;
