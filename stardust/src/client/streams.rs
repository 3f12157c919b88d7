//! Streaming calls from a [`Client`]: what the generated proxies call for methods that take a
//! `Streaming<T>` or return a `Stream<T>`.
//!
//! A streaming call is opened like a call (same deadline, trace id, metadata, interceptors,
//! balancing) and then stays on the provider it was opened on. Through a balancing client, a
//! stream that fails before anything crossed it (no item either way) is opened again on another
//! provider when that is safe: the provider refused it unrun, or the method is idempotent.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::balanced::{StreamSpec, open_balanced};
use super::connection::ClientStream;
use super::*;
use crate::balance::InFlight;
use crate::stream::flow::Recv;
use crate::stream::{RawSource, Stream, Streaming};

impl Client {
    /// A handle whose calls have no deadline (the connection is shared): for streams meant to
    /// stay open (a watch, a tail), which the client's timeout would otherwise end. A deadline
    /// inherited from a handler's context still applies.
    pub fn without_timeout(&self) -> Client {
        Client {
            timeout: None,
            ..self.clone()
        }
    }

    /// Opens a streaming call of method number `method` of `service` with `args` (a tuple of
    /// the arguments that are not streams) and `input` as its input stream, if it takes one;
    /// returns its output stream. This is what generated proxies call for a method returning
    /// `Stream<T>`.
    ///
    /// Returns as soon as the request is sent: a failure of the call (an unknown method, a
    /// refused token, ...) arrives as the stream's first and last item.
    pub async fn call_streaming<A, I, O>(
        &self,
        service: &'static ServiceDescriptor,
        method: usize,
        args: &A,
        input: Option<Stream<I>>,
    ) -> Result<Streaming<O>, Error>
    where
        A: Serialize + ?Sized,
        I: Serialize + Send + 'static,
        O: DeserializeOwned,
    {
        let call = self
            .open_stream(service, method, args, input.is_none())
            .await?;
        if let Some(input) = input {
            // Both ways: the consumer may write and read at different paces, so the input gets
            // a task of its own.
            tokio::spawn(call.stream.pump(input).run());
        }
        Ok(Streaming::from_source(Box::new(call)))
    }

    /// Calls method number `method` of `service`, which takes `input` as a stream of items,
    /// and returns its result. This is what generated proxies call for a method with a
    /// `Streaming<T>` argument that returns a value. The input is sent from the awaiting task,
    /// as the provider's credit allows; dropping the future cancels the call.
    pub async fn call_with_stream<A, I, R>(
        &self,
        service: &'static ServiceDescriptor,
        method: usize,
        args: &A,
        input: Stream<I>,
    ) -> Result<R, Error>
    where
        A: Serialize + ?Sized,
        I: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        let mut call = self.open_stream(service, method, args, false).await?;
        let mut pump = call.stream.pump(input);
        let mut pumping = true;
        let end = poll_fn(|cx| {
            if pumping {
                match pump.poll_pump(cx) {
                    Poll::Ready(Ok(())) => pumping = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            loop {
                match call.poll_recv(cx) {
                    Poll::Ready(Recv::End(end)) => return Poll::Ready(end),
                    // Not expected from a method that returns a value: skipped.
                    Poll::Ready(Recv::Item { .. }) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        let result = end.and_then(|body| codec::decode_value(&body));
        call.ended(result.as_ref().map(|_| ()).map_err(Error::clone));
        result
    }

    /// Opens the stream: one connection, or a provider the balancer picks.
    async fn open_stream<A: Serialize + ?Sized>(
        &self,
        service: &'static ServiceDescriptor,
        index: usize,
        args: &A,
        may_retry: bool,
    ) -> Result<CallStream, Error> {
        let method = method_of(service, index)?;
        let start = Instant::now();
        let (deadline, trace) = self.deadline_and_call_trace(start);
        let trace_id = trace.trace_id();
        let mut meta = self.metadata.as_deref().cloned().unwrap_or_default();
        let hook = if self.inner.interceptors.is_empty() {
            None
        } else {
            self.before_call(service, method, &mut meta, deadline, trace_id)?;
            Some(Box::new(EndHook {
                interceptors: self.inner.interceptors.clone(),
                service,
                method,
                meta: meta.clone(),
                deadline,
                trace_id,
            }))
        };
        let mut trace = trace.with_metadata(&meta);
        // The stream's client span lasts as long as the stream (it ends when the stream is
        // dropped) and is marked failed if the stream ends in an error.
        let span = if crate::monitor::spans_enabled() {
            spans::call_span(service.name, method.name, &mut trace)
        } else {
            tracing::Span::none()
        };
        let name = CallName::Static {
            service: service.name,
            method: method.name,
        };
        let info = CallInfo {
            name: name.clone(),
            deadline,
            budget: deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(start)),
            hedge_at: None,
        };
        let budget = info.budget;
        let deadline_error = || {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("{name} did not open within {} ms", budget.as_millis()),
            )
        };
        let opened = if let Endpoints::Balanced(b) = &self.inner.endpoints {
            let spec = StreamSpec {
                pick: Pick {
                    hash_key: self.hash_key,
                    ..Pick::default()
                },
                retry_lost: self.retry_lost || method.idempotent,
                idempotent: method.idempotent,
                info,
                trace,
                meta,
                args: encode_args(args)?,
                start,
            };
            let mut tried = Vec::new();
            let (stream, in_flight) = match deadline {
                None => open_balanced(b, &spec, &mut tried).await,
                Some(d) => tokio::time::timeout_at(d, open_balanced(b, &spec, &mut tried))
                    .await
                    .map_err(|_| deadline_error())?,
            }?;
            let retry = may_retry.then(|| {
                Box::new(Retry {
                    inner: self.inner.clone(),
                    spec,
                    tried,
                    reopening: None,
                })
            });
            CallStream {
                stream,
                in_flight: Some(in_flight),
                retry,
                hook,
                span,
                done: false,
            }
        } else {
            let head = request_head(
                service.name,
                method.name,
                method.idempotent,
                deadline,
                Instant::now(),
                trace.trace_id(),
                &meta,
            )
            .ok_or_else(deadline_error)?;
            let mut retried = false;
            let stream = loop {
                let conn = match deadline {
                    None => self.inner.connection().await?,
                    Some(d) => tokio::time::timeout_at(d, self.inner.connection())
                        .await
                        .map_err(|_| deadline_error())??,
                };
                match conn.open_stream(&head, trace.out(), args, info.clone()) {
                    Ok(stream) => break stream,
                    Err(CallError::Reconnect(_)) if !retried => retried = true,
                    Err(CallError::Reconnect(e) | CallError::Failed(e)) => return Err(e),
                }
            };
            CallStream {
                stream,
                in_flight: None,
                retry: None,
                hook,
                span,
                done: false,
            }
        };
        Ok(opened)
    }
}

/// Encodes a call's argument tuple once (a balanced stream may send it to more than one
/// provider).
fn encode_args<A: Serialize + ?Sized>(args: &A) -> Result<Bytes, Error> {
    let mut buf = bytes::BytesMut::new();
    codec::encode_value(&mut buf, args)?;
    Ok(buf.freeze())
}

/// Tells the client's interceptors how a stream ended.
struct EndHook {
    interceptors: Vec<Arc<dyn ClientInterceptor>>,
    service: &'static ServiceDescriptor,
    method: &'static MethodDescriptor,
    meta: Metadata,
    deadline: Option<Instant>,
    trace_id: u64,
}

/// What a balanced stream needs to be opened again elsewhere.
pub(super) struct Retry {
    pub(super) inner: Arc<ClientInner>,
    pub(super) spec: StreamSpec,
    /// Providers this stream was opened on (or failed to open on).
    pub(super) tried: Vec<Arc<str>>,
    pub(super) reopening: Option<crate::auth::BoxFuture<'static, Result<Reopened, Error>>>,
}

/// A stream opened again, and the providers tried so far.
pub(super) type Reopened = (ClientStream, InFlight, Vec<Arc<str>>);

/// A streaming call as its consumer holds it: the stream on its provider, the provider's load
/// mark, how to open it again elsewhere, and who to tell when it ends.
pub(crate) struct CallStream {
    pub(crate) stream: ClientStream,
    in_flight: Option<InFlight>,
    retry: Option<Box<Retry>>,
    hook: Option<Box<EndHook>>,
    /// The call's `stardust.call` span (disabled when nobody records spans).
    span: tracing::Span,
    /// Whether [`CallStream::ended`] ran.
    done: bool,
}

impl CallStream {
    /// The next item or the end, opening the stream again elsewhere when it failed before
    /// anything crossed it and that is safe.
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Recv> {
        loop {
            if let Some(retry) = &mut self.retry
                && let Some(reopening) = &mut retry.reopening
            {
                match reopening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((stream, in_flight, tried))) => {
                        retry.reopening = None;
                        retry.tried = tried;
                        self.finish_load();
                        self.stream = stream;
                        self.in_flight = Some(in_flight);
                    }
                    Poll::Ready(Err(e)) => {
                        self.retry = None;
                        return Poll::Ready(Recv::End(Err(e)));
                    }
                }
            }
            let recv = self.stream.poll_recv(cx);
            if let Poll::Ready(Recv::End(Err(e))) = &recv
                && !self.stream.received_any()
                && !self.stream.sent_any()
                && let Some(retry) = &mut self.retry
                && retry.may_reopen(e)
            {
                tracing::debug!(endpoint = %self.stream.peer(), error = %e, "stream failed before its first item; opening it elsewhere");
                retry.reopening = Some(retry.reopen(e.clone()));
                continue;
            }
            if let Poll::Ready(Recv::Item { .. }) = &recv {
                // Pinned to this provider from its first item on.
                self.retry = None;
            }
            return recv;
        }
    }

    fn finish_load(&mut self) {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.finish(clock_ns(Instant::now().into()));
        }
    }

    /// The stream ended with `outcome`: the provider's load, the span and the interceptors
    /// learn it.
    fn ended(&mut self, outcome: Result<(), Error>) {
        self.done = true;
        self.retry = None;
        self.finish_load();
        if let Err(e) = &outcome {
            spans::failed(&self.span, e);
        }
        if let Some(hook) = self.hook.take() {
            let mut meta = hook.meta;
            let call = OutgoingCall {
                service: hook.service,
                method: hook.method,
                metadata: &mut meta,
                deadline: hook.deadline,
                trace_id: hook.trace_id,
            };
            for i in &hook.interceptors {
                i.after_call(&call, outcome.as_ref().map(|_| ()));
            }
        }
    }
}

impl RawSource for CallStream {
    fn poll_raw(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        match self.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Recv::Item { body, .. }) => Poll::Ready(Some(Ok(body))),
            Poll::Ready(Recv::End(Ok(_))) => {
                self.ended(Ok(()));
                Poll::Ready(None)
            }
            Poll::Ready(Recv::End(Err(e))) => {
                self.ended(Err(e.clone()));
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if !self.done {
            self.ended(Err(Error::new(
                ErrorKind::Cancelled,
                "the stream was dropped before its end",
            )));
        }
    }
}
