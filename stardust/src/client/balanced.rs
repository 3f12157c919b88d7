//! The balanced call path: choosing a provider per call, retrying within the call's deadline on
//! another one, and telling the balancer and the outlier detector what happened.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// Sends a one-way call to one provider chosen by the balancer, trying the next one when a
/// provider cannot be reached (nothing was queued there).
pub(super) async fn one_way_balanced<A: Args + ?Sized>(
    b: &Balanced,
    pick: &Pick,
    name: &CallName,
    head: RequestHead<'_>,
    args: &A,
) -> Result<(), Error> {
    let targets = providers(b).await?;
    let mut tried: Vec<Arc<str>> = Vec::new();
    loop {
        let Some(target) = choose(b, pick, &targets, &tried, clock_ns(Instant::now().into()))
        else {
            return Err(exhausted(b, name, tried.len(), None));
        };
        let result = match b.pool.connection(&target).await {
            Ok(conn) => conn.send_one_way(head, args),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_delivered() || e.kind() == ErrorKind::ConnectionClosed => {
                tracing::debug!(endpoint = %target.endpoint, error = %e, "one-way call not sent; trying another provider");
                tried.push(target.endpoint);
                if tried.len() >= targets.len() {
                    return Err(exhausted(b, name, tried.len(), Some(e)));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The providers `b`'s source lists (asking the registry on first use); `NoProvider` when empty.
pub(super) async fn providers(b: &Balanced) -> Result<Arc<[Target]>, Error> {
    let targets = match b.source.known() {
        Some(targets) => targets,
        None => b.source.fetch().await?,
    };
    if targets.is_empty() {
        return Err(b.source.no_provider(""));
    }
    Ok(targets)
}

/// The balancer's choice among the providers not tried yet by this call and not ejected (or,
/// when every untried one is ejected, among those).
pub(super) fn choose(
    b: &Balanced,
    pick: &Pick,
    targets: &[Target],
    tried: &[Arc<str>],
    now_ns: u64,
) -> Option<Target> {
    let ejected = |t: &Target| t.load().is_ejected(now_ns);
    let pick = &Pick { now_ns, ..*pick };
    if tried.is_empty() && !targets.iter().any(ejected) {
        let i = b.balancer.pick(targets, pick) % targets.len();
        return Some(targets[i].clone());
    }
    let untried = || targets.iter().filter(|t| !tried.contains(&t.endpoint));
    let mut left: Vec<Target> = untried().filter(|t| !ejected(t)).cloned().collect();
    if left.is_empty() {
        left = untried().cloned().collect();
    }
    if left.is_empty() {
        return None;
    }
    let i = b.balancer.pick(&left, pick) % left.len();
    Some(left[i].clone())
}

/// Every listed provider was tried and none could take the call.
pub(super) fn exhausted(b: &Balanced, name: &CallName, tried: usize, last: Option<Error>) -> Error {
    let detail = match &last {
        Some(e) => format!("none of the {tried} tried could take {name} (last: {e})"),
        None => format!("none could take {name}"),
    };
    let err = b.source.no_provider(&detail);
    match last {
        Some(e) => err.with_source(e),
        None => err,
    }
}

/// After a connection failure at `endpoint`: the first time in a call it stays eligible (a new
/// connection may work), the second time it is skipped.
pub(super) fn retry_or_skip(
    endpoint: Arc<str>,
    tried: &mut Vec<Arc<str>>,
    reconnected: &mut Vec<Arc<str>>,
) {
    if reconnected.contains(&endpoint) {
        tried.push(endpoint);
    } else {
        reconnected.push(endpoint);
    }
}

/// A request to forward as it arrived: names known only at run time and arguments already
/// encoded (what an agent receives from a local application).
pub(crate) struct RawCall<'a> {
    pub(crate) name: CallName,
    /// The request's idempotent flag: forwarded as is, and whether a call lost after it was
    /// sent may be sent again.
    pub(crate) idempotent: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) trace_id: u64,
    pub(crate) meta: &'a Metadata,
    /// The MessagePack argument array, as received.
    pub(crate) args: &'a [u8],
}

impl Balanced {
    /// Sends `call` to a provider the balancer picks and returns the raw body of its response:
    /// the same [`BalancedCall`] as a typed proxy's call (retry budget, ejection, failover, lost
    /// calls retried only when idempotent), with the names and arguments given.
    pub(crate) async fn call_raw(&self, call: RawCall<'_>) -> Result<bytes::Bytes, Error> {
        let balanced = BalancedCall {
            pick: Pick::default(),
            retry_lost: call.idempotent,
            name: call.name,
            idempotent: call.idempotent,
            deadline: call.deadline,
            trace_id: call.trace_id,
            meta: call.meta,
            start: Instant::now(),
        };
        balanced.run(self, &RawArgs(call.args)).await
    }

    /// Sends `call` one-way to a provider the balancer picks (as [`Client::call_one_way`]).
    pub(crate) async fn one_way_raw(&self, call: RawCall<'_>) -> Result<(), Error> {
        let name = &call.name;
        let head = request_head(
            name.service(),
            name.method(),
            call.idempotent,
            call.deadline,
            Instant::now(),
            call.trace_id,
            call.meta,
        )
        .ok_or_else(|| {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("one-way call {name} arrived after its deadline"),
            )
        })?;
        let head = RequestHead {
            flags: head.flags | FLAG_ONE_WAY,
            ..head
        };
        one_way_balanced(self, &Pick::default(), name, head, &RawArgs(call.args)).await
    }
}

/// A call routed by a balancer: tried on one provider after another while it is safe to.
pub(super) struct BalancedCall<'a> {
    pub(super) pick: Pick,
    /// Whether a call lost after it was sent may be sent again (idempotent method, or the
    /// caller's policy).
    pub(super) retry_lost: bool,
    pub(super) name: CallName,
    /// Sent as the request's idempotent flag.
    pub(super) idempotent: bool,
    pub(super) deadline: Option<Instant>,
    pub(super) trace_id: u64,
    pub(super) meta: &'a Metadata,
    pub(super) start: Instant,
}

impl BalancedCall<'_> {
    /// Counts `e` against `target` for outlier ejection when it is the provider's fault.
    pub(super) fn fault(&self, b: &Balanced, target: &Target, e: &Error) {
        if is_provider_fault(e.kind())
            && target
                .load()
                .failed(&b.policy.outliers, clock_ns(Instant::now().into()))
        {
            tracing::warn!(
                endpoint = %target.endpoint,
                service = self.name.service(),
                error = %e,
                ejection_ms = b.policy.outliers.ejection.as_millis() as u64,
                "provider ejected after repeated failures"
            );
        }
    }

    pub(super) fn deadline_error(&self, budget: Duration) -> Error {
        Error::new(
            ErrorKind::DeadlineExceeded,
            format!(
                "{} did not complete within {} ms",
                self.name,
                budget.as_millis()
            ),
        )
    }

    pub(super) async fn run<A: Args + ?Sized>(
        &self,
        b: &Balanced,
        args: &A,
    ) -> Result<bytes::Bytes, Error> {
        let name = &self.name;
        let budget = self
            .deadline
            .map_or(Duration::ZERO, |d| d.saturating_duration_since(self.start));
        let info = CallInfo {
            name: name.clone(),
            deadline: self.deadline,
            budget,
        };
        let targets = match self.deadline {
            None => providers(b).await?,
            Some(d) => tokio::time::timeout_at(d, providers(b))
                .await
                .map_err(|_| self.deadline_error(budget))??,
        };
        b.policy.budget.deposit(self.start.into());
        let mut tried: Vec<Arc<str>> = Vec::new();
        // Endpoints whose connection failed once during this call: they may be chosen once
        // more (on a new connection, e.g. to a provider restarted at the same address).
        let mut reconnected: Vec<Arc<str>> = Vec::new();
        let mut last: Option<Error> = None;
        loop {
            let now = if tried.is_empty() && last.is_none() {
                self.start
            } else {
                Instant::now()
            };
            let Some(target) = choose(b, &self.pick, &targets, &tried, clock_ns(now.into())) else {
                return Err(exhausted(b, name, tried.len(), last));
            };
            if let Some(e) = last.take() {
                // A retry: only within the budget.
                if !b.policy.budget.withdraw(now.into()) {
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "{} (not retried on another provider: the retry budget is spent)",
                            e.message()
                        ),
                    )
                    .with_source(e));
                }
            }
            // Counted from the choice on, so calls waiting for a connection weigh too.
            let in_flight = target.load().start();
            let conn = match self.deadline {
                None => b.pool.connection(&target).await,
                Some(d) => tokio::time::timeout_at(d, b.pool.connection(&target))
                    .await
                    .map_err(|_| self.deadline_error(budget))?,
            };
            if let (Err(e), Some(f)) = (&conn, &target.figures) {
                f.completed(now.elapsed(), Some(e.kind()));
            }
            let conn = match conn {
                Ok(conn) => conn,
                // Nothing was sent: another provider may take it.
                Err(e) if e.is_not_delivered() || e.kind() == ErrorKind::ConnectionClosed => {
                    tracing::debug!(endpoint = %target.endpoint, error = %e, "provider unreachable; trying another");
                    self.fault(b, &target, &e);
                    tried.push(target.endpoint);
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(head) = request_head(
                name.service(),
                name.method(),
                self.idempotent,
                self.deadline,
                now,
                self.trace_id,
                self.meta,
            ) else {
                return Err(self.deadline_error(budget));
            };
            let sent = Instant::now();
            let result = conn.exchange(head, args, info.clone()).await;
            drop(in_flight);
            if let Some(f) = &target.figures {
                let error = match &result {
                    Ok(_) => None,
                    Err(CallError::Reconnect(e) | CallError::Failed(e)) => Some(e.kind()),
                };
                f.completed(sent.elapsed(), error);
            }
            if let Err(CallError::Reconnect(e) | CallError::Failed(e)) = &result {
                self.fault(b, &target, e);
            }
            match result {
                Ok(reply) => {
                    let answered = Instant::now();
                    target
                        .load()
                        .record(answered - sent, clock_ns(answered.into()));
                    target.load().succeeded();
                    return Ok(reply);
                }
                // Found closed before the request was queued: it never left this process.
                Err(CallError::Reconnect(e)) => {
                    retry_or_skip(target.endpoint, &mut tried, &mut reconnected);
                    last = Some(e);
                }
                // Refused before reaching a handler (overloaded, shutting down, ...).
                Err(CallError::Failed(e)) if e.is_not_delivered() => {
                    tracing::debug!(endpoint = %target.endpoint, error = %e, "provider refused the call; trying another");
                    if e.kind() == ErrorKind::ShuttingDown {
                        // The connection was draining (an idle close or a shutdown): a new
                        // connection to the same provider may take it, and one that is really
                        // stopping refuses the connection.
                        retry_or_skip(target.endpoint, &mut tried, &mut reconnected);
                    } else {
                        tried.push(target.endpoint);
                    }
                    last = Some(e);
                }
                // Sent, then the connection was lost: the provider may have run it.
                Err(CallError::Failed(e)) if e.kind() == ErrorKind::ConnectionClosed => {
                    if !self.retry_lost {
                        return Err(Error::new(
                            ErrorKind::ConnectionClosed,
                            format!(
                                "outcome unknown: {} was sent to {} but the connection was lost \
                                 before its answer ({}); it may or may not have run, and it is not \
                                 retried because the method is not idempotent (see \
                                 `Client::retry_lost_calls`)",
                                name,
                                target.endpoint,
                                e.message()
                            ),
                        )
                        .with_source(e));
                    }
                    tracing::debug!(endpoint = %target.endpoint, error = %e, "connection lost; retrying an idempotent call");
                    retry_or_skip(target.endpoint, &mut tried, &mut reconnected);
                    last = Some(e);
                }
                Err(CallError::Failed(e)) => return Err(e),
            }
        }
    }
}
