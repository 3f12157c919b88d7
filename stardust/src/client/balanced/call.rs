//! One balanced call: tries on one provider after another while it is safe to, and, for calls
//! that may run twice, a hedge (a second try on another provider) when a try has not answered
//! within the hedging delay. The first answer wins; the other tries are dropped, which cancels
//! them on their providers.
//!
//! The tries of a call are polled by the call's own task (no task per try, no channel): a try
//! is a request registered in its connection's pending table, woken by that connection's read
//! loop when the answer arrives, by its deadline sweeper when the deadline passes, and by the
//! pool's watchdog when its hedge is due.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use super::super::connection::Exchange;
use super::super::endpoints::TrackerRef;
use super::*;
use crate::balance::{HEDGE_MIN_SAMPLES, HedgeDelay, Hedging, InFlight, LatencyTracker, Load};
use crate::trace_context::TraceOut;
use std::future::Future;
use std::pin::Pin;

mod settle;

/// A call routed by a balancer: tried on one provider after another while it is safe to.
pub(crate) struct BalancedCall<'a> {
    pub(crate) pick: Pick,
    /// Whether a call lost after it was sent may be sent again (idempotent method, or the
    /// caller's policy); such a call may also be hedged and serve as a probe.
    pub(crate) retry_lost: bool,
    pub(crate) name: CallName,
    /// The method's number in its service, when known (a typed proxy's call).
    pub(crate) method: Option<usize>,
    pub(crate) hedging: Hedging,
    /// Sent as the request's idempotent flag.
    pub(crate) idempotent: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) trace_id: u64,
    pub(crate) meta: &'a Metadata,
    pub(crate) start: Instant,
}

/// One try of a call: its provider (borrowed from the call's provider list: no reference
/// counts to update per call), the mark of a call in flight there, and the request.
struct Try<'a, 't, A: ?Sized> {
    target: &'t Target,
    in_flight: InFlight<&'t Load>,
    /// When the request was queued ([`clock_ns`]).
    sent_ns: u64,
    exchange: Exchange<'a, A>,
}

/// The tries in flight: the first inline, hedges (rare) in a vector, so an unhedged call does
/// not allocate for them.
struct Tries<'a, 't, A: ?Sized> {
    first: Option<Try<'a, 't, A>>,
    more: Vec<Try<'a, 't, A>>,
}

/// What woke the call. (Large, but it lives a moment on the stack: boxing the ended try
/// would cost an allocation per call.)
#[allow(clippy::large_enum_variant)]
enum Event<'a, 't, A: ?Sized> {
    /// A try ended (it is out of the set).
    Ended(Try<'a, 't, A>, Result<Bytes, CallError>),
    /// A try has waited past its hedging delay.
    HedgeDue,
}

impl<'a, 't, A: Args + ?Sized> Tries<'a, 't, A> {
    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    fn push(&mut self, t: Try<'a, 't, A>) {
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.more.push(t);
        }
    }

    fn endpoints(&self) -> impl Iterator<Item = &Arc<str>> {
        self.first
            .iter()
            .chain(&self.more)
            .map(|t| &t.target.endpoint)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event<'a, 't, A>> {
        let mut hedge = false;
        if let Some(t) = &mut self.first {
            if let Poll::Ready(r) = Pin::new(&mut t.exchange).poll(cx) {
                let t = self.first.take().expect("polled");
                return Poll::Ready(Event::Ended(t, r));
            }
            hedge |= t.exchange.take_hedge_due();
        }
        for i in 0..self.more.len() {
            let t = &mut self.more[i];
            if let Poll::Ready(r) = Pin::new(&mut t.exchange).poll(cx) {
                return Poll::Ready(Event::Ended(self.more.swap_remove(i), r));
            }
            hedge |= t.exchange.take_hedge_due();
        }
        if hedge {
            Poll::Ready(Event::HedgeDue)
        } else {
            Poll::Pending
        }
    }
}

/// What the call keeps between tries.
#[derive(Default)]
struct Progress {
    /// Providers this call will not try again.
    tried: Vec<Arc<str>>,
    /// Endpoints whose connection failed once during this call: they may be chosen once more
    /// (on a new connection, e.g. to a provider restarted at the same address).
    reconnected: Vec<Arc<str>>,
    /// The error of the last failed try, for a retry's budget check and the final error.
    last: Option<Error>,
}

/// What a try's end means for the call.
enum Settled {
    Done(Result<Bytes, Error>),
    /// Another try may take it (the error is in `Progress::last`).
    TryAgain,
}

impl BalancedCall<'_> {
    /// Counts `e` against `target` for outlier ejection when it is the provider's fault.
    fn fault(&self, b: &Balanced, target: &Target, e: &Error) {
        let outliers = &b.pool.policy.outliers;
        if is_provider_fault(e.kind())
            && target
                .load()
                .failed(outliers, clock_ns(Instant::now().into()))
        {
            tracing::warn!(
                endpoint = %target.endpoint,
                service = self.name.service(),
                error = %e,
                ejection_ms = outliers.ejection.as_millis() as u64,
                "provider ejected after repeated failures"
            );
        }
    }

    fn deadline_error(&self, budget: Duration) -> Error {
        Error::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "{} did not complete within {} ms",
                self.name,
                budget.as_millis()
            ),
        )
    }

    /// The method's latency record, when this call feeds or reads the adaptive hedging delay
    /// (a call that may be hedged, adaptively); looked up once per call.
    fn tracker<'b>(&self, b: &'b Balanced) -> Option<TrackerRef<'b>> {
        let adaptive = matches!(self.hedging.delay, HedgeDelay::Adaptive { .. });
        if !self.retry_lost || !adaptive || self.hedging.is_off() {
            return None;
        }
        b.latencies.get(self.method, &self.name)
    }

    /// How long a try waits before it gets a hedge (`None`: no hedging for this call).
    fn hedge_delay(&self, tracker: Option<&LatencyTracker>, now_ns: u64) -> Option<Duration> {
        if !self.retry_lost || self.hedging.is_off() {
            return None;
        }
        match self.hedging.delay {
            HedgeDelay::Off => None,
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Adaptive { min, initial } => {
                let p99 = tracker.and_then(|t| t.p99(now_ns, HEDGE_MIN_SAMPLES));
                Some(p99.map_or(initial, |p| Duration::from_nanos(p).max(min)))
            }
        }
    }

    /// Runs the call, every try sending `trace` (the call's `traceparent`; `None`: the
    /// request's `trace_id` alone).
    pub(crate) async fn run_traced<'a, A: Args + ?Sized>(
        &'a self,
        b: &Balanced,
        trace: Option<TraceOut<'a>>,
        args: &'a A,
    ) -> Result<Bytes, Error> {
        let budget = self
            .deadline
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(self.start));
        let targets = routed_providers(b, &self.name, self.meta, self.deadline, true).await?;
        let start_ns = clock_ns(self.start.into());
        b.pool.policy.budget.deposit(start_ns);
        let tracker = self.tracker(b);
        let hedge_delay = self.hedge_delay(tracker.as_deref(), start_ns);
        let mut progress = Progress::default();
        let mut preferred = None;
        if hedge_delay.is_none() {
            // The common case, a call that is not hedged, whose provider has a connection
            // open: its one try starts and is awaited right here. Everything else (retries,
            // hedges, connecting) is in `run_tries`, boxed, so that none of its state weighs
            // on this call's future.
            match self.ready_try(b, &targets, (trace, args), budget, start_ns) {
                Ok(mut t) => {
                    let result = (&mut t.exchange).await;
                    match self.settle(b, t, result, tracker.as_deref(), &mut progress) {
                        Settled::Done(result) => return result,
                        Settled::TryAgain => {}
                    }
                }
                Err(chosen) => preferred = chosen,
            }
        }
        let tries = self.run_tries(
            b,
            (&targets, preferred),
            progress,
            (trace, args),
            (tracker.as_deref(), hedge_delay),
            budget,
        );
        Box::pin(tries).await
    }

    /// The general path of a call: tries one provider after another (starting at `preferred`
    /// when the balancer already picked it), with hedges when `hedge_delay` is set, until one
    /// settles the call.
    async fn run_tries<'a, 't, A: Args + ?Sized>(
        &'a self,
        b: &Balanced,
        (targets, mut preferred): (&'t [Target], Option<&'t Target>),
        mut progress: Progress,
        (trace, args): (Option<TraceOut<'a>>, &'a A),
        (tracker, hedge_delay): (Option<&LatencyTracker>, Option<Duration>),
        budget: Duration,
    ) -> Result<Bytes, Error> {
        let mut hedges_left = if hedge_delay.is_some() {
            self.hedging.max_extra
        } else {
            0
        };
        let mut tries: Tries<'_, '_, A> = Tries {
            first: None,
            more: Vec::new(),
        };
        let mut start_one = true;
        loop {
            if start_one {
                start_one = false;
                let hedge = !tries.is_empty();
                let t = self
                    .next_try(
                        b,
                        (targets, preferred.take()),
                        &mut progress,
                        &tries,
                        (trace, args),
                        hedge_delay,
                        budget,
                    )
                    .await?;
                match t {
                    Some(t) => tries.push(t),
                    // No hedge possible now: keep waiting for the tries in flight.
                    None if hedge => {}
                    None => unreachable!("next_try fails rather than return no first try"),
                }
            }
            match poll_fn(|cx| tries.poll(cx)).await {
                Event::HedgeDue => {
                    if hedges_left > 0 {
                        hedges_left -= 1;
                        start_one = true;
                    }
                }
                Event::Ended(t, result) => {
                    match self.settle(b, t, result, tracker, &mut progress) {
                        Settled::Done(result) => {
                            // The tries still out did not answer in time: their providers' silence
                            // counts (and a passed deadline against each), then dropping them
                            // cancels them.
                            let now_ns = if tries.is_empty() {
                                0
                            } else {
                                clock_ns(Instant::now().into())
                            };
                            for t in tries.first.take().into_iter().chain(tries.more.drain(..)) {
                                if let Err(e) = &result
                                    && e.kind() == ErrorKind::DeadlineExceeded
                                {
                                    self.fault(b, t.target, e);
                                }
                                t.in_flight.finish(now_ns);
                            }
                            return result;
                        }
                        Settled::TryAgain => start_one = tries.is_empty(),
                    }
                }
            }
        }
    }

    /// The first try, when the balancer's plain choice has a connection open and the deadline
    /// has not passed: no suspension point, no retry bookkeeping. Otherwise the provider
    /// chosen, if any, for [`BalancedCall::next_try`] to start the try there (choosing again
    /// would move a round robin past it) or to report why none could start.
    fn ready_try<'a, 't, A: Args + ?Sized>(
        &'a self,
        b: &Balanced,
        targets: &'t [Target],
        (trace, args): (Option<TraceOut<'a>>, &'a A),
        budget: Duration,
        now_ns: u64,
    ) -> Result<Try<'a, 't, A>, Option<&'t Target>> {
        let target = choose_plainly(b, &self.pick, targets, now_ns, self.retry_lost).ok_or(None)?;
        let conn = b.pool.open_connection(target).ok_or(Some(target))?;
        let head = request_head(
            self.name.service(),
            self.name.method(),
            self.idempotent,
            self.deadline,
            self.start,
            self.trace_id,
            self.meta,
        )
        .ok_or(Some(target))?;
        let (in_flight, was_idle) = target.load().start_borrowed(now_ns);
        b.pool.watch(was_idle);
        let info = CallInfo {
            name: self.name.clone(),
            deadline: self.deadline,
            budget,
            hedge_at: None,
        };
        Ok(Try {
            target,
            in_flight,
            sent_ns: now_ns,
            exchange: conn.exchange_traced(head, trace, args, info),
        })
    }

    /// Starts the next try: a first try or a retry (connecting if need be, failing the call
    /// when no provider is left or the retry budget is spent), or a hedge (`Ok(None)` when no
    /// other provider with an open connection can take it now, or the budget is spent). A
    /// first try goes to `preferred` when the balancer already picked it.
    #[allow(clippy::too_many_arguments)]
    async fn next_try<'a, 't, A: Args + ?Sized>(
        &'a self,
        b: &Balanced,
        (targets, mut preferred): (&'t [Target], Option<&'t Target>),
        progress: &mut Progress,
        tries: &Tries<'a, 't, A>,
        (trace, args): (Option<TraceOut<'a>>, &'a A),
        hedge_delay: Option<Duration>,
        budget: Duration,
    ) -> Result<Option<Try<'a, 't, A>>, Error> {
        let policy = &b.pool.policy;
        let hedge = !tries.is_empty();
        loop {
            let first = !hedge && progress.tried.is_empty() && progress.last.is_none();
            let now = if first { self.start } else { Instant::now() };
            let now_ns = clock_ns(now.into());
            let chosen = if let Some(target) = preferred.take() {
                Some((target, false))
            } else if hedge {
                let busy: Vec<Arc<str>> = progress
                    .tried
                    .iter()
                    .chain(tries.endpoints())
                    .cloned()
                    .collect();
                choose(b, &self.pick, targets, &busy, now_ns, self.retry_lost)
            } else {
                choose(
                    b,
                    &self.pick,
                    targets,
                    &progress.tried,
                    now_ns,
                    self.retry_lost,
                )
            };
            let Some((target, probe)) = chosen else {
                if hedge {
                    return Ok(None);
                }
                let last = progress.last.take();
                return Err(exhausted(b, &self.name, progress.tried.len(), last));
            };
            // A hedge goes only where a connection is open: connecting would hold up the
            // tries in flight (the pool opens one in the background for the next time).
            let ready = if hedge {
                match b.pool.ready_connection(target) {
                    Some(conn) => Some(conn),
                    None => return Ok(None),
                }
            } else {
                None
            };
            if hedge || progress.last.is_some() {
                // A hedge or a retry: only within the budget.
                if !policy.budget.withdraw(now.into()) {
                    if hedge {
                        return Ok(None);
                    }
                    let e = progress.last.take().expect("a retry has a last error");
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "{} (not retried on another provider: the retry budget is spent)",
                            e.message()
                        ),
                    )
                    .with_source(e));
                }
                progress.last = None;
            }
            if probe {
                tracing::debug!(endpoint = %target.endpoint, call = %self.name, "probe call");
            }
            // Counted from the choice on, so calls waiting for a connection weigh too.
            let (in_flight, was_idle) = target.load().start_borrowed(now_ns);
            b.pool.watch(was_idle);
            // An open connection is the common case: no timer for it (and no second clock
            // read: the request goes out now).
            let ready = ready.or_else(|| b.pool.open_connection(target));
            let waited = ready.is_none();
            let conn = match ready {
                Some(conn) => Ok(conn),
                // Boxed: connecting is rare, and its future is large; inline, it would make
                // every call's future (which is moved and allocated per call) as large.
                None => match self.deadline {
                    None => Box::pin(b.pool.connection(target)).await,
                    Some(d) => tokio::time::timeout_at(d, Box::pin(b.pool.connection(target)))
                        .await
                        .map_err(|_| self.deadline_error(budget))?,
                },
            };
            let conn = match conn {
                Ok(conn) => conn,
                // Nothing was sent: another provider may take it.
                Err(e) if e.is_not_delivered() || e.kind() == ErrorKind::ConnectionClosed => {
                    if let Some(f) = &target.figures {
                        f.completed(now.elapsed(), Some(e.kind()));
                    }
                    tracing::debug!(endpoint = %target.endpoint, error = %e, "provider unreachable; trying another");
                    self.fault(b, target, &e);
                    progress.tried.push(target.endpoint.clone());
                    progress.last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (sent, sent_ns) = if waited {
                let sent = Instant::now();
                (sent, clock_ns(sent.into()))
            } else {
                (now, now_ns)
            };
            let Some(head) = request_head(
                self.name.service(),
                self.name.method(),
                self.idempotent,
                self.deadline,
                sent,
                self.trace_id,
                self.meta,
            ) else {
                // Past the deadline: a hedge is pointless (the tries out expire with it).
                return if hedge {
                    Ok(None)
                } else {
                    Err(self.deadline_error(budget))
                };
            };
            let info = CallInfo {
                name: self.name.clone(),
                deadline: self.deadline,
                budget,
                hedge_at: hedge_delay.map(|d| sent + d),
            };
            return Ok(Some(Try {
                target,
                in_flight,
                sent_ns,
                exchange: conn.exchange_traced(head, trace, args, info),
            }));
        }
    }
}
