//! The provider-side service abstraction that `#[stardust::service]` implements.
//!
//! A [`Service`] is the type-erased form of one service: it names itself with a
//! [`ServiceDescriptor`] and turns `(method index, argument bytes)` into a [`Call`], a boxed future
//! that produces the encoded result. The server keeps services as `Arc<dyn Service>`, so one server
//! hosts any number of them, and the generated code stays a plain `match` over method indexes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::BytesMut;
use serde::Serialize;

use crate::error::{Error, ErrorKind};
use crate::stream::Stream;
use futures::Stream as _;

/// Static description of a service: what a registry registers and a proxy routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceDescriptor {
    /// Fully qualified service name as it travels in requests, e.g. `calc.Calculator`.
    pub name: &'static str,
    /// Service version (semver), e.g. `1.0.0`.
    pub version: &'static str,
    /// The methods, in declaration order; a method's index here is what [`Service::call`] takes.
    pub methods: &'static [MethodDescriptor],
}

impl ServiceDescriptor {
    /// The index of the method called `name`.
    pub fn method_index(&self, name: &str) -> Option<usize> {
        self.methods.iter().position(|m| m.name == name)
    }
}

/// Static description of one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDescriptor {
    /// Method name as it travels in requests.
    pub name: &'static str,
    /// Whether repeating the call is harmless, so a failed call may be retried on another provider.
    pub idempotent: bool,
    /// Whether the method takes a stream of items from the consumer (a
    /// [`Streaming`](crate::Streaming) argument).
    pub input_stream: bool,
    /// Whether the method returns a stream of items ([`Stream`](crate::Stream)).
    pub output_stream: bool,
}

impl MethodDescriptor {
    /// A unary method called `name`: not idempotent, no streams.
    pub const fn unary(name: &'static str) -> MethodDescriptor {
        MethodDescriptor {
            name,
            idempotent: false,
            input_stream: false,
            output_stream: false,
        }
    }

    /// Whether calls of the method are streaming calls (a stream either way).
    pub const fn is_streaming(&self) -> bool {
        self.input_stream || self.output_stream
    }
}

/// A service that a [`Server`](crate::Server) can host. Implemented by the `XxxServer` type that
/// `#[stardust::service]` generates; hand-written implementations are possible but rarely needed.
pub trait Service: Send + Sync + 'static {
    /// Name, version and methods of the service.
    fn descriptor(&self) -> &'static ServiceDescriptor;

    /// Starts the call of method number `method` (an index into the descriptor's methods) with the
    /// MessagePack argument array `args`.
    ///
    /// Argument decoding happens here, synchronously, so a call whose arguments do not decode
    /// fails before any task is created.
    fn call(&self, method: usize, args: &[u8]) -> Result<Call, Error>;
}

/// The service and method a call is to: the static names of a generated proxy (free to copy),
/// or names that arrived at run time (an agent forwarding a request), shared by the call's
/// attempts.
#[derive(Clone, Debug)]
pub(crate) enum CallName {
    Static {
        service: &'static str,
        method: &'static str,
    },
    /// `service.method`, and where the service name ends.
    Shared { full: Arc<str>, split: usize },
}

impl CallName {
    /// Names known only at run time (one allocation, shared by every attempt of the call).
    pub(crate) fn shared(service: &str, method: &str) -> CallName {
        CallName::Shared {
            full: Arc::from(format!("{service}.{method}")),
            split: service.len(),
        }
    }

    pub(crate) fn service(&self) -> &str {
        match self {
            CallName::Static { service, .. } => service,
            CallName::Shared { full, split } => &full[..*split],
        }
    }

    pub(crate) fn method(&self) -> &str {
        match self {
            CallName::Static { method, .. } => method,
            CallName::Shared { full, split } => &full[*split + 1..],
        }
    }
}

impl fmt::Display for CallName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallName::Static { service, method } => write!(f, "{service}.{method}"),
            CallName::Shared { full, .. } => f.write_str(full),
        }
    }
}

/// A started call: a boxed future that runs the handler and then encodes its output.
///
/// This is one heap allocation per call (the future has to live somewhere once it outlives the
/// read loop's stack frame); the output is encoded straight into the connection's write buffer.
pub struct Call(Pin<Box<dyn ErasedCall>>);

impl Call {
    /// Wraps the future of a handler whose output is sent back to the caller.
    pub fn new<F>(future: F) -> Call
    where
        F: Future + Send + 'static,
        F::Output: Serialize + Send + 'static,
    {
        Call(Box::pin(Replying {
            future,
            output: Output::Pending,
        }))
    }

    /// Polls the handler. `Ready` means [`Call::encode_output`] may be called.
    pub fn poll_call(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        self.0.as_mut().poll_call(cx)
    }

    /// Appends the MessagePack encoding of the handler's output to `buf`. Call once, after
    /// [`Call::poll_call`] returned `Ready`.
    pub fn encode_output(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        self.0.as_mut().encode_output(buf)
    }

    /// Wraps the future of a handler that returns a stream of items (a method returning
    /// [`Stream<T>`](crate::Stream)): once the future is done, the server sends the stream's
    /// items, then the call's (nil) response.
    pub fn streaming<F, T>(future: F) -> Call
    where
        F: Future<Output = Stream<T>> + Send + 'static,
        T: Serialize + Send + 'static,
    {
        Call(Box::pin(Streams::Starting { future }))
    }

    /// Whether the call sends a stream of items after its handler's future is done.
    pub(crate) fn streams_output(&self) -> bool {
        self.0.streams_output()
    }

    /// Polls the output stream for its next item (kept in the call until
    /// [`Call::encode_item`]): `Ready(true)` with an item, `Ready(false)` at the end.
    pub(crate) fn poll_item(&mut self, cx: &mut TaskContext<'_>) -> Poll<bool> {
        self.0.as_mut().poll_item(cx)
    }

    /// Appends the item [`Call::poll_item`] produced as an `Item` frame for call `id`; returns
    /// the frame's size.
    pub(crate) fn encode_item(
        &mut self,
        buf: &mut BytesMut,
        id: u64,
        max_frame: u32,
    ) -> Result<usize, Error> {
        self.0.as_mut().encode_item(buf, id, max_frame)
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Call(..)")
    }
}

trait ErasedCall: Send {
    fn poll_call(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()>;
    fn encode_output(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), Error>;
    fn streams_output(&self) -> bool {
        false
    }
    fn poll_item(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<bool> {
        Poll::Ready(false)
    }
    fn encode_item(
        self: Pin<&mut Self>,
        _buf: &mut BytesMut,
        _id: u64,
        _max_frame: u32,
    ) -> Result<usize, Error> {
        Err(not_streaming())
    }
}

fn not_streaming() -> Error {
    Error::new(ErrorKind::Internal, "no stream item to encode")
}

enum Output<T> {
    Pending,
    Ready(T),
    Taken,
}

pin_project_lite::pin_project! {
    struct Replying<F: Future> {
        #[pin]
        future: F,
        output: Output<F::Output>,
    }
}

impl<F> ErasedCall for Replying<F>
where
    F: Future + Send,
    F::Output: Serialize + Send,
{
    fn poll_call(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.project();
        if !matches!(this.output, Output::Pending) {
            return Poll::Ready(());
        }
        match this.future.poll(cx) {
            Poll::Ready(value) => {
                *this.output = Output::Ready(value);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn encode_output(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), Error> {
        let this = self.project();
        match std::mem::replace(this.output, Output::Taken) {
            Output::Ready(value) => crate::protocol::codec::encode_value(buf, &value),
            _ => Err(Error::new(
                ErrorKind::Internal,
                "call output taken before the call completed",
            )),
        }
    }
}

pin_project_lite::pin_project! {
    /// A streaming handler: first its future, then the stream it returned.
    #[project = StreamsProj]
    enum Streams<F, T> {
        Starting { #[pin] future: F },
        Sending { stream: Stream<T>, item: Option<T> },
        Done,
    }
}

impl<F, T> ErasedCall for Streams<F, T>
where
    F: Future<Output = Stream<T>> + Send,
    T: Serialize + Send + 'static,
{
    fn poll_call(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let stream = match self.as_mut().project() {
            StreamsProj::Starting { future } => match future.poll(cx) {
                Poll::Ready(stream) => stream,
                Poll::Pending => return Poll::Pending,
            },
            _ => return Poll::Ready(()),
        };
        self.set(Streams::Sending { stream, item: None });
        Poll::Ready(())
    }

    fn encode_output(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), Error> {
        // A method that returns only a stream answers nil once the stream has ended.
        crate::protocol::codec::encode_value(buf, &())
    }

    fn streams_output(&self) -> bool {
        true
    }

    fn poll_item(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<bool> {
        match self.project() {
            StreamsProj::Sending { stream, item } => {
                if item.is_some() {
                    return Poll::Ready(true);
                }
                match Pin::new(stream).poll_next(cx) {
                    Poll::Ready(Some(next)) => {
                        *item = Some(next);
                        Poll::Ready(true)
                    }
                    Poll::Ready(None) => Poll::Ready(false),
                    Poll::Pending => Poll::Pending,
                }
            }
            _ => Poll::Ready(false),
        }
    }

    fn encode_item(
        self: Pin<&mut Self>,
        buf: &mut BytesMut,
        id: u64,
        max_frame: u32,
    ) -> Result<usize, Error> {
        match self.project() {
            StreamsProj::Sending { item, .. } => match item.take() {
                Some(value) => crate::protocol::stream::put_item(buf, id, &value, max_frame),
                None => Err(not_streaming()),
            },
            _ => Err(not_streaming()),
        }
    }
}

/// The error for a method index a service does not have (used by generated code).
pub fn unknown_method(descriptor: &ServiceDescriptor, method: usize) -> Error {
    Error::new(
        ErrorKind::UnknownMethod,
        format!(
            "service `{}` has no method number {method}",
            descriptor.name
        ),
    )
}
