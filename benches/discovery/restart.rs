//! The registry-restart phase: the registry process dies (SIGKILL: a crash, nobody is told) with
//! every session live, and comes back on the same port with the same config and key file. Every
//! provider and subscriber session then comes back as a real client does: a new connection
//! (retried with backoff while the port does not accept yet), `resume` with the token it holds
//! (a full login if the registry refuses it), then providers register their instances again
//! and heartbeat, subscribers `watch` again (a new epoch, so a snapshot) and follow deltas. All
//! sessions at once, as that many processes would, through the setup's handshake limit.
//!
//! Measured: from the moment the new registry accepts connections (when the bench reads the
//! port it prints right after binding) until each subscriber's view shows every live instance
//! of its service again; how many sessions resumed and how many fell back to a full login; the
//! restarted registry's own counters (`/metrics`).
//!
//! What the restart must not be taken for: the old sessions stop heartbeating before the kill,
//! so no heartbeat of theirs fails or is refused; their views are dropped whole rather than
//! emptied instance by instance, so nothing "vanishes" from a view (the registry died: the views
//! are rebuilt from nothing, and an instance leaving a rebuilt view still counts). Lease
//! expiries in the restarted registry count as always.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stardust::discovery::api::Registration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics;
use crate::probe::Probe;
use crate::procfs::Pid;
use crate::provider::{HEARTBEAT_EVERY, Halted, Provider};
use crate::registry_process::{CONSUMER_APP, PROVIDER_APP};
use crate::report::RestartFigures;
use crate::run::{Run, bounded};
use crate::session::{self, Rejoined, Session};
use crate::stats::secs;
use crate::subscriber::{Sinks, Subscriber};
use crate::view::endpoint_key;

/// What a provider session comes back with: what it had registered, and its token.
type Comeback = (Vec<Registration>, String);

/// A session back on the restarted registry, or why not.
enum Back {
    /// Provider session `p`: how it logged in, instances registered again.
    Provider(usize, Result<(Provider, Rejoined, usize), String>),
    /// Subscriber `j`, watching again.
    Subscriber(usize, Result<(Arc<Subscriber>, Rejoined), String>),
}

impl Run<'_> {
    /// Kills the registry, starts it again and brings every session back; a collapse if that
    /// takes over `limit` from the kill. `Err` only when the bench itself cannot go on.
    pub async fn registry_restart(
        &mut self,
        limit: Duration,
        out: &mut RestartFigures,
    ) -> Result<(), String> {
        // Quiet the old sessions: nothing of theirs may reach the registry from here on.
        let mut halted: Vec<Option<Halted>> = Vec::with_capacity(self.providers.len());
        for (p, slot) in self.providers.iter_mut().enumerate() {
            halted.push(match slot.take().map(Arc::try_unwrap) {
                None => None, // crashed in the events phase
                Some(Ok(provider)) => Some(provider.halt().await),
                Some(Err(_)) => return Err(format!("provider session {p} still in use")),
            });
        }
        for sub in &self.subscribers {
            sub.halt().await;
        }
        out.sessions = halted.iter().flatten().count() + self.subscribers.len();

        // The views to rebuild: every live instance, clocked from the kill.
        let probe = Probe::start(self.shape, self.expected(&halted), true);
        self.probes.install(probe.clone());
        self.watchdog.pause();
        self.registry.crash();
        let comebacks: Vec<Option<Comeback>> = halted
            .into_iter()
            .map(|h| {
                h.map(|h| {
                    // Dead with the registry: no need to hold it any longer.
                    drop(h.connection);
                    (h.registrations, h.token)
                })
            })
            .collect();
        let checker_token = self.checker.take().map(|c| c.token);

        // Everyone reconnects at once while the registry starts again.
        let permits = session::handshake_permits();
        let mut tasks = JoinSet::new();
        self.rejoin_providers(comebacks, &permits, &mut tasks);
        self.rejoin_subscribers(&permits, &mut tasks);
        if let Err(e) = self.registry.start_again().await {
            self.watchdog.declare(format!(
                "the registry did not come back after the kill: {e}"
            ));
            return Ok(());
        }
        let up = Instant::now();
        let down = up.duration_since(probe.started());
        out.down = Some(down);
        let Pid::Of(pid) = self.pid() else {
            unreachable!("a child's pid")
        };
        self.watchdog.follow(pid);

        // Bounded here rather than by the caller, so that figures of a restart cut short (how
        // many sessions came back, how many views were complete) are still reported.
        let end = probe.started() + limit;
        let left = || end.saturating_duration_since(Instant::now());
        let watchdog = self.watchdog;
        let phase = "registry restart (every session back)";
        let back = bounded(watchdog, phase, left(), self.gather(&mut tasks, out)).await;
        match back {
            Some(Err(e)) => return Err(e),
            Some(Ok(())) if out.failed == 0 => {
                out.sessions_back = Some(up.elapsed());
                let deadline = tokio::time::Instant::now() + left();
                if !probe.wait(deadline, watchdog.collapsed()).await {
                    let (seen, incomplete) = probe.outcome();
                    watchdog.declare(format!(
                        "registry restart: {incomplete} of {} views not complete within {} s of the kill",
                        incomplete + seen.len(),
                        secs(limit)
                    ));
                }
            }
            // Some session did not come back: its view never will.
            Some(Ok(())) | None => {}
        }
        self.probes.clear();
        let (seen, incomplete) = probe.outcome();
        out.views = seen.into_iter().map(|t| t.saturating_sub(down)).collect();
        out.incomplete = incomplete;

        // Read before the checker comes back, so the counts are the sessions' alone.
        out.registry = Some(metrics::login_counters(self.registry.http_addr()).await);
        if let (Some(token), None) = (checker_token, watchdog.reason()) {
            match session::rejoin(self.registry.addr(), CONSUMER_APP, token).await {
                Ok((session, _)) => self.checker = Some(session),
                Err(e) => self
                    .ledger
                    .error(format!("the checker after the restart: {e}")),
            }
        }
        Ok(())
    }

    /// Takes in the sessions as they come back (the figures grow as they do).
    async fn gather(
        &mut self,
        tasks: &mut JoinSet<Back>,
        out: &mut RestartFigures,
    ) -> Result<(), String> {
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(|e| format!("a session's task died: {e}"))? {
                Back::Provider(p, Ok((provider, how, registered))) => {
                    out.count(how);
                    out.registered += registered;
                    self.providers[p] = Some(Arc::new(provider));
                }
                Back::Subscriber(j, Ok((sub, how))) => {
                    out.count(how);
                    // The old one (halted, its connection dead) goes.
                    self.subscribers[j] = sub;
                }
                Back::Provider(p, Err(e)) => {
                    out.failed += 1;
                    self.ledger
                        .error(format!("provider session {p} after the restart: {e}"));
                }
                Back::Subscriber(j, Err(e)) => {
                    out.failed += 1;
                    self.ledger
                        .error(format!("subscriber {j} after the restart: {e}"));
                }
            }
        }
        Ok(())
    }

    /// Every live instance, with its service: what each rebuilt view must show.
    fn expected(&self, halted: &[Option<Halted>]) -> Vec<(usize, u64)> {
        let shape = self.shape;
        let services: HashMap<String, usize> = (0..shape.services)
            .map(|s| (shape.service_name(s), s))
            .collect();
        halted
            .iter()
            .flatten()
            .flat_map(|h| &h.registrations)
            .map(|reg| (services[&reg.service], endpoint_key(&reg.endpoint)))
            .collect()
    }

    /// Starts every provider session's way back: connect, resume (or log in), heartbeat,
    /// register everything again.
    fn rejoin_providers(
        &self,
        comebacks: Vec<Option<Comeback>>,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<Back>,
    ) {
        let (addr, sessions) = (self.registry.addr(), self.shape.sessions);
        for (p, comeback) in comebacks.into_iter().enumerate() {
            let Some((regs, token)) = comeback else {
                continue; // crashed in the events phase
            };
            let (permits, ledger) = (permits.clone(), self.ledger.clone());
            // Heartbeats spread over the interval again, as in the setup.
            let phase = HEARTBEAT_EVERY.mul_f64(p as f64 / sessions as f64);
            // On the providers' runtime, like their first connections.
            tasks.spawn_on(
                async move {
                    let back = async {
                        let (session, how) = rejoin(addr, PROVIDER_APP, token, &permits).await?;
                        let provider =
                            Provider::rejoined(session, regs.clone(), phase, ledger.clone());
                        match provider.register_all().await {
                            Ok(n) => Ok((provider, how, n)),
                            Err(e) => {
                                // Not coming back: like a crash, its instances are not live.
                                for reg in &regs {
                                    ledger.removing(endpoint_key(&reg.endpoint));
                                }
                                Err(e)
                            }
                        }
                    };
                    Back::Provider(p, back.await)
                },
                &self.providers_rt,
            );
        }
    }

    /// Starts every subscriber session's way back: connect, resume (or log in), watch again.
    fn rejoin_subscribers(&self, permits: &Arc<Semaphore>, tasks: &mut JoinSet<Back>) {
        let addr = self.registry.addr();
        let sinks = Sinks {
            ledger: self.ledger.clone(),
            probes: self.probes.clone(),
        };
        for old in &self.subscribers {
            let (j, service) = (old.index(), old.service());
            let (name, token) = (self.shape.service_name(service), old.token().to_owned());
            let (permits, sinks) = (permits.clone(), sinks.clone());
            tasks.spawn(async move {
                let back = async {
                    let (session, how) = rejoin(addr, CONSUMER_APP, token, &permits).await?;
                    let sub = Arc::new(Subscriber::new(j, service, session));
                    sub.subscribe(name, sinks).await?;
                    Ok((sub, how))
                };
                Back::Subscriber(j, back.await)
            });
        }
    }
}

/// One session's new connection and login, holding a handshake permit meanwhile.
async fn rejoin(
    addr: SocketAddr,
    app: &str,
    token: String,
    permits: &Semaphore,
) -> Result<(Session, Rejoined), String> {
    let _permit = permits.acquire().await.expect("never closed");
    session::rejoin(addr, app, token).await
}

impl RestartFigures {
    fn count(&mut self, how: Rejoined) {
        match how {
            Rejoined::Resumed => self.resumed += 1,
            Rejoined::LoggedIn { why } => {
                self.logged_in += 1;
                self.first_fallback.get_or_insert(why);
            }
        }
    }
}
