//! Flow control of a connection's reading: pausing while the client does not take its
//! responses (backpressure), closing it after a quiet spell (idle timeout), and busy polling
//! for the next request.

use super::*;

impl ServerConn {
    /// The client sends requests faster than it reads their responses: stop reading from it
    /// (TCP then pushes back on its sends) until it has taken half of what is queued. A client
    /// that takes nothing at all is cut by the writer's stall timeout, which ends this wait.
    pub(super) async fn backpressure(
        &self,
        max_queued: usize,
        live: &Liveness,
    ) -> Result<(), Error> {
        self.out.flush_inline();
        if self.out.queued() <= max_queued {
            return Ok(());
        }
        tracing::debug!(
            peer = %self.peer,
            queued = self.out.queued(),
            max_queued,
            "the client is not reading its responses; pausing reads from it"
        );
        // Not reading, we cannot hear the client: keepalive must not take that for silence.
        let _paused = live.hold();
        self.out.drained_to(max_queued / 2).await
    }

    /// Resolves once the connection has been idle for `timeout` (never with `None`): no request
    /// received, no call running, and no [`Notifier`] held by the application. It then tells the
    /// client (`GoAway(ShuttingDown)`: calls that cross it are refused unrun) and waits briefly
    /// for the client to close its side, which ends the read loop; whatever happens first ends
    /// the connection.
    pub(super) async fn idle_close(&self, timeout: Option<Duration>) -> Result<(), Error> {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        let tick = (timeout / 4).max(Duration::from_millis(1));
        let mut seen = self.requests.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let requests = self.requests.load(Ordering::Relaxed);
            if requests != seen || self.in_flight() > 0 || self.has_subscribers() {
                seen = requests;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= timeout {
                break;
            }
        }
        tracing::debug!(peer = %self.peer, idle_ms = timeout.as_millis() as u64, "closing an idle connection");
        self.draining.store(true, Ordering::Release);
        self.goaway(&Error::new(
            ErrorKind::ShuttingDown,
            format!(
                "the connection was idle for {} ms; connect again for new calls",
                timeout.as_millis()
            ),
        ));
        self.out.wake_writer();
        tokio::time::sleep(IDLE_LINGER).await;
        Ok(())
    }

    /// Reads more bytes, first busy polling for up to the server's budget (see
    /// [`ServerBuilder::busy_poll`](crate::ServerBuilder::busy_poll)) when the batch just handled
    /// brought requests: a client waiting on its answers tends to send the next one right
    /// after. `seen` is the request count as of the last call.
    pub(super) async fn fill_next(
        &self,
        reader: &mut FrameReader,
        busy: &mut BusyPoll,
        seen: &mut u64,
    ) -> Result<bool, Error> {
        let requests = self.requests.load(Ordering::Relaxed);
        let active = requests != *seen;
        *seen = requests;
        let spin = if active && !reader.mid_frame() {
            busy.next_spin()
        } else {
            None
        };
        match spin {
            Some(spin) => {
                let (filled, caught) = reader.fill_spinning(spin).await;
                busy.record(caught);
                filled
            }
            None => reader.fill().await,
        }
    }
}
