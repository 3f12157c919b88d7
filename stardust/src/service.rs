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
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Call(..)")
    }
}

trait ErasedCall: Send {
    fn poll_call(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()>;
    fn encode_output(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), Error>;
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
