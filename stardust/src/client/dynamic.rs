//! Calls by names known only at run time, with arguments and result as MessagePack: what tools
//! that call any service use (the operator CLI builds the arguments from JSON). Typed proxies
//! never come here.

use super::*;

impl Client {
    /// Calls `method` of `service` with `args`, the MessagePack argument array, and returns the
    /// response body as MessagePack (for a method returning `Result<T, E>`: `{"Ok": T}` or
    /// `{"Err": E}`, as serde encodes it). `idempotent` is sent as the request's flag and lets
    /// a balanced client retry a call lost after it was sent. Deadlines, metadata, hash keys
    /// and balancing apply as to any call; interceptors do not run (they are given a method's
    /// static descriptor, which a dynamic call has none of).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), stardust::Error> {
    /// let client = stardust::Client::connect("127.0.0.1:6600").await?;
    /// // [1, 2] as a MessagePack array: 0x92 0x01 0x02.
    /// let body = client.call_dynamic("calc.Calculator", "add", &[0x92, 1, 2], true).await?;
    /// assert_eq!(&body[..], &[3]);
    /// # Ok(()) }
    /// ```
    pub async fn call_dynamic(
        &self,
        service: &str,
        method: &str,
        args: &[u8],
        idempotent: bool,
    ) -> Result<bytes::Bytes, Error> {
        let start = Instant::now();
        let (deadline, trace) = self.deadline_and_call_trace(start);
        let meta = self.metadata.as_deref().unwrap_or(&EMPTY_METADATA);
        // The call's W3C trace: a new span in the handler's trace, or a new trace (a
        // `traceparent` the handle's metadata carries is kept).
        let trace = trace.with_metadata(meta);
        let trace_id = trace.trace_id();
        let name = CallName::shared(service, method);
        if let Endpoints::Balanced(b) = &self.inner.endpoints {
            let call = BalancedCall {
                pick: Pick {
                    hash_key: self.hash_key,
                    ..Pick::default()
                },
                retry_lost: self.retry_lost || idempotent,
                hedging: self
                    .hedging
                    .unwrap_or_else(|| b.pool.policy.hedging_of(service, method)),
                name,
                method: None,
                idempotent,
                deadline,
                trace_id,
                meta,
                start,
            };
            return Box::pin(call.run_traced(b, trace.out(), &RawArgs(args))).await;
        }
        let budget = deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(start));
        let deadline_error = || {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "{service}.{method} did not complete within {} ms",
                    budget.as_millis()
                ),
            )
        };
        let info = CallInfo {
            name,
            deadline,
            budget,
            hedge_at: None,
        };
        // A connection found closed when queueing means nothing was sent: reconnect once.
        let mut retried = false;
        loop {
            let conn = match deadline {
                None => self.inner.connection().await?,
                Some(d) => tokio::time::timeout_at(d, self.inner.connection())
                    .await
                    .map_err(|_| deadline_error())??,
            };
            let head = request_head(
                service,
                method,
                idempotent,
                deadline,
                Instant::now(),
                trace_id,
                meta,
            )
            .ok_or_else(deadline_error)?;
            match conn
                .exchange_traced(head, trace.out(), &RawArgs(args), info.clone())
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(CallError::Reconnect(_)) if !retried => retried = true,
                Err(CallError::Reconnect(e) | CallError::Failed(e)) => return Err(e),
            }
        }
    }
}
