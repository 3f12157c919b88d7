//! The balanced call path: choosing a provider per call (leaving out ejected and suspect ones,
//! and sending a suspect one its probe), retrying within the call's deadline on another one,
//! hedging calls that may run twice (`call`), and telling the balancer and the outlier detector
//! what happened.

mod call;
mod stream;

use std::sync::Arc;

use tokio::time::Instant;

use super::pool::Suspicion;
use super::*;
use crate::trace_context::{CallTrace, TraceOut};
use crate::traffic::Injected;
pub(super) use call::BalancedCall;
pub(crate) use stream::{StreamSpec, open_balanced};

/// Sends a one-way call to one provider chosen by the balancer, trying the next one when a
/// provider cannot be reached (nothing was queued there).
pub(super) async fn one_way_balanced<A: Args + ?Sized>(
    b: &Balanced,
    pick: &Pick,
    name: &CallName,
    head: RequestHead<'_>,
    trace: Option<TraceOut<'_>>,
    args: &A,
) -> Result<(), Error> {
    let targets = routed_providers(b, name, head.meta, None, true).await?;
    let mut tried: Vec<Arc<str>> = Vec::new();
    loop {
        let now_ns = clock_ns(Instant::now().into());
        let Some((target, _)) = choose(b, pick, &targets, &tried, now_ns, false) else {
            return Err(exhausted(b, name, tried.len(), None));
        };
        let result = match b.pool.connection(target).await {
            Ok(conn) => conn.send_one_way(head, trace, args),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_delivered() || e.kind() == ErrorKind::ConnectionClosed => {
                tracing::debug!(endpoint = %target.endpoint, error = %e, "one-way call not sent; trying another provider");
                tried.push(target.endpoint.clone());
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

/// The providers a call may go to once the traffic rules had their say (a route's subset, or
/// every provider), after the fault they inject into it, if any: a delay is waited out here
/// (within the deadline), an abort is returned. An injected fault never reaches a provider,
/// so nothing counts it against one (ejection, retry budget, hedging) and nothing retries it.
pub(super) async fn routed_providers(
    b: &Balanced,
    name: &CallName,
    meta: &Metadata,
    deadline: Option<Instant>,
    faults: bool,
) -> Result<Arc<[Target]>, Error> {
    // The list is almost always known and no fault is injected: then no timer, and the rest
    // (large, as futures go) is boxed so that it does not weigh on every call's future.
    let all = match b.source.known().filter(|all| !all.is_empty()) {
        Some(all) => all,
        None => Box::pin(fetch_providers(b, name, deadline)).await?,
    };
    let Some(routed) = b.source.routing() else {
        return Ok(all);
    };
    let decision = routed.decide(name.method(), meta, &all, faults)?;
    match decision.fault {
        None => Ok(decision.targets),
        Some((fault, injected)) => {
            Box::pin(inject(name, deadline, (fault, injected), decision.targets)).await
        }
    }
}

/// The providers `b`'s source lists, within `deadline`.
async fn fetch_providers(
    b: &Balanced,
    name: &CallName,
    deadline: Option<Instant>,
) -> Result<Arc<[Target]>, Error> {
    match deadline {
        None => providers(b).await,
        Some(d) => tokio::time::timeout_at(d, providers(b))
            .await
            .map_err(|_| deadline_passed(name, None))?,
    }
}

/// Applies the fault the traffic rules injected into a call: waits out a delay (within the
/// deadline) and then hands back `targets`, or fails with an abort.
async fn inject(
    name: &CallName,
    deadline: Option<Instant>,
    (fault, injected): (Arc<str>, Injected),
    targets: Arc<[Target]>,
) -> Result<Arc<[Target]>, Error> {
    // Marked where anyone reading the trace looks: a drill, not an outage.
    tracing::Span::current().record("fault", &*fault);
    match injected {
        Injected::Abort(e) => {
            tracing::debug!(fault = %fault, error = %e, "fault injected: call aborted");
            Err(e)
        }
        Injected::Delay(delay) => {
            tracing::debug!(fault = %fault, delay_ms = delay.as_millis() as u64, "fault injected: call delayed");
            let until = Instant::now() + delay;
            match deadline {
                Some(d) if d <= until => {
                    tokio::time::sleep_until(d).await;
                    Err(deadline_passed(name, Some((&fault, delay))))
                }
                _ => {
                    tokio::time::sleep_until(until).await;
                    Ok(targets)
                }
            }
        }
    }
}

/// A call's deadline passed before it was sent (while its providers were looked up, or while
/// an injected delay held it).
fn deadline_passed(name: &CallName, fault: Option<(&str, Duration)>) -> Error {
    let why = match fault {
        Some((fault, delay)) => format!(
            " (fault `{fault}` of the registry's traffic rules held it for {} ms)",
            delay.as_millis()
        ),
        None => " (while looking up its providers)".to_owned(),
    };
    Error::new(
        ErrorKind::DeadlineExceeded,
        format!("{name} passed its deadline before it was sent{why}"),
    )
}

/// The balancer's choice when nothing calls for more (no probe may be due), if that provider
/// is available: the common case, in which a call has tried nothing yet. `None` leaves the
/// choice to [`choose`].
pub(super) fn choose_plainly<'t>(
    b: &Balanced,
    pick: &Pick,
    targets: &'t [Target],
    now_ns: u64,
    retryable: bool,
) -> Option<&'t Target> {
    if b.pool.probe_may_be_due(now_ns, retryable) {
        return None;
    }
    let t = &targets[b.balancer.pick(targets, &Pick { now_ns, ..*pick }) % targets.len()];
    available(&b.pool, t, now_ns).then_some(t)
}

/// The balancer's choice among the providers not in `exclude` (tried by this call, or holding
/// one of its tries), not ejected and not suspect (or, when every one left is, among those);
/// or a suspect provider whose probe is due, when the call may serve as its probe
/// (`retryable`: it may run twice; other calls probe only providers suspect for longer than
/// the ejection time). Returns the provider and whether the call is its probe.
pub(super) fn choose<'t>(
    b: &Balanced,
    pick: &Pick,
    targets: &'t [Target],
    exclude: &[Arc<str>],
    now_ns: u64,
    retryable: bool,
) -> Option<(&'t Target, bool)> {
    let pool = &b.pool;
    if exclude.is_empty()
        && let Some(t) = choose_plainly(b, pick, targets, now_ns, retryable)
    {
        return Some((t, false));
    }
    let pick = &Pick { now_ns, ..*pick };
    let untried = || targets.iter().filter(|t| !exclude.contains(&t.endpoint));
    let policy = &pool.policy;
    let ejection = policy.outliers.ejection.as_nanos() as u64;
    for t in untried() {
        let load = t.load();
        if let Some(suspect_for) = load.suspect_for(now_ns)
            && (retryable || suspect_for >= ejection)
            && load.claim_probe(&policy.stalls, now_ns)
        {
            pool.probe_claimed(
                now_ns.saturating_add(policy.stalls.probe_interval.as_nanos() as u64),
            );
            tracing::debug!(endpoint = %t.endpoint, "probing a suspect provider with one call");
            return Some((t, true));
        }
    }
    // The balancer sees only those left (a copy: its interface takes a slice of targets);
    // the choice is mapped back to the caller's list.
    let mut left: Vec<(usize, Target)> = untried_at(targets, exclude)
        .filter(|(_, t)| available(pool, t, now_ns))
        .map(|(i, t)| (i, t.clone()))
        .collect();
    if left.is_empty() {
        left = untried_at(targets, exclude)
            .map(|(i, t)| (i, t.clone()))
            .collect();
    }
    if left.is_empty() {
        return None;
    }
    let (indices, left): (Vec<usize>, Vec<Target>) = left.into_iter().unzip();
    let i = b.balancer.pick(&left, pick) % left.len();
    Some((&targets[indices[i]], false))
}

/// The targets not in `exclude`, with their positions.
fn untried_at<'t>(
    targets: &'t [Target],
    exclude: &'t [Arc<str>],
) -> impl Iterator<Item = (usize, &'t Target)> {
    targets
        .iter()
        .enumerate()
        .filter(|(_, t)| !exclude.contains(&t.endpoint))
}

/// Whether `t` may take calls at `now_ns`: not ejected, not suspect, and not found stalled now.
fn available(pool: &Pool, t: &Target, now_ns: u64) -> bool {
    let load = t.load();
    if load.is_ejected(now_ns) || load.is_suspect() {
        return false;
    }
    if let Some(silent) = load.check_stall(&pool.policy.stalls, now_ns) {
        let silent = Duration::from_nanos(silent);
        pool.suspected(&t.endpoint, load, Suspicion::Stall(silent), now_ns);
        return false;
    }
    true
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
    /// The call's trace (its `traceparent` is sent, unless `meta` has one of its own).
    pub(crate) trace: &'a CallTrace,
    pub(crate) meta: &'a Metadata,
    /// The MessagePack argument array, as received.
    pub(crate) args: &'a [u8],
}

impl Balanced {
    /// Sends `call` to a provider the balancer picks and returns the raw body of its response:
    /// the same [`BalancedCall`] as a typed proxy's call (retry budget, ejection, failover, lost
    /// calls retried only when idempotent), with the names and arguments given.
    pub(crate) async fn call_raw(&self, call: RawCall<'_>) -> Result<bytes::Bytes, Error> {
        let hedging = self
            .pool
            .policy
            .hedging_of(call.name.service(), call.name.method());
        let balanced = BalancedCall {
            pick: Pick::default(),
            retry_lost: call.idempotent,
            name: call.name,
            method: None,
            hedging,
            idempotent: call.idempotent,
            deadline: call.deadline,
            trace_id: call.trace.trace_id(),
            meta: call.meta,
            start: Instant::now(),
        };
        balanced
            .run_traced(self, call.trace.out(), &RawArgs(call.args))
            .await
    }

    /// Opens `call` as a streaming call on a provider the balancer picks (what an agent
    /// forwards a stream with): the first provider that takes it, trying the next while
    /// nothing was sent.
    pub(crate) async fn open_stream_raw(
        &self,
        call: RawCall<'_>,
    ) -> Result<(super::connection::ClientStream, crate::balance::InFlight), Error> {
        let start = Instant::now();
        let spec = StreamSpec {
            pick: Pick::default(),
            retry_lost: call.idempotent,
            idempotent: call.idempotent,
            info: CallInfo {
                budget: call
                    .deadline
                    .map_or(Duration::ZERO, |d| d.saturating_duration_since(start)),
                name: call.name,
                deadline: call.deadline,
                hedge_at: None,
            },
            trace: call.trace.clone(),
            meta: call.meta.clone(),
            args: bytes::Bytes::copy_from_slice(call.args),
            start,
        };
        open_balanced(self, &spec, &mut Vec::new()).await
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
            call.trace.trace_id(),
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
        let trace = call.trace.out();
        one_way_balanced(
            self,
            &Pick::default(),
            name,
            head,
            trace,
            &RawArgs(call.args),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Policy, RoundRobin};

    /// A source that is never asked (the tests hand `choose` its targets).
    struct Unused;

    impl EndpointSource for Unused {
        fn known(&self) -> Option<Arc<[Target]>> {
            None
        }
        fn fetch(&self) -> crate::auth::BoxFuture<'_, Result<Arc<[Target]>, Error>> {
            unreachable!("not asked")
        }
        fn no_provider(&self, detail: &str) -> Error {
            Error::new(ErrorKind::NoProvider, detail.to_owned())
        }
        fn describe(&self) -> String {
            "test".to_owned()
        }
    }

    fn balanced() -> (Balanced, Vec<Target>) {
        let pool = Arc::new(Pool::new(
            ClientConfig::default(),
            Arc::new(Policy::default()),
        ));
        let targets = (0..3)
            .map(|i| {
                let endpoint: Arc<str> = Arc::from(format!("10.0.0.{i}:1"));
                pool.target(endpoint, 100)
            })
            .collect();
        let b = Balanced {
            source: Arc::new(Unused),
            pool,
            balancer: Arc::new(RoundRobin::new()),
            latencies: MethodLatencies::default(),
        };
        (b, targets)
    }

    /// What `n` choices at `now_ns` picked: per target, (calls, probes).
    fn picks(
        b: &Balanced,
        t: &[Target],
        n: usize,
        now_ns: u64,
        retryable: bool,
    ) -> Vec<(u32, u32)> {
        let mut seen = vec![(0, 0); t.len()];
        for _ in 0..n {
            let (chosen, probe) = choose(b, &Pick::default(), t, &[], now_ns, retryable).unwrap();
            let i = t
                .iter()
                .position(|x| x.endpoint == chosen.endpoint)
                .unwrap();
            seen[i].0 += 1;
            seen[i].1 += u32::from(probe);
        }
        seen
    }

    #[test]
    fn a_suspect_gets_only_probes_and_only_from_calls_that_may_run_twice_at_first() {
        const SEC: u64 = 1_000_000_000;
        let (b, t) = balanced();
        let stalls = b.pool.policy.stalls;
        assert!(t[1].load().suspect(&stalls, 10 * SEC));

        // Before its first probe is due (one interval on), nothing goes there.
        assert_eq!(picks(&b, &t, 30, 10 * SEC, true)[1], (0, 0));
        // Due: one call that may run twice takes it as a probe, then none until the next one.
        assert_eq!(picks(&b, &t, 30, 11 * SEC, true)[1], (1, 1));
        assert_eq!(picks(&b, &t, 30, 11 * SEC, true)[1], (0, 0));
        // Calls that may not run twice never probe while the suspicion is younger than the
        // ejection time (10 s)...
        assert_eq!(picks(&b, &t, 30, 12 * SEC, false)[1], (0, 0));
        assert_eq!(picks(&b, &t, 30, 19 * SEC, false)[1], (0, 0));
        // ...and do after it, one per interval.
        assert_eq!(picks(&b, &t, 30, 20 * SEC, false)[1], (1, 1));
        assert_eq!(picks(&b, &t, 30, 20 * SEC, false)[1], (0, 0));
        // The others share the calls.
        let rest = picks(&b, &t, 30, 20 * SEC, false);
        assert_eq!(rest[0].0 + rest[2].0, 30);

        // It answers: back in the rotation.
        t[1].load().answered(21 * SEC);
        assert_eq!(picks(&b, &t, 30, 21 * SEC, false)[1], (10, 0));
    }

    #[test]
    fn when_every_provider_is_suspect_calls_still_go_out() {
        const SEC: u64 = 1_000_000_000;
        let (b, t) = balanced();
        let stalls = b.pool.policy.stalls;
        for x in &t {
            x.load().suspect(&stalls, SEC);
        }
        let seen = picks(&b, &t, 30, SEC, false);
        assert_eq!(seen.iter().map(|s| s.0).sum::<u32>(), 30);
    }
}
