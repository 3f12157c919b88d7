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
use std::collections::VecDeque;

/// Static description of a service: what a registry registers and a proxy routes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceDescriptor {
    /// Fully qualified service name as it travels in requests, e.g. `calc.Calculator`.
    pub name: &'static str,
    /// Service version (semver), e.g. `1.0.0`.
    pub version: &'static str,
    /// The methods, in declaration order; a method's index here is what [`Service::call`] takes.
    pub methods: &'static [MethodDescriptor],
    /// The trait's doc comment (empty when none): what `stardust-registry describe` shows.
    pub docs: &'static str,
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
    /// The arguments, in order, as written in the trait (an input stream included, last).
    pub args: &'static [ArgDescriptor],
    /// The return type as written in the trait (`()` when there is none).
    pub returns: &'static str,
    /// The method's doc comment (empty when none).
    pub docs: &'static str,
}

/// One argument of a method, as written in the trait: for tools that show signatures and build
/// calls from JSON (the types are Rust types as written; what they hold is up to serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgDescriptor {
    /// The argument's name.
    pub name: &'static str,
    /// Its type, as written (`Vec<Item>`, `Option<String>`, `Streaming<u64>`).
    pub ty: &'static str,
}

impl MethodDescriptor {
    /// A unary method called `name`: not idempotent, no streams, nothing described.
    pub const fn unary(name: &'static str) -> MethodDescriptor {
        MethodDescriptor {
            name,
            idempotent: false,
            input_stream: false,
            output_stream: false,
            args: &[],
            returns: "",
            docs: "",
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

    /// The implementation, for clients in this process to call without a socket or a
    /// serializer ([`crate::local`]); `None` (the default) when it cannot be called that way.
    fn local(&self) -> Option<LocalImpl> {
        None
    }
}

/// A service's implementation as clients in its process call it ([`crate::local`]): what
/// [`Service::local`] hands over, made into a [`LocalService`](crate::local::LocalService) to
/// use. Opaque; cheap to clone.
#[derive(Clone)]
pub struct LocalImpl {
    pub(crate) descriptor: &'static ServiceDescriptor,
    /// The generated client's view of the implementation (an `Arc<dyn __XxxLocal>`).
    pub(crate) imp: Arc<dyn std::any::Any + Send + Sync>,
}

impl LocalImpl {
    /// A service's implementation as `imp` (what its generated client downcasts).
    #[doc(hidden)]
    pub fn new<L: std::any::Any + Send + Sync>(
        descriptor: &'static ServiceDescriptor,
        imp: L,
    ) -> LocalImpl {
        LocalImpl {
            descriptor,
            imp: Arc::new(imp),
        }
    }
}

impl fmt::Debug for LocalImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalImpl")
            .field("service", &self.descriptor.name)
            .finish_non_exhaustive()
    }
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
    /// Names known only at run time (one allocation, shared by every attempt of the call; an
    /// agent makes one per forwarded call).
    pub(crate) fn shared(service: &str, method: &str) -> CallName {
        let len = service.len() + 1 + method.len();
        let mut buf = [0u8; 128];
        let full: Arc<str> = match buf.get_mut(..len) {
            // Joined on the stack: `Arc<str>` copies its text in any case.
            Some(joined) => {
                joined[..service.len()].copy_from_slice(service.as_bytes());
                joined[service.len()] = b'.';
                joined[service.len() + 1..].copy_from_slice(method.as_bytes());
                Arc::from(std::str::from_utf8(joined).expect("two strings and a dot"))
            }
            None => Arc::from(format!("{service}.{method}")),
        };
        CallName::Shared {
            full,
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

    /// Polls the output stream for up to `max` items that are ready now (kept in the call
    /// until [`Call::encode_items`]): `Ready(true)` when some are kept, `Ready(false)` once the
    /// stream has ended and none is left, `Pending` when none is ready.
    pub(crate) fn poll_items(&mut self, cx: &mut TaskContext<'_>, max: usize) -> Poll<bool> {
        self.0.as_mut().poll_items(cx, max)
    }

    /// Appends the kept items, oldest first, as `Item` frames for call `id`, until they are
    /// `budget` bytes or more (the credit left: the last one may overshoot it); returns how
    /// many items and bytes it wrote.
    pub(crate) fn encode_items(
        &mut self,
        buf: &mut BytesMut,
        id: u64,
        max_frame: u32,
        budget: usize,
    ) -> Result<(u64, usize), Error> {
        self.0.as_mut().encode_items(buf, id, max_frame, budget)
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
    fn poll_items(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>, _max: usize) -> Poll<bool> {
        Poll::Ready(false)
    }
    fn encode_items(
        self: Pin<&mut Self>,
        _buf: &mut BytesMut,
        _id: u64,
        _max_frame: u32,
        _budget: usize,
    ) -> Result<(u64, usize), Error> {
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
    /// A streaming handler: first its future, then the stream it returned, with the items it
    /// has produced and not yet encoded.
    #[project = StreamsProj]
    enum Streams<F, T> {
        Starting { #[pin] future: F },
        Sending { stream: Stream<T>, items: VecDeque<T>, ended: bool },
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
            StreamsProj::Sending { .. } => return Poll::Ready(()),
        };
        self.set(Streams::Sending {
            stream,
            items: VecDeque::new(),
            ended: false,
        });
        Poll::Ready(())
    }

    fn encode_output(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), Error> {
        // A method that returns only a stream answers nil once the stream has ended.
        crate::protocol::codec::encode_value(buf, &())
    }

    fn streams_output(&self) -> bool {
        true
    }

    fn poll_items(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, max: usize) -> Poll<bool> {
        let StreamsProj::Sending {
            stream,
            items,
            ended,
        } = self.project()
        else {
            return Poll::Ready(false);
        };
        while !*ended && items.len() < max {
            match Pin::new(&mut *stream).poll_next(cx) {
                Poll::Ready(Some(item)) => items.push_back(item),
                Poll::Ready(None) => *ended = true,
                Poll::Pending if items.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            }
        }
        Poll::Ready(!items.is_empty())
    }

    fn encode_items(
        self: Pin<&mut Self>,
        buf: &mut BytesMut,
        id: u64,
        max_frame: u32,
        budget: usize,
    ) -> Result<(u64, usize), Error> {
        let StreamsProj::Sending { items, .. } = self.project() else {
            return Err(not_streaming());
        };
        let (mut count, mut bytes) = (0, 0);
        while bytes < budget {
            let Some(item) = items.pop_front() else {
                break;
            };
            bytes += crate::protocol::stream::put_item(buf, id, &item, max_frame)?;
            count += 1;
        }
        Ok((count, bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_names_keep_service_and_method_apart() {
        let long = "s".repeat(200);
        for (service, method) in [("calc.Calc", "add"), ("", ""), (long.as_str(), "m")] {
            let name = CallName::shared(service, method);
            assert_eq!(name.service(), service);
            assert_eq!(name.method(), method);
            assert_eq!(name.to_string(), format!("{service}.{method}"));
        }
    }
}
