//! Stardust: turn a plain Rust trait into a fast networked service.
//!
//! Put [`#[stardust::service]`](macro@service) on a trait of `async fn`s. You get a server-side
//! wrapper (`XxxServer`) that a [`Server`] hosts, and a typed proxy (`XxxClient`) whose methods
//! make calls over one long-lived, multiplexed TCP connection speaking MessagePack
//! (`docs/PROTOCOL.md` in the repository specifies the wire format).
//!
//! ```
//! #[stardust::service(name = "calc.Calculator")]
//! pub trait Calculator {
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, String>;
//! }
//!
//! struct MyCalc;
//!
//! impl Calculator for MyCalc {
//!     async fn add(&self, a: i64, b: i64) -> i64 {
//!         a + b
//!     }
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, String> {
//!         a.checked_div(b).ok_or_else(|| "division by zero".to_owned())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), stardust::Error> {
//! let server = stardust::Server::builder()
//!     .serve(CalculatorServer::new(MyCalc))
//!     .allow_anonymous() // or `.authenticator(..)` to require registry tokens
//!     .bind("127.0.0.1:0")
//!     .await?;
//!
//! let calc = CalculatorClient::connect(server.local_addr()).await?;
//! assert_eq!(calc.add(1, 2).await?, 3);
//! // Application errors arrive typed, inside the framework's `Result`.
//! assert_eq!(calc.div(1, 0).await?, Err("division by zero".to_owned()));
//! # Ok(())
//! # }
//! ```
//!
//! # Where things live
//!
//! - [`Stardust`]: a process's membership in a deployment: log in to the registry, serve and
//!   register providers, get proxies that find providers through the registry (or, with
//!   [`StardustBuilder::via_agent`], through a local [`agent`]).
//! - [`agent`]: the sidecar agent that does discovery, authentication, balancing and failover
//!   for the applications on its host.
//! - [`Server`] / [`ServerBuilder`]: hosting services, limits, keepalive, graceful shutdown.
//! - [`Client`] / [`ClientBuilder`]: connections, deadlines, metadata, notifications.
//! - [`Context`]: what a handler knows about the call it serves, including who is calling.
//! - [`auth`]: tokens, [`Authenticator`](auth::Authenticator)s for servers and
//!   [`Credentials`](auth::Credentials) for clients.
//! - [`Interceptor`] / [`ClientInterceptor`]: hooks around every call.
//! - [`Error`] / [`ErrorKind`]: every framework failure, with stable wire codes.
//! - [`discovery`]: the registry's API and the client side of discovery.
//! - [`tls`]: TLS for providers, the registry and clients (rustls).
//! - The wire format itself is specified in `docs/PROTOCOL.md`, for clients in other languages;
//!   the Rust encoding is internal.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// Lets `#[stardust::service]` (whose output names `::stardust::…`) be used inside this crate too,
// for the registry's own API.
extern crate self as stardust;

pub mod agent;
pub mod auth;
pub mod balance;
mod client;
mod context;
pub mod discovery;
mod error;
mod interceptor;
mod metadata;
mod monitor;
mod protocol;
mod server;
mod service;
pub mod tls;
mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The wire encoding as this runtime implements it (frames, message bodies, values), for this
/// project's own tests, fuzz targets and tools. **Not a public API**: not covered by semver, and
/// any release may change it. Clients in other languages implement `docs/PROTOCOL.md`.
#[doc(hidden)]
pub mod __wire {
    pub use crate::protocol::{codec, frame, message};
}

// Internal decoders for the fuzz targets in `fuzz/`; compiled only with the hidden `fuzzing`
// feature, so the public API is unchanged without it.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use client::{Client, ClientBuilder, Notification, Notifications, ServiceClient};
pub use context::Context;
pub use discovery::{Provider, Stardust, StardustBuilder};
pub use error::{Error, ErrorKind};
pub use interceptor::{ClientInterceptor, Interceptor, OutgoingCall};
pub use metadata::{Metadata, MetadataLimits};
pub use protocol::message::Features;
pub use server::{EncodedNotification, Notifier, Server, ServerBuilder};
pub use service::{Call, MethodDescriptor, Service, ServiceDescriptor};
pub use stardust_macros::service;
