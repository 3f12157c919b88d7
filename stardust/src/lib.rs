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
//!
//! # Cargo features
//!
//! `tls` and `registry` are on by default. Without them (`default-features = false`) Stardust
//! is plain TCP without a registry, and rustls, ring and the Ed25519 crates leave the dependency
//! tree.
//!
//! | feature | what it adds | pulls in |
//! | --- | --- | --- |
//! | `tls` | [`tls`], and the `.tls(..)` methods of [`ServerBuilder`], [`ClientBuilder`], [`StardustBuilder`] and the agent's builder | rustls, tokio-rustls, ring |
//! | `registry` | [`Stardust`] and [`discovery`], the [`agent`], checking registry-signed tokens ([`TokenVerifier`](auth::TokenVerifier), [`auth::token::verify`]) and proof of possession ([`ProofKey`](auth::ProofKey), [`ClientBuilder::proof_key`], [`Credentials::proof_key`](auth::Credentials::proof_key)) | ed25519-dalek, getrandom |
//! | `otel` (off by default) | Stardust's call spans (`stardust.call`, `stardust.serve`) as OpenTelemetry spans: span kind, RPC attributes, error status, and parents tied to the `traceparent` of calls, so one trace crosses processes ([`Context::trace_context`]) | opentelemetry, tracing-opentelemetry |
//!
//! ```toml
//! stardust = { version = "0.1", default-features = false }                     # plain TCP
//! stardust = { version = "0.1", default-features = false, features = ["tls"] } # and TLS
//! ```
//!
//! Without `registry`, everything in the example above works the same: servers, clients, the
//! generated `XxxServer` and `XxxClient`, interceptors, metadata, notifications, deadlines. A
//! server takes anonymous callers ([`ServerBuilder::allow_anonymous`]) or an
//! [`Authenticator`](auth::Authenticator) of your own ([`ServerBuilder::authenticator`], with
//! [`require_proof(false)`](ServerBuilder::require_proof) for identities not bound to a key, as
//! in any build); having nothing to check a proof of possession with, it refuses tokens bound to
//! a key. A client presents [`Credentials`](auth::Credentials) and proves no key. The token
//! format ([`auth::token`]: claims, encoding) stays.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
// Without the `registry` feature, the parts of the client, server and wire layers that only
// discovery and the agent use (balanced pools, status reports, the registry API's wire types)
// are still compiled but never called: gating each would scatter `cfg`s through every layer for
// nothing (the linker leaves them out). Unused code is linted in the default build.
#![cfg_attr(not(feature = "registry"), allow(dead_code, unused_imports))]

// Lets `#[stardust::service]` (whose output names `::stardust::…`) be used inside this crate too,
// for the registry's own API.
extern crate self as stardust;

#[cfg(feature = "registry")]
pub mod agent;
pub mod auth;
pub mod balance;
mod client;
mod context;
#[cfg(feature = "registry")]
pub mod discovery;
mod error;
mod interceptor;
pub mod local;
mod metadata;
mod monitor;
mod protocol;
mod server;
mod service;
pub mod stream;
#[cfg(feature = "tls")]
pub mod tls;
mod trace_context;
pub mod traffic;
// Without TLS, configuration types of which no value exists stand in for the module's, so code
// that carries an optional TLS config needs no `cfg` of its own.
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
mod tls;
mod transport;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// The wire encoding as this runtime implements it (frames, message bodies, values), for this
/// project's own tests, fuzz targets and tools. **Not a public API**: not covered by semver, and
/// any release may change it. Clients in other languages implement `docs/PROTOCOL.md`.
#[doc(hidden)]
pub mod __wire {
    pub use crate::protocol::{codec, frame, message, stream};
}

// Internal decoders for the fuzz targets in `fuzz/`; compiled only with the hidden `fuzzing`
// feature, so the public API is unchanged without it.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use client::{Client, ClientBuilder, Notification, Notifications, ServiceClient};
pub use context::Context;
#[cfg(feature = "registry")]
pub use discovery::{Provider, Stardust, StardustBuilder};
pub use error::{Error, ErrorKind};
pub use interceptor::{ClientInterceptor, Interceptor, OutgoingCall};
pub use metadata::{Metadata, MetadataLimits};
pub use protocol::message::Features;
pub use server::{EncodedNotification, Notifier, Server, ServerBuilder};
pub use service::{ArgDescriptor, Call, MethodDescriptor, Service, ServiceDescriptor};
pub use stardust_macros::service;
pub use stream::{Stream, StreamSender, Streaming};
pub use trace_context::TraceContext;
