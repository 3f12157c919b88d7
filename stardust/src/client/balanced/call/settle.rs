//! What the end of a try means for its call: the result, or another try; and what it tells the
//! balancer, the outlier detector and the figures about the provider.

use super::*;

impl BalancedCall<'_> {
    /// What try `t`'s end means: the call's result, or another try.
    pub(super) fn settle<A: ?Sized>(
        &self,
        b: &Balanced,
        t: Try<'_, '_, A>,
        result: Result<Bytes, CallError>,
        tracker: Option<&LatencyTracker>,
        progress: &mut Progress,
    ) -> Settled {
        let Try {
            target,
            in_flight,
            sent_ns,
            exchange,
        } = t;
        // A reply's arrival is the time its read batch was read (one clock read per batch);
        // other outcomes (a lost connection, a passed deadline) are timed now.
        let now_ns = match &result {
            Ok(_) => exchange.arrived_ns().max(sent_ns),
            Err(_) => clock_ns(Instant::now().into()),
        };
        drop(exchange);
        let latency = Duration::from_nanos(now_ns - sent_ns);
        if let Some(f) = &target.figures {
            let error = match &result {
                Ok(_) => None,
                Err(CallError::Reconnect(e) | CallError::Failed(e)) => Some(e.kind()),
            };
            f.completed(latency, error);
        }
        let load = target.load();
        // Anything the provider sent back (a result, or an error it produced) shows it is
        // working; a lost connection or a passed deadline does not.
        let from_provider = match &result {
            Ok(_) => true,
            Err(CallError::Failed(e)) => !matches!(
                e.kind(),
                ErrorKind::ConnectionClosed | ErrorKind::DeadlineExceeded
            ),
            Err(CallError::Reconnect(_)) => false,
        };
        if from_provider {
            if load.answered(now_ns) {
                tracing::info!(endpoint = %target.endpoint, "suspect provider answered: back in the rotation");
            }
            // The method's latencies feed the adaptive hedging delay of calls that may be
            // hedged (`tracker` is `None` for the others).
            if let Some(tracker) = tracker {
                tracker.record(latency.as_nanos() as u64, now_ns);
            }
        }
        in_flight.finish(now_ns);
        if let Err(CallError::Reconnect(e) | CallError::Failed(e)) = &result {
            self.fault(b, target, e);
        }
        // Cloned only on the paths that keep it (a try that failed).
        let endpoint = || target.endpoint.clone();
        match result {
            Ok(reply) => {
                load.record(latency, now_ns);
                load.succeeded();
                Settled::Done(Ok(reply))
            }
            // Found closed before the request was queued: it never left this process.
            Err(CallError::Reconnect(e)) => {
                retry_or_skip(endpoint(), &mut progress.tried, &mut progress.reconnected);
                progress.last = Some(e);
                Settled::TryAgain
            }
            // Refused before reaching a handler (overloaded, shutting down, ...).
            Err(CallError::Failed(e)) if e.is_not_delivered() => {
                tracing::debug!(endpoint = %target.endpoint, error = %e, "provider refused the call; trying another");
                if e.kind() == ErrorKind::ShuttingDown {
                    // The connection was draining (an idle close or a shutdown): a new
                    // connection to the same provider may take it, and one that is really
                    // stopping refuses the connection.
                    retry_or_skip(endpoint(), &mut progress.tried, &mut progress.reconnected);
                } else {
                    progress.tried.push(endpoint());
                }
                progress.last = Some(e);
                Settled::TryAgain
            }
            // Sent, then the connection was lost: the provider may have run it.
            Err(CallError::Failed(e)) if e.kind() == ErrorKind::ConnectionClosed => {
                if !self.retry_lost {
                    return Settled::Done(Err(Error::new(
                        ErrorKind::ConnectionClosed,
                        format!(
                            "outcome unknown: {} was sent to {} but the connection was lost \
                             before its answer ({}); it may or may not have run, and it is not \
                             retried because the method is not idempotent (see \
                             `Client::retry_lost_calls`)",
                            self.name,
                            target.endpoint,
                            e.message()
                        ),
                    )
                    .with_source(e)));
                }
                tracing::debug!(endpoint = %target.endpoint, error = %e, "connection lost; retrying an idempotent call");
                retry_or_skip(endpoint(), &mut progress.tried, &mut progress.reconnected);
                progress.last = Some(e);
                Settled::TryAgain
            }
            Err(CallError::Failed(e)) => Settled::Done(Err(e)),
        }
    }
}
