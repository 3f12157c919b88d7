//! Opening a streaming call through the balancer: the first provider that takes it, trying the
//! next one while nothing was sent (unreachable, draining, or too old to stream); and opening
//! it again elsewhere when it failed before anything crossed it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::super::connection::ClientStream;
use super::super::streams::{Reopened, Retry};
use super::*;
use crate::balance::InFlight;
use crate::protocol::message::RawArgs;

/// Everything a balanced stream is opened with, owned: it may be opened again later.
pub(crate) struct StreamSpec {
    pub(crate) pick: Pick,
    /// Whether a stream lost after it was opened may be opened again (idempotent method, or
    /// the caller's policy).
    pub(crate) retry_lost: bool,
    pub(crate) idempotent: bool,
    pub(crate) info: CallInfo,
    pub(crate) trace: CallTrace,
    pub(crate) meta: Metadata,
    /// The encoded argument array.
    pub(crate) args: Bytes,
    pub(crate) start: Instant,
}

/// Opens the stream on a provider the balancer picks among those not in `tried`, adding each
/// provider that could not take it to `tried`. Returns the stream and the provider's load mark.
pub(crate) async fn open_balanced(
    b: &Balanced,
    spec: &StreamSpec,
    tried: &mut Vec<Arc<str>>,
) -> Result<(ClientStream, InFlight), Error> {
    let name = &spec.info.name;
    // A reopened stream keeps its route's subset but takes no second fault.
    let targets =
        routed_providers(b, name, &spec.meta, spec.info.deadline, tried.is_empty()).await?;
    let mut last: Option<Error> = None;
    loop {
        let now = Instant::now();
        let now_ns = clock_ns(now.into());
        let Some((target, _)) = choose(b, &spec.pick, &targets, tried, now_ns, spec.retry_lost)
        else {
            return Err(exhausted(b, name, tried.len(), last));
        };
        tried.push(target.endpoint.clone());
        let (in_flight, was_idle) = target.load().start(now_ns);
        b.pool.watch(was_idle);
        let conn = match b.pool.connection(target).await {
            Ok(conn) => conn,
            Err(e) if e.is_not_delivered() || e.kind() == ErrorKind::ConnectionClosed => {
                tracing::debug!(endpoint = %target.endpoint, error = %e, "provider unreachable; opening the stream on another");
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(head) = request_head(
            name.service(),
            name.method(),
            spec.idempotent,
            spec.info.deadline,
            Instant::now(),
            spec.trace.trace_id(),
            &spec.meta,
        ) else {
            return Err(Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "{name} did not open within {} ms",
                    spec.info.budget.as_millis()
                ),
            ));
        };
        let trace = spec.trace.out();
        match conn.open_stream(&head, trace, &RawArgs(&spec.args), spec.info.clone()) {
            Ok(stream) => return Ok((stream, in_flight)),
            // Nothing was sent: another provider may take it.
            Err(CallError::Reconnect(e)) => last = Some(e),
            Err(CallError::Failed(e)) if e.is_not_delivered() => {
                tracing::debug!(endpoint = %target.endpoint, error = %e, "provider cannot take the stream; trying another");
                last = Some(e);
            }
            Err(CallError::Failed(e)) => return Err(e),
        }
    }
}

impl Retry {
    /// Whether a stream that failed with `e` before anything crossed it may be opened again:
    /// the provider refused it unrun, or it was lost and running it twice is harmless; within
    /// the retry budget.
    pub(crate) fn may_reopen(&self, e: &Error) -> bool {
        let safe = e.is_not_delivered()
            || (self.spec.retry_lost && e.kind() == ErrorKind::ConnectionClosed);
        let Endpoints::Balanced(b) = &self.inner.endpoints else {
            return false;
        };
        safe && b.pool.policy.budget.withdraw(Instant::now().into())
    }

    /// Opens the stream again on a provider not tried yet; fails with `NoProvider` (naming the
    /// error that ended the last try) when none is left.
    pub(crate) fn reopen(
        &mut self,
        failed: Error,
    ) -> crate::auth::BoxFuture<'static, Result<Reopened, Error>> {
        let inner = self.inner.clone();
        let mut tried = std::mem::take(&mut self.tried);
        // The spec moves into the future and comes back with the result only through `tried`;
        // a second reopen uses the copy kept here.
        let spec = StreamSpec {
            pick: self.spec.pick,
            retry_lost: self.spec.retry_lost,
            idempotent: self.spec.idempotent,
            info: self.spec.info.clone(),
            trace: self.spec.trace.clone(),
            meta: self.spec.meta.clone(),
            args: self.spec.args.clone(),
            start: self.spec.start,
        };
        Box::pin(async move {
            let Endpoints::Balanced(b) = &inner.endpoints else {
                return Err(failed);
            };
            let open = open_balanced(b, &spec, &mut tried);
            let opened = match spec.info.deadline {
                None => open.await,
                Some(d) => tokio::time::timeout_at(d, open)
                    .await
                    .map_err(|_| failed.clone())?,
            };
            match opened {
                Ok((stream, in_flight)) => Ok((stream, in_flight, tried)),
                Err(e) if e.kind() == ErrorKind::NoProvider => Err(Error::new(
                    failed.kind(),
                    format!(
                        "{} (not opened elsewhere: {})",
                        failed.message(),
                        e.message()
                    ),
                )
                .with_source(e)),
                Err(e) => Err(e),
            }
        })
    }
}
