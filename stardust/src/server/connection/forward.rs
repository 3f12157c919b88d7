//! Requests for services this server does not host, handed to its [`Forward`] (an agent).
//!
//! A forwarded call that is not answered at once waits in its connection's [`Forwarding`]: one
//! task per connection polls all of them. Answers arriving together (a read batch of the
//! provider's connection completes many calls at once) wake that task once, are queued
//! together and leave in one write; a task per call would be woken, scheduled and flushed
//! per call.

use std::pin::Pin;
use std::sync::Weak;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;
use tokio::sync::mpsc;

use super::tasks::{Running, Stop};
use super::*;

impl ServerConn {
    /// Hands a request for a service not hosted here to the server's [`Forward`] and answers
    /// with what it returns: the raw response body, or an `Error` frame with the error's code.
    ///
    /// Like a handler, the forwarding is polled once right here, so the request is on its way to
    /// a provider before anything else happens (and one answered at once, such as a service
    /// nobody provides, is done). Otherwise it waits for its answer in the connection's
    /// [`Forwarding`], tracked like a handler's task: a `Cancel` (or the connection closing)
    /// drops it, a drain waits for it, and it counts toward the in-flight cap.
    pub(super) fn forward(
        self: &Arc<Self>,
        forward: &dyn Forward,
        h: &Header,
        req: RequestView<'_>,
        now: Instant,
    ) {
        let call = Forwarded {
            name: CallName::shared(req.service, req.method),
            peer: self.peer,
            flags: h.flags,
            deadline: (req.timeout_us > 0).then(|| now + Duration::from_micros(req.timeout_us)),
            trace_id: req.trace_id,
            trace: req.trace,
            meta: req.meta,
            args: Bytes::copy_from_slice(req.args),
        };
        let mut reply = forward.forward(call);
        let (id, flags) = (h.id, h.flags);
        let mut cx = std::task::Context::from_waker(Waker::noop());
        if let Poll::Ready(outcome) = reply.as_mut().poll(&mut cx) {
            // The read loop flushes at the end of its batch.
            self.queue_forwarded(id, flags, outcome);
            return;
        }
        let forwarding = self.forwarding.get_or_init(|| Forwarding::start(self));
        self.register(h, |r| {
            let slot = Arc::new(Slot {
                reply: parking_lot::Mutex::new(Some(reply)),
                waker: AtomicWaker::new(),
            });
            forwarding.send(Waiting {
                slot: slot.clone(),
                origin: Origin {
                    id,
                    flags,
                    key: r.key,
                    task_id: r.task_id,
                },
                _running: r.running,
            });
            Stop::Forwarded(slot)
        });
    }

    /// Queues the answer to a forwarded request (nothing for a one-way one), without flushing.
    pub(super) fn queue_forwarded(&self, id: u64, flags: u8, outcome: Result<Bytes, Error>) {
        if flags & FLAG_ONE_WAY != 0 {
            if let Err(e) = outcome {
                tracing::debug!(peer = %self.peer, id, error = %e, "forwarded one-way call failed");
            }
            return;
        }
        let max = self.out.peer_max_frame;
        let _ = self.out.push_quiet(|buf, _| {
            match outcome {
                Ok(body) => {
                    let start = frame::begin(buf, Kind::Response, 0, id);
                    buf.extend_from_slice(&body);
                    // On error the partial frame is gone: answer with the error instead.
                    if let Err(e) = frame::finish(buf, start, max) {
                        let e = Error::new(e.kind(), format!("the response {}", e.message()));
                        message::put_error(buf, Kind::Error, id, &e);
                    }
                }
                Err(e) => message::put_error(buf, Kind::Error, id, &e),
            }
            Ok(())
        });
    }
}

/// The task driving a connection's forwarded calls, and the way new ones reach it.
pub(super) struct Forwarding {
    calls: mpsc::UnboundedSender<Waiting>,
    driver: AbortHandle,
}

impl Forwarding {
    fn start(conn: &Arc<ServerConn>) -> Forwarding {
        let (calls, waiting) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(Arc::downgrade(conn), waiting)).abort_handle();
        Forwarding { calls, driver }
    }

    fn send(&self, call: Waiting) {
        // The driver outlives the connection's read loop (it is stopped by `abort_calls`, after
        // the read loop): a call sent after that is dropped with the message, which cancels it.
        let _ = self.calls.send(call);
    }

    /// Drops every forwarded call of the connection (it is closing).
    pub(super) fn stop(&self) {
        self.driver.abort();
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>;

/// Where a forwarded call's answer goes: its request (the answer frame) and its entry in the
/// connection's call table.
#[derive(Clone, Copy)]
struct Origin {
    id: u64,
    flags: u8,
    key: (bool, u64),
    task_id: u64,
}

/// A forwarded call's pending answer, shared by the forwarding task (which polls it) and the
/// connection's call table (where a `Cancel` finds it).
///
/// A `Cancel` drops the call right there in the read loop, so the provider is told before the
/// read loop forwards anything the consumer sent after its `Cancel`. Stopping it through the
/// forwarding task instead (an abort flag it sees on its next poll) let a later request
/// overtake the `Cancel` upstream: a consumer that cancels a call waiting on a lock and then
/// releases the lock had the release taken by the call it had just cancelled.
pub(super) struct Slot {
    /// `None` once answered or cancelled.
    reply: parking_lot::Mutex<Option<Reply>>,
    /// The forwarding task's waker for this call: a `Cancel` wakes it to settle the call.
    waker: AtomicWaker,
}

impl Slot {
    /// Drops the call (which cancels it upstream) and has the forwarding task settle it.
    pub(super) fn cancel(&self) {
        let reply = self.reply.lock().take();
        drop(reply);
        self.waker.wake();
    }
}

/// A forwarded call waiting for its answer.
struct Waiting {
    slot: Arc<Slot>,
    origin: Origin,
    _running: Running,
}

impl Future for Waiting {
    /// The call's origin, and its outcome (`None`: cancelled).
    type Output = (Origin, Option<Result<Bytes, Error>>);

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.slot.waker.register(cx.waker());
        let mut reply = self.slot.reply.lock();
        let outcome = match reply.as_mut() {
            Some(pending) => Some(std::task::ready!(pending.as_mut().poll(cx))),
            None => None,
        };
        *reply = None;
        drop(reply);
        Poll::Ready((self.origin, outcome))
    }
}

/// Polls the connection's forwarded calls until it closes: takes in new ones, queues the
/// answers of those that ended, and writes them once per wake-up. The connection's end aborts
/// it; it holds the connection weakly (the connection holds its sender), so it also ends if the
/// connection is dropped without that.
async fn drive(conn: Weak<ServerConn>, mut arriving: mpsc::UnboundedReceiver<Waiting>) {
    let mut waiting = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        // New calls join the set; their first poll below registers this task's waker.
        loop {
            match arriving.poll_recv(cx) {
                Poll::Ready(Some(call)) => waiting.push(call),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        let Some(conn) = conn.upgrade() else {
            return Poll::Ready(());
        };
        let mut answered = false;
        while let Poll::Ready(Some((origin, outcome))) = waiting.poll_next_unpin(cx) {
            if let Some(outcome) = outcome {
                conn.queue_forwarded(origin.id, origin.flags, outcome);
                answered = true;
            }
            conn.call_done(origin.key, origin.task_id);
        }
        if answered {
            conn.out.flush_inline();
        }
        Poll::Pending
    })
    .await
}
