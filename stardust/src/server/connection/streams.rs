//! Streaming calls on one connection: opening them (a `Request` with the `STREAM` flag), the
//! table that routes the client's `Item`, `Credit` and `End` frames to their call, and the
//! limit on how many may be open at once.

use super::*;
use crate::protocol::stream::{self as wire, FEATURE_STREAM, FLAG_STREAM};
use crate::server::ForwardedStream;
use crate::server::call::{ServerInput, StreamOut};
use crate::service::Service;
use crate::stream::RawSource;
use crate::stream::flow::Flow;

/// The streaming calls open on a connection, by request id.
#[derive(Default)]
pub(crate) struct Streams {
    open: HashMap<u64, Arc<Flow>>,
}

/// Where a streaming call is counted and dispatched.
pub(super) struct StreamTarget<'a> {
    pub(super) service: &'a dyn Service,
    pub(super) service_index: usize,
    pub(super) method: usize,
}

impl ServerConn {
    /// Whether the client announced streaming calls (and so may be sent stream frames).
    pub(super) fn client_streams(&self) -> bool {
        self.info.features.has(FEATURE_STREAM)
    }

    /// Starts a streaming call: registers its flow (so the client's items and credit find it),
    /// hands the handler its input, and runs it as a task of its own.
    pub(super) fn start_stream(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        h: &Header,
        ctx: Context,
        target: StreamTarget<'_>,
        args: &[u8],
    ) -> Result<(), Error> {
        let desc = target.service.descriptor();
        let takes_input = desc.methods[target.method].input_stream;
        let flow = self.register_stream(shared, h, takes_input)?;
        let deadline = ctx.deadline;
        let input = desc.methods[target.method].input_stream.then(|| {
            Box::new(ServerInput::new(
                self.out.clone(),
                h.id,
                flow.clone(),
                shared.config.stream_window,
            )) as Box<dyn RawSource>
        });
        let mut call = crate::stream::with_input(input, || {
            ServerCall::start(ctx, h.id, h.flags, target.service, target.method, args)
        });
        call.count_in(target.service_index, target.method);
        call.spawning(shared);
        let call = SpawnedCall {
            call,
            conn: self.clone(),
            shared: shared.clone(),
            stream: Some(flow),
        };
        self.track(h, |key, task_id| call.run(deadline, key, task_id));
        Ok(())
    }

    /// Checks that call `h` may open a stream here and registers its flow, so the client's
    /// items and credit find it.
    fn register_stream(
        &self,
        shared: &ServerShared,
        h: &Header,
        takes_input: bool,
    ) -> Result<Arc<Flow>, Error> {
        if !self.client_streams() {
            return Err(Error::protocol(format!(
                "a streaming request from a client that did not announce `{FEATURE_STREAM}`"
            )));
        }
        if h.flags & FLAG_ONE_WAY != 0 {
            return Err(Error::protocol(
                "a streaming call cannot be one-way (flags ONE_WAY and STREAM together)",
            ));
        }
        let flow = Flow::new(shared.config.stream_window, self.peer_stream_window);
        let flow = Arc::new(if takes_input {
            flow
        } else {
            flow.without_input()
        });
        let mut streams = self.streams.lock();
        let limit = shared.config.max_streams;
        if streams.open.len() >= limit {
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "this connection already has {limit} streams open (the provider's limit); \
                     end one, or open this one on another connection or provider"
                ),
            ));
        }
        if streams.open.contains_key(&h.id) {
            return Err(Error::protocol(format!(
                "request id {} already names an open stream on this connection",
                h.id
            )));
        }
        streams.open.insert(h.id, flow.clone());
        Ok(flow)
    }

    /// Hands a streaming request for a service not hosted here to the server's [`Forward`]
    /// (an agent), which relays it; answers with what the relay ends with.
    pub(super) fn forward_stream(
        self: &Arc<Self>,
        shared: &Arc<ServerShared>,
        forward: &dyn Forward,
        h: &Header,
        req: RequestView<'_>,
        now: Instant,
    ) -> Result<(), Error> {
        // The agent does not know the method's shape: items may come either way.
        let flow = self.register_stream(shared, h, true)?;
        let (id, flags) = (h.id, h.flags);
        let call = Forwarded {
            name: CallName::shared(req.service, req.method),
            peer: self.peer,
            flags,
            deadline: (req.timeout_us > 0).then(|| now + Duration::from_micros(req.timeout_us)),
            trace_id: req.trace_id,
            trace: req.trace,
            meta: req.meta,
            args: Bytes::copy_from_slice(req.args),
        };
        let io = ForwardedStream {
            input: Some(Box::new(ServerInput::new(
                self.out.clone(),
                id,
                flow.clone(),
                shared.config.stream_window,
            ))),
            output: StreamOut::new(self.out.clone(), id, flow.clone()),
        };
        let relay = forward.forward_stream(call, io);
        let entry = OpenStream {
            conn: self.clone(),
            id,
            flow,
        };
        let conn = self.clone();
        self.track(h, move |key, task_id| async move {
            let outcome = relay.await;
            drop(entry);
            conn.queue_forwarded(id, flags, outcome);
            conn.out.flush_inline();
            conn.call_done(key, task_id);
        });
        Ok(())
    }

    /// The streaming call `id` ended: its frames no longer reach it.
    pub(crate) fn stream_ended(&self, id: u64, flow: &Arc<Flow>) {
        let mut streams = self.streams.lock();
        if streams.open.get(&id).is_some_and(|f| Arc::ptr_eq(f, flow)) {
            streams.open.remove(&id);
        }
    }

    /// Hands the stream items the batch has read so far to their calls; a violation of flow
    /// control closes the connection.
    pub(super) fn route_batch_items(&self, batch: &mut Batch) -> Result<(), Error> {
        if batch.items.is_empty() {
            return Ok(());
        }
        self.route_items(batch).inspect_err(|e| self.goaway(e))
    }

    /// Queues a client's `Item` for its call; [`ServerConn::route_items`] hands each run of
    /// them over under one lock, before any other frame is handled and at the batch's end.
    pub(super) fn on_item(&self, h: &Header, body: Bytes, batch: &mut Batch) {
        batch.items.push((h.id, body));
    }

    /// Hands the queued items to their calls, in order, one lock per run of items for one
    /// call. Items for a call that has ended are dropped (they crossed its response); items
    /// beyond the credit granted, or for a call that takes none, break the protocol.
    fn route_items(&self, batch: &mut Batch) -> Result<(), Error> {
        let mut result = Ok(());
        let mut items = std::mem::take(&mut batch.items);
        let mut run: Vec<Bytes> = Vec::new();
        let mut drain = items.drain(..).peekable();
        while let Some((id, body)) = drain.next() {
            run.push(body);
            if drain.peek().is_some_and(|(next, _)| *next == id) {
                continue;
            }
            let Some(flow) = self.stream(id) else {
                run.clear();
                continue;
            };
            match flow.push_items(&mut run, self.config_max_frame) {
                Ok(waker) => batch.wakers.extend(waker),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(drain);
        // The vector goes back to the batch: its capacity serves the next one.
        batch.items = items;
        result
    }

    /// Routes a client's `Credit` or `End` to its call.
    pub(super) fn on_stream_frame(
        &self,
        h: &Header,
        body: &[u8],
        batch: &mut Batch,
    ) -> Result<(), Error> {
        let kind = Kind::from_u8(h.kind);
        // Parsed even for a call that has ended: a malformed frame is malformed whatever it is for.
        let credit = match kind {
            Some(Kind::Credit) => Some(wire::parse_credit(body)?),
            _ => None,
        };
        let Some(flow) = self.stream(h.id) else {
            return Ok(());
        };
        match credit {
            Some(n) => batch.wakers.extend(flow.add_credit(n)),
            // `End`: the client's input is complete.
            None => flow.finish(Ok(Bytes::new()), false, &mut batch.wakers),
        }
        Ok(())
    }

    fn stream(&self, id: u64) -> Option<Arc<Flow>> {
        self.streams.lock().open.get(&id).cloned()
    }
}

/// A forwarded stream's place in the table, given up when its task ends however it ends.
struct OpenStream {
    conn: Arc<ServerConn>,
    id: u64,
    flow: Arc<Flow>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        crate::server::call::end_input(&self.flow);
        self.conn.stream_ended(self.id, &self.flow);
    }
}

/// Whether a request's `STREAM` flag fits its method: a streaming method must be opened as a
/// stream, and only a streaming method may be.
pub(super) fn check_stream_flag(h: &Header, streaming: bool, name: &str) -> Result<(), Error> {
    let flagged = h.flags & FLAG_STREAM != 0;
    match (streaming, flagged) {
        (true, false) => Err(Error::new(
            ErrorKind::InvalidArguments,
            format!(
                "`{name}` is a streaming method: call it as a stream (request flag STREAM, \
                 feature `{FEATURE_STREAM}`)"
            ),
        )),
        (false, true) => Err(Error::new(
            ErrorKind::InvalidArguments,
            format!("`{name}` is not a streaming method: call it without the STREAM flag"),
        )),
        _ => Ok(()),
    }
}
