//! Procedural macros for [Stardust](https://docs.rs/stardust): `#[stardust::service]`.
//!
//! Use the macro through the runtime crate, as `#[stardust::service]`; this crate is an
//! implementation detail of `stardust` and has no API of its own.
//!
//! The macro is deliberately thin. It checks the trait, then writes the glue a person would
//! otherwise write by hand: a `match` from method index to method on the server side and one
//! `async fn` per method on the client side. Everything else (encoding, connections, timeouts,
//! concurrency) lives in the runtime. `cargo expand` shows the generated code; it is meant to be
//! readable.
//!
//! - `parse` reads and validates the attribute and the trait into a small model;
//! - `expand` generates code from that model.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod describe;
mod expand;
mod local;
mod parse;
mod zero_copy;

/// Turns a trait into a Stardust service: a network server wrapper and a typed client.
///
/// ```
/// #[stardust::service(name = "calc.Calculator", version = "1.2.0")] // both optional
/// pub trait Calculator {
///     /// Adds two numbers.
///     async fn add(&self, a: i64, b: i64) -> i64;
///     /// Application errors travel as the `Err` of a `Result` return type.
///     async fn div(&self, a: i64, b: i64) -> Result<i64, String>;
///     /// Safe to retry on another provider.
///     #[stardust(idempotent)]
///     async fn ping(&self);
/// }
///
/// struct MyCalculator;
///
/// impl Calculator for MyCalculator {
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///     async fn div(&self, a: i64, b: i64) -> Result<i64, String> {
///         a.checked_div(b).ok_or_else(|| "division by zero".to_owned())
///     }
///     async fn ping(&self) {}
/// }
///
/// // Provider side: host `CalculatorServer::new(MyCalculator)` on a `stardust::Server`.
/// let server = CalculatorServer::new(MyCalculator);
/// # let _ = server;
///
/// // Consumer side: `CalculatorClient::connect(addr).await?.add(1, 2).await?` returns 3;
/// // `div` returns `Result<Result<i64, String>, stardust::Error>`.
/// assert_eq!(CalculatorClient::DESCRIPTOR.name, "calc.Calculator");
/// assert_eq!(CalculatorClient::DESCRIPTOR.methods[2].name, "ping");
/// assert!(CalculatorClient::DESCRIPTOR.methods[2].idempotent);
/// ```
///
/// # What it generates
///
/// For a trait `Calculator`:
///
/// - **The trait itself**, with `Send + Sync + 'static` added as supertraits and each
///   `async fn m(&self, ..) -> R` rewritten as `fn m(&self, ..) -> impl Future<Output = R> + Send`,
///   so the server can run calls on any thread. Implement it with plain `async fn`.
/// - **`CalculatorServer<T>`**, implementing `stardust::Service` for any `T: Calculator`:
///   `CalculatorServer::new(implementation)` is what a `stardust::Server` hosts.
/// - **`CalculatorClient`**, implementing `stardust::ServiceClient`, with
///   `connect(addr)`, `new(client)`, `client()`, `with_timeout(duration)`, the `DESCRIPTOR`
///   constant, and one `async fn` per method returning `Result<R, stardust::Error>`. A method
///   returning `Result<T, E>` therefore returns `Result<Result<T, E>, stardust::Error>` on the
///   client: the outer error is the framework's, the inner one the application's.
///
/// The server and client have the trait's visibility. Doc comments on methods are copied to the
/// client's methods.
///
/// # Streams
///
/// A method may stream items either way, or both:
///
/// - returning `stardust::Stream<T>`, the handler sends items: the client's method returns
///   `Result<stardust::Streaming<T>, stardust::Error>` once the call is open, to read them from;
/// - taking `stardust::Streaming<T>` as its last argument, the consumer sends items: the client's
///   method takes a `stardust::Stream<T>` there.
///
/// Items that can fail are `Result<T, E>` with your error type. The macro knows the two types by
/// name (`Stream` or `Streaming`, bare or as `stardust::`/`::stardust::` paths), and rejects them
/// anywhere else: `Streaming` before another argument or twice, `Stream` as an argument,
/// `Streaming` as the return type, or either inside another type (`Option<Streaming<T>>`,
/// `Result<Stream<T>, E>`). A type of your own named `Stream` is written with a path, e.g.
/// `self::Stream<T>`, to stay a plain value.
///
/// # Options
///
/// - `name = "..."`: the service's name on the wire (default: the trait's name).
/// - `version = "MAJOR.MINOR.PATCH"`: the service's version (default: `"1.0.0"`).
///
/// On a method, `#[stardust(idempotent)]` marks it safe to repeat, so a failed call may be
/// retried on another provider.
///
/// # Rules
///
/// Arguments and return values cross the network, so the macro rejects, with an error at the
/// offending token:
///
/// - generic traits, `where` clauses, supertraits, associated types and constants;
/// - methods that are not `async fn`, do not take `&self`, are generic, have a default body,
///   or are `unsafe`, `const`, `extern` or variadic;
/// - arguments that are not plain identifiers (`(a, b): (i32, i32)`, `_`, `mut x`) or whose types
///   borrow (`&str`, `Cow<'a, str>`) or use `impl Trait`: use owned types such as `String`;
/// - methods named `connect`, `new`, `client`, `with_timeout` or `DESCRIPTOR`, which the client
///   already defines.
///
/// Argument and return types must implement `serde::Serialize` and `serde::Deserialize` and be
/// `Send + 'static`.
///
/// # `Bytes` without copies
///
/// An argument or return type written `Bytes` (bare or with a path, e.g. `bytes::Bytes`) is sent
/// and received without copying payloads of 4 KiB and more (see the runtime's docs). The macro
/// knows it by name, so it must then be `bytes::Bytes` itself: a type of your own named `Bytes`
/// fails to compile there; rename it or alias it (`type Blob = my::Bytes;`) to pass it as a plain
/// value.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse::parse_service(args.into(), item.into()) {
        Ok(def) => expand::expand(&def).into(),
        // Only the errors are emitted, not the trait: a half-valid trait would add its own,
        // less helpful, errors on top of ours.
        Err(errors) => errors.to_compile_error().into(),
    }
}
