//! Requests for services this server does not host, handed to its [`Forward`] (an agent).

use super::*;

impl ServerConn {
    /// Hands a request for a service not hosted here to the server's [`Forward`] and answers
    /// with what it returns: the raw response body, or an `Error` frame with the error's code.
    ///
    /// Like a handler, the forwarding is polled once right here, so the request is on its way to
    /// a provider before any task exists (and one answered at once, such as a service nobody
    /// provides, needs none). Otherwise it becomes a task tracked like a handler's: a `Cancel`
    /// (or the connection closing) drops it, a drain waits for it, and it counts toward the
    /// in-flight cap.
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
        let conn = self.clone();
        self.track(h, move |key, task_id| async move {
            let outcome = reply.await;
            conn.queue_forwarded(id, flags, outcome);
            conn.flush_finished();
            conn.call_done(key, task_id);
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
