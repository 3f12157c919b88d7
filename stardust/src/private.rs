//! Support for the code `#[stardust::service]` generates. Not a public API: names here may change
//! in any release.

use serde::{Serialize, Serializer};

pub use crate::protocol::codec::decode_args;
pub use crate::service::unknown_method;
/// What a generated `XxxClient::connect` takes (tokio's address trait).
pub use tokio::net::ToSocketAddrs;

/// The argument list of a method without parameters: an empty MessagePack array (a plain `()`
/// would encode as `nil`).
#[derive(Debug, Clone, Copy)]
pub struct NoArgs;

impl Serialize for NoArgs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer
            .serialize_tuple(0)
            .and_then(serde::ser::SerializeTuple::end)
    }
}

// Compile-time checks of a service's argument and return types. The generated code calls these
// functions in a function that is never called (no runtime cost), each spanned at a type as the
// user wrote it in the trait, so that a type that can't cross the network is reported there, in
// words about the service, before any error inside the generated glue. The traits exist for
// their messages: each holds for exactly the types that implement the serde trait it names.

/// Fails to compile, at `T`, unless a service method argument of type `T` can be encoded by the
/// client and decoded by the server.
#[doc(hidden)]
pub fn assert_argument<T: ArgumentSerialize + ArgumentDeserialize>() {}

/// Fails to compile, at `T`, unless a service method's return type `T` can be encoded by the
/// server and decoded by the client.
#[doc(hidden)]
pub fn assert_return<T: ReturnSerialize + ReturnDeserialize>() {}

/// The client encodes every argument it sends.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "service method argument type `{Self}` must implement `serde::Serialize`",
    label = "the generated client encodes this argument, so it must implement `serde::Serialize`",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait ArgumentSerialize {}

impl<T: ?Sized + Serialize> ArgumentSerialize for T {}

/// The server decodes every argument it receives into a value the handler owns.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "service method argument type `{Self}` must implement `serde::de::DeserializeOwned`",
    label = "the generated server decodes this argument, so it must implement \
             `serde::Deserialize` without borrowing",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait ArgumentDeserialize {}

impl<T: serde::de::DeserializeOwned> ArgumentDeserialize for T {}

/// The server encodes every return value it sends back.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "service method return type `{Self}` must implement `serde::Serialize`",
    label = "the generated server encodes this return value, so it must implement \
             `serde::Serialize`",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait ReturnSerialize {}

impl<T: ?Sized + Serialize> ReturnSerialize for T {}

/// The client decodes every return value it receives into a value the caller owns.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "service method return type `{Self}` must implement `serde::de::DeserializeOwned`",
    label = "the generated client decodes this return value, so it must implement \
             `serde::Deserialize` without borrowing",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait ReturnDeserialize {}

impl<T: serde::de::DeserializeOwned> ReturnDeserialize for T {}

/// The input stream of the streaming call being started: what the generated dispatch code
/// passes for a method's `Streaming<T>` argument.
pub fn input<T>() -> Result<crate::Streaming<T>, crate::Error> {
    crate::stream::take_input()
}

/// Fails to compile, at `T`, unless `T` can be an item of a stream the consumer sends and the
/// handler receives.
#[doc(hidden)]
pub fn assert_input_item<T: InputItemSerialize + InputItemDeserialize>() {}

/// Fails to compile, at `T`, unless `T` can be an item of a stream the handler sends and the
/// consumer receives.
#[doc(hidden)]
pub fn assert_output_item<T: OutputItemSerialize + OutputItemDeserialize>() {}

/// Fails to compile, at the type, unless what the trait names `Stream<..>` or `Streaming<..>`
/// is Stardust's own: the macro recognises streams by name, so a type of your own with one of
/// these names must be written with a path (e.g. `self::Stream<T>`) to stay a plain value.
#[doc(hidden)]
pub fn assert_stardust_stream<S: StardustStream>() {}

/// Implemented by [`Stream`](crate::Stream) and [`Streaming`](crate::Streaming) only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not `stardust::Stream` or `stardust::Streaming`",
    label = "`#[stardust::service]` reads a type named `Stream<..>` or `Streaming<..>` here as a \
             stream of items",
    note = "to send a value of a type of your own named `Stream` or `Streaming`, write it with a \
            path the macro does not take for a stream, e.g. `self::Stream<T>` or \
            `crate::types::Streaming<T>`",
    note = "to stream items, name Stardust's type: `stardust::Stream<T>` (returned) or \
            `stardust::Streaming<T>` (the last argument)"
)]
pub trait StardustStream {}

impl<T> StardustStream for crate::Stream<T> {}
impl<T> StardustStream for crate::Streaming<T> {}

/// The client encodes every item of a method's input stream.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "stream item type `{Self}` must implement `serde::Serialize`",
    label = "the generated client encodes every item of this input stream, so it must implement \
             `serde::Serialize`",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait InputItemSerialize {}

impl<T: Serialize> InputItemSerialize for T {}

/// The server decodes every item of a method's input stream.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "stream item type `{Self}` must implement `serde::de::DeserializeOwned`",
    label = "the generated server decodes every item of this input stream, so it must implement \
             `serde::Deserialize` without borrowing",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait InputItemDeserialize {}

impl<T: serde::de::DeserializeOwned> InputItemDeserialize for T {}

/// The server encodes every item of a method's output stream.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "stream item type `{Self}` must implement `serde::Serialize`",
    label = "the generated server encodes every item of this output stream, so it must \
             implement `serde::Serialize`",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait OutputItemSerialize {}

impl<T: Serialize> OutputItemSerialize for T {}

/// The client decodes every item of a method's output stream.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "stream item type `{Self}` must implement `serde::de::DeserializeOwned`",
    label = "the generated client decodes every item of this output stream, so it must \
             implement `serde::Deserialize` without borrowing",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]` to it"
)]
pub trait OutputItemDeserialize {}

impl<T: serde::de::DeserializeOwned> OutputItemDeserialize for T {}

/// What a generated client holds of an in-process implementation ([`crate::local`]): the
/// implementation as the service's hidden object-safe trait `L`, and the [`LocalService`] it
/// came from (mode, host). Empty for a client that calls over the network.
///
/// [`LocalService`]: crate::local::LocalService
pub struct Local<L: ?Sized>(Option<(std::sync::Arc<L>, crate::local::LocalService)>);

impl<L: ?Sized + 'static> Local<L> {
    /// No in-process implementation.
    pub fn none() -> Self {
        Local(None)
    }

    /// The implementation in `local`, if it is one of `L` (an `Arc<L>`).
    pub fn of(local: &crate::local::LocalService) -> Self {
        Local(
            local
                .get::<std::sync::Arc<L>>()
                .map(|imp| (imp.clone(), local.clone())),
        )
    }

    /// The implementation and its service, if there is one and it may still be called
    /// in-process.
    #[inline]
    pub fn get(&self) -> Option<(&L, &crate::local::LocalService)> {
        self.0
            .as_ref()
            .filter(|(_, local)| local.is_live())
            .map(|(imp, local)| (&**imp, local))
    }
}

impl<L: ?Sized> Clone for Local<L> {
    fn clone(&self) -> Self {
        Local(self.0.clone())
    }
}

impl<L: ?Sized> std::fmt::Debug for Local<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some((_, local)) => write!(f, "in-process ({:?})", local.mode()),
            None => f.write_str("remote"),
        }
    }
}

/// An in-process call of method `method` whose implementation future is `call`, through
/// `client`: what a generated client's method runs when it holds an implementation.
pub async fn call_local<R>(
    client: &crate::Client,
    local: &crate::local::LocalService,
    method: usize,
    call: impl std::future::Future<Output = R>,
) -> Result<R, crate::Error> {
    crate::client::call_local(client, local, method, call).await
}

/// Boxes an implementation's future for the hidden object-safe trait of in-process calls.
pub type LocalFuture<'a, R> = std::pin::Pin<Box<dyn std::future::Future<Output = R> + Send + 'a>>;

/// `Bytes` arguments and results in generated code: sent and received without copying large
/// payloads (`protocol::zero_copy`).
pub use crate::protocol::zero_copy::ZeroCopy;
