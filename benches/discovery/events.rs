//! The event phase: joins, graceful leaves and crashes, one at a time, each timed from the start
//! of the call (or the close) that causes it until every subscriber of its service sees it.
//!
//! Repeat `r` joins instance `join_instance(r)` through provider session `r % (sessions -
//! repeats)`, deregisters it again, then crashes session `sessions - 1 - r` (closes its
//! connection; the registry drops all of that session's instances). Crashed sessions are never
//! used for joins.

use std::sync::Arc;
use std::time::Duration;

use crate::probe::Probe;
use crate::report::{EventFigures, ShapeReport};
use crate::run::Run;
use crate::shape::endpoint;
use crate::stats::secs;
use crate::view::endpoint_key;

/// Events in a row not seen by every subscriber within their deadline that make a collapse.
const MISSES_TO_COLLAPSE: usize = 3;

impl Run<'_> {
    /// Runs the repeats (the caller bounds the whole phase), stopping at a collapse.
    pub async fn events(&mut self, report: &mut ShapeReport) {
        report.repeats = (0, self.repeats);
        let mut misses_in_a_row = 0;
        for r in 0..self.repeats {
            if self.watchdog.reason().is_some() {
                return;
            }
            let all_seen = [
                self.join(r, &mut report.join).await,
                self.leave(r, &mut report.leave).await,
                self.crash(r, &mut report.crash).await,
            ];
            for seen in all_seen {
                misses_in_a_row = if seen { 0 } else { misses_in_a_row + 1 };
                if misses_in_a_row == MISSES_TO_COLLAPSE {
                    self.watchdog.declare(format!(
                        "{MISSES_TO_COLLAPSE} events in a row not seen by every subscriber within {} s",
                        secs(self.bounds.event)
                    ));
                }
            }
            report.repeats.0 = r + 1;
        }
    }

    /// The provider session joins and leaves go through.
    fn joining_session(&self, r: usize) -> usize {
        r % (self.shape.sessions - self.repeats)
    }

    async fn join(&self, r: usize, figures: &mut EventFigures) -> bool {
        let shape = self.shape;
        let instance = shape.join_instance(r);
        let Some(provider) = self.providers[self.joining_session(r)].clone() else {
            return false;
        };
        let reg = shape.registration(instance);
        let key = endpoint_key(&reg.endpoint);
        let probe = Probe::start(shape, [(shape.service_of(instance), key)], true);
        self.probes.install(probe.clone());
        let call = provider.register(reg, &self.ledger).await;
        self.settle(probe, figures, Some(call)).await
    }

    async fn leave(&self, r: usize, figures: &mut EventFigures) -> bool {
        let shape = self.shape;
        let instance = shape.join_instance(r);
        let Some(provider) = self.providers[self.joining_session(r)].clone() else {
            return false;
        };
        let reg = shape.registration(instance);
        let key = endpoint_key(&reg.endpoint);
        let probe = Probe::start(shape, [(shape.service_of(instance), key)], false);
        self.probes.install(probe.clone());
        let call = provider.deregister(&reg, &self.ledger).await;
        self.settle(probe, figures, Some(call)).await
    }

    async fn crash(&mut self, r: usize, figures: &mut EventFigures) -> bool {
        let shape = self.shape;
        let victim = shape.sessions - 1 - r;
        let Some(provider) = self.providers[victim].take() else {
            return false;
        };
        let Ok(mut provider) = Arc::try_unwrap(provider) else {
            self.ledger.error(format!(
                "provider session {victim} still in use: not crashed"
            ));
            return false;
        };
        provider.stop_heartbeat().await;
        let gone: Vec<_> = (victim..shape.instances + shape.burst)
            .step_by(shape.sessions)
            .map(|i| (shape.service_of(i), endpoint_key(&endpoint(i))))
            .collect();
        for &(_, key) in &gone {
            self.ledger.removing(key);
        }
        let probe = Probe::start(shape, gone, false);
        self.probes.install(probe.clone());
        // The last handle on the connection: it closes now, as when a provider process dies.
        drop(provider);
        self.settle(probe, figures, None).await
    }

    /// Waits (bounded) for every subscriber of the changed services to see the change, and
    /// records the latencies; `true` if all saw it in time.
    async fn settle(
        &self,
        probe: Arc<Probe>,
        figures: &mut EventFigures,
        call: Option<Result<Duration, String>>,
    ) -> bool {
        match call {
            Some(Ok(took)) => figures.calls.push(took),
            Some(Err(e)) => self.ledger.error(e),
            None => {}
        }
        let deadline = tokio::time::Instant::from_std(probe.started() + self.bounds.event);
        let all_seen = probe.wait(deadline, self.watchdog.collapsed()).await;
        self.probes.clear();
        let (seen, missed) = probe.outcome();
        figures.seen.extend(seen);
        figures.missed += missed;
        figures.events += 1;
        all_seen
    }
}
