//! The agent's routing: requests for any service, forwarded by name through the same balanced
//! client path a typed proxy uses, with one registry watch per service name in a bounded table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;
use tracing::{Instrument, Span};

use crate::auth::BoxFuture;
use crate::balance::Balancer;
use crate::client::{Balanced, MethodLatencies, RawCall};
use crate::discovery::session::Session;
use crate::discovery::watch::ServiceWatch;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{FLAG_IDEMPOTENT, FLAG_ONE_WAY};
use crate::server::{Forward, Forwarded, ForwardedStream};
use crate::trace_context::{CallTrace, Served, TRACESTATE, TraceParent, spans};

/// Longest service name the agent routes, in bytes (the registry's limit on names): a longer
/// one cannot be registered, so it is refused without asking the registry.
pub(crate) const MAX_SERVICE_NAME: usize = 256;

/// Makes the balancer of each service the agent routes.
pub(crate) type MakeBalancer = Arc<dyn Fn() -> Arc<dyn Balancer> + Send + Sync>;

/// The services the agent routes, each with its registry watch and balancer.
pub(crate) struct Routes {
    session: Arc<Session>,
    balancer: MakeBalancer,
    /// At most this many services are tracked; the least recently used one makes room.
    max: usize,
    table: RwLock<HashMap<Arc<str>, Route>>,
    /// Orders uses, for eviction.
    clock: AtomicU64,
}

struct Route {
    balanced: Arc<Balanced>,
    watch: Arc<ServiceWatch>,
    /// The clock when the route was last used.
    used: AtomicU64,
}

impl Routes {
    pub(crate) fn new(session: Arc<Session>, balancer: MakeBalancer, max: usize) -> Routes {
        Routes {
            session,
            balancer,
            max: max.max(1),
            table: RwLock::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// Services tracked right now.
    pub(crate) fn len(&self) -> usize {
        self.table.read().len()
    }

    /// The balanced path to `service`'s providers, watching it (any version) on first use. A
    /// name nobody provides gets a route too (its list is empty: calls fail with `NoProvider`
    /// naming it) and takes a place in the table like any other, so a client sending endless
    /// bogus names only ever evicts the least recently used.
    fn route(&self, service: &str) -> Result<Arc<Balanced>, Error> {
        if service.len() > MAX_SERVICE_NAME {
            return Err(Error::new(
                ErrorKind::NoProvider,
                format!(
                    "no provider of a service whose name is {} bytes long: the registry accepts \
                     names of at most {MAX_SERVICE_NAME} bytes",
                    service.len()
                ),
            ));
        }
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(route) = self.table.read().get(service) {
            route.used.store(now, Ordering::Relaxed);
            return Ok(route.balanced.clone());
        }
        let mut table = self.table.write();
        if let Some(route) = table.get(service) {
            route.used.store(now, Ordering::Relaxed);
            return Ok(route.balanced.clone());
        }
        let mut evicted = None;
        if table.len() >= self.max {
            let oldest = table
                .iter()
                .min_by_key(|(_, r)| r.used.load(Ordering::Relaxed))
                .map(|(name, _)| name.clone());
            evicted = oldest.and_then(|name| table.remove(&name));
        }
        let watch = self.session.watch(service, "*");
        let balanced = Arc::new(Balanced {
            source: watch.clone(),
            pool: self.session.pool.clone(),
            balancer: (self.balancer)(),
            latencies: MethodLatencies::default(),
        });
        table.insert(
            Arc::from(service),
            Route {
                balanced: balanced.clone(),
                watch,
                used: AtomicU64::new(now),
            },
        );
        drop(table);
        if let Some(old) = evicted {
            tracing::debug!(
                service = %old.watch.service,
                limit = self.max,
                "agent: no longer routing the least recently used service"
            );
            self.session.unwatch(&old.watch);
        }
        Ok(balanced)
    }
}

/// A forwarded request as the balanced path sends it: by name, arguments as received, under
/// `trace`.
fn raw_call<'a>(call: &'a Forwarded, trace: &'a CallTrace) -> RawCall<'a> {
    RawCall {
        name: call.name.clone(),
        idempotent: call.flags & FLAG_IDEMPOTENT != 0,
        deadline: call.deadline,
        trace,
        meta: &call.meta,
        args: &call.args,
    }
}

/// The trace of a forwarded call: the agent continues the application's trace (its
/// `traceparent`, or the 64-bit trace id of an older client) with a span of its own, and sends
/// the provider a new span whose parent that is (the application's `tracestate` goes along in
/// the metadata). When spans are recorded: the agent's `stardust.serve` span and, inside it, the
/// `stardust.call` span the forwarding runs in.
fn forwarded_trace(call: &Forwarded) -> (CallTrace, Span, Span) {
    let mut served = Served::received(call.trace, call.trace_id);
    if !crate::monitor::spans_enabled() {
        return (
            CallTrace::child(Some((served, None))),
            Span::none(),
            Span::none(),
        );
    }
    let (service, method) = (call.name.service(), call.name.method());
    let parent = (served.parent_span_id != 0).then(|| {
        let p = TraceParent {
            trace_id: served.trace_id,
            parent_id: served.parent_span_id,
            flags: served.flags,
        };
        (p, call.meta.get(TRACESTATE))
    });
    let serve = spans::serve_span(service, method, Some(call.peer), &mut served, parent);
    let mut trace = CallTrace::child(Some((served, None)));
    let client = serve.in_scope(|| spans::call_span(service, method, &mut trace));
    (trace, serve, client)
}

/// Marks the agent's spans of a forwarded call failed, if it did.
fn ended<T>(serve: &Span, client: &Span, outcome: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &outcome {
        spans::failed(client, e);
        spans::failed(serve, e);
    }
    outcome
}

impl Forward for Routes {
    fn forward(&self, call: Forwarded) -> BoxFuture<'static, Result<Bytes, Error>> {
        let route = self.route(call.name.service());
        let (trace, serve, client) = forwarded_trace(&call);
        let span = client.clone();
        Box::pin(
            async move {
                let balanced = route?;
                let raw = raw_call(&call, &trace);
                let outcome = if call.flags & FLAG_ONE_WAY != 0 {
                    balanced.one_way_raw(raw).await.map(|()| Bytes::new())
                } else {
                    balanced.call_raw(raw).await
                };
                ended(&serve, &client, outcome)
            }
            .instrument(span),
        )
    }

    fn forward_stream(
        &self,
        call: Forwarded,
        io: ForwardedStream,
    ) -> BoxFuture<'static, Result<Bytes, Error>> {
        let route = self.route(call.name.service());
        let (trace, serve, client) = forwarded_trace(&call);
        let span = client.clone();
        Box::pin(
            async move {
                let balanced = route?;
                let raw = raw_call(&call, &trace);
                let (provider, in_flight) =
                    ended(&serve, &client, balanced.open_stream_raw(raw).await)?;
                let end = super::relay::relay(io, provider).await;
                in_flight.finish(crate::balance::clock_ns(tokio::time::Instant::now().into()));
                ended(&serve, &client, end)
            }
            .instrument(span),
        )
    }
}
