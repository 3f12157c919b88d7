//! A provider session as a real provider runs one: one connection, logged in, registering its
//! instances and heartbeating every 3 s with an empty status. When a heartbeat is refused (its
//! leases expired, or the connection was lost and came back anonymous) it counts that, logs in
//! again if needed and registers everything again, which is what the `Stardust` handle does and
//! what made the "before" registry's collapse snowball. After a registry restart it comes back
//! on a new connection with what it had registered ([`Provider::halt`], [`Provider::rejoined`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stardust::discovery::api::{Registration, RegistryClient, RegistryError, Status};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::ledger::Ledger;
use crate::registry_process::PROVIDER_APP;
use crate::session::{self, Session};
use crate::view::endpoint_key;

/// How often a provider heartbeats (what the `Stardust` handle does with the default 10 s
/// lease TTL).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);

/// The part of the message of a heartbeat refused because the session's leases expired.
const EXPIRED: &str = "registrations expired";

pub struct Provider {
    client: RegistryClient,
    /// What this session has registered: registered again after an expiry.
    registrations: Arc<Mutex<Vec<Registration>>>,
    /// The access token of the latest login, to resume with after a registry restart.
    token: Arc<Mutex<String>>,
    /// When the latest heartbeat the registry answered (either way) was sent.
    answered: Arc<Mutex<Option<Instant>>>,
    heartbeat: JoinHandle<()>,
}

impl Provider {
    /// Starts heartbeating on a logged-in session; the first heartbeat comes after `phase`
    /// (spreading the sessions' heartbeats over the interval, as independent processes do).
    pub fn start(session: Session, phase: Duration, ledger: Arc<Ledger>) -> Provider {
        Provider::rejoined(session, Vec::new(), phase, ledger)
    }

    /// Like [`start`](Self::start), for a session that comes back after a registry restart
    /// with what it had registered (which [`register_all`](Self::register_all) registers).
    pub fn rejoined(
        session: Session,
        registrations: Vec<Registration>,
        phase: Duration,
        ledger: Arc<Ledger>,
    ) -> Provider {
        let Session { client, token } = session;
        let registrations = Arc::new(Mutex::new(registrations));
        let token = Arc::new(Mutex::new(token));
        let answered = Arc::new(Mutex::new(None));
        let heartbeat = tokio::spawn(heartbeat_loop(
            Heartbeats {
                client: client.clone(),
                registrations: registrations.clone(),
                token: token.clone(),
                answered: answered.clone(),
                ledger,
            },
            phase,
        ));
        Provider {
            client,
            registrations,
            token,
            answered,
            heartbeat,
        }
    }

    /// Stops heartbeating and hands over what coming back after a registry restart takes. The
    /// connection stays open in [`Halted`] until the caller drops it.
    pub async fn halt(mut self) -> Halted {
        self.stop_heartbeat().await;
        Halted {
            registrations: std::mem::take(&mut *self.registrations.lock()),
            token: self.token.lock().clone(),
            connection: self.client.clone(),
        }
    }

    /// Registers again everything this session had registered (on its new connection, after a
    /// registry restart), one call after the other as a real provider's resync does; returns
    /// how many.
    pub async fn register_all(&self) -> Result<usize, String> {
        let all = self.registrations.lock().clone();
        for reg in &all {
            match self.client.register(reg.clone()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("register {} again: {e}", reg.endpoint)),
                Err(e) => return Err(format!("register {} again: {e}", reg.endpoint)),
            }
        }
        Ok(all.len())
    }

    /// Registers one instance; returns how long the call took.
    pub async fn register(&self, reg: Registration, ledger: &Ledger) -> Result<Duration, String> {
        ledger.registering(endpoint_key(&reg.endpoint));
        self.registrations.lock().push(reg.clone());
        let endpoint = reg.endpoint.clone();
        let start = Instant::now();
        match self.client.register(reg).await {
            Ok(Ok(_)) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(format!("register {endpoint}: {e}")),
            Err(e) => Err(format!("register {endpoint}: {e}")),
        }
    }

    /// Deregisters one instance; returns how long the call took.
    pub async fn deregister(
        &self,
        reg: &Registration,
        ledger: &Ledger,
    ) -> Result<Duration, String> {
        ledger.removing(endpoint_key(&reg.endpoint));
        self.registrations
            .lock()
            .retain(|r| r.endpoint != reg.endpoint || r.service != reg.service);
        let start = Instant::now();
        match self
            .client
            .deregister(reg.service.clone(), reg.endpoint.clone())
            .await
        {
            Ok(Ok(true)) => Ok(start.elapsed()),
            Ok(Ok(false)) => Err(format!(
                "deregister {}: it was not registered",
                reg.endpoint
            )),
            Ok(Err(e)) => Err(format!("deregister {}: {e}", reg.endpoint)),
            Err(e) => Err(format!("deregister {}: {e}", reg.endpoint)),
        }
    }

    /// Whether a heartbeat sent at or after `since` has been answered (accepted, or refused and
    /// followed by registering again).
    pub fn heartbeat_answered_since(&self, since: Instant) -> bool {
        self.answered.lock().is_some_and(|at| at >= since)
    }

    /// Stops heartbeating, so that dropping this provider closes its connection at once (the
    /// heartbeat task holds a handle on it too): what a crash looks like to the registry.
    pub async fn stop_heartbeat(&mut self) {
        self.heartbeat.abort();
        let _ = (&mut self.heartbeat).await;
    }
}

/// A provider session whose heartbeats stopped, before a registry restart.
pub struct Halted {
    pub registrations: Vec<Registration>,
    pub token: String,
    /// The old connection, held until the registry is killed: closing it before would end the
    /// session gracefully (its instances leaving every view), which is not a crash.
    pub connection: RegistryClient,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// What the heartbeat task works with.
struct Heartbeats {
    client: RegistryClient,
    registrations: Arc<Mutex<Vec<Registration>>>,
    token: Arc<Mutex<String>>,
    answered: Arc<Mutex<Option<Instant>>>,
    ledger: Arc<Ledger>,
}

async fn heartbeat_loop(hb: Heartbeats, phase: Duration) {
    let Heartbeats {
        client,
        registrations,
        token,
        answered,
        ledger,
    } = hb;
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = Instant::now();
        let answer = client.heartbeat(Status::default()).await;
        if answer.is_ok() {
            ledger.heartbeat_took(start.elapsed());
        }
        match answer {
            Ok(Ok(())) => {}
            Ok(Err(RegistryError::Invalid(m))) if m.contains(EXPIRED) => {
                Ledger::count(&ledger.expiries);
                register_again(&client, &registrations, &ledger).await;
            }
            Ok(Err(RegistryError::Unauthorized(_))) => {
                Ledger::count(&ledger.sessions_lost);
                match session::login(&client, PROVIDER_APP).await {
                    Ok(new) => {
                        *token.lock() = new;
                        register_again(&client, &registrations, &ledger).await;
                    }
                    Err(e) => ledger.error(format!("logging in again after a lost session: {e}")),
                }
            }
            Ok(Err(e)) => {
                Ledger::count(&ledger.heartbeat_errors);
                ledger.error(format!("heartbeat refused: {e}"));
            }
            Err(e) => {
                Ledger::count(&ledger.heartbeat_errors);
                ledger.error(format!("heartbeat failed: {e}"));
                continue;
            }
        }
        *answered.lock() = Some(start);
    }
}

async fn register_again(
    client: &RegistryClient,
    registrations: &Mutex<Vec<Registration>>,
    ledger: &Ledger,
) {
    let all = registrations.lock().clone();
    for reg in all {
        match client.register(reg).await {
            Ok(Ok(_)) => Ledger::count(&ledger.reregistered),
            Ok(Err(e)) => ledger.error(format!("registering again: {e}")),
            Err(e) => ledger.error(format!("registering again: {e}")),
        }
    }
}
