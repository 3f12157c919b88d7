//! A provider session as a real provider runs one: one connection, logged in, registering its
//! instances and heartbeating every 3 s with an empty status. When a heartbeat is refused (its
//! leases expired, or the connection was lost and came back anonymous) it counts that, logs in
//! again if needed and registers everything again, which is what the `Stardust` handle does and
//! what made the "before" registry's collapse snowball.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use stardust::discovery::api::{Registration, RegistryClient, RegistryError, Status};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::ledger::Ledger;
use crate::registry_process::PROVIDER_APP;
use crate::session;
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
    /// When the latest heartbeat the registry answered (either way) was sent.
    answered: Arc<Mutex<Option<Instant>>>,
    heartbeat: JoinHandle<()>,
}

impl Provider {
    /// Starts heartbeating on a logged-in session; the first heartbeat comes after `phase`
    /// (spreading the sessions' heartbeats over the interval, as independent processes do).
    pub fn start(client: RegistryClient, phase: Duration, ledger: Arc<Ledger>) -> Provider {
        let registrations = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(None));
        let heartbeat = tokio::spawn(heartbeat_loop(
            Heartbeats {
                client: client.clone(),
                registrations: registrations.clone(),
                answered: answered.clone(),
                ledger,
            },
            phase,
        ));
        Provider {
            client,
            registrations,
            answered,
            heartbeat,
        }
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

impl Drop for Provider {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// What the heartbeat task works with.
struct Heartbeats {
    client: RegistryClient,
    registrations: Arc<Mutex<Vec<Registration>>>,
    answered: Arc<Mutex<Option<Instant>>>,
    ledger: Arc<Ledger>,
}

async fn heartbeat_loop(hb: Heartbeats, phase: Duration) {
    let Heartbeats {
        client,
        registrations,
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
                    Ok(()) => register_again(&client, &registrations, &ledger).await,
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
