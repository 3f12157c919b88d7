//! The process's session with the registry: login, token renewal, heartbeats, registrations,
//! subscriptions, and getting all of that back after the registry (or the network) went away.
//!
//! One background task owns the session's life cycle. While connected it heartbeats (which is
//! also how a lost registry is noticed), renews the token before it expires and pulls every
//! watched service as a safety net behind the registry's pushes. When a call fails it reconnects
//! with exponential backoff, trying every configured registry address in turn, logs in again,
//! re-registers and re-subscribes. Meanwhile providers keep serving and consumers keep calling
//! from their last known instance lists.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

mod follow;
mod traffic;

use super::api::{
    FEATURE_DELTA, FEATURE_RESUME, Instance, LoginReply, Registration, RegistryClient,
    RegistryError, Status,
};
use super::watch::ServiceWatch;
use crate::auth::token::KeySet;
use crate::auth::{BoxFuture, Credentials, KeyFetcher, ProofKey, SharedCredentials, TokenVerifier};
use crate::client::{Client, ClientConfig, Pool};
use crate::error::{Error, ErrorKind};
use crate::monitor::{self, process};
use crate::server::ServerProbe;
use crate::tls::ClientTls;

/// Registry connections kept open while reconnecting (make before break, see `Session::run`).
const MAX_HELD: usize = 4;

/// Tunables of a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) heartbeat: Duration,
    pub(crate) pull: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) registry_timeout: Duration,
    /// TLS for providers that advertise it.
    pub(crate) tls: Option<ClientTls>,
    /// TLS for the registry connection.
    pub(crate) registry_tls: Option<ClientTls>,
    /// Calls take the traffic rules' faults.
    pub(crate) faults: bool,
    /// Seed of the traffic rules' draws (`None`: random).
    pub(crate) traffic_seed: Option<u64>,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            heartbeat: Duration::from_secs(3),
            pull: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            registry_timeout: Duration::from_secs(10),
            tls: None,
            registry_tls: None,
            faults: true,
            traffic_seed: None,
        }
    }
}

/// An app secret: kept in memory only to log in again, never printed.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

struct Current {
    registry: Option<RegistryClient>,
    token: Option<(String, SystemTime)>,
    renew_at: Option<Instant>,
}

pub(crate) struct Session {
    registries: Vec<String>,
    /// Which registry address to try first on the next (re)connection: the one after the
    /// node the session just lost, so a dead node is tried last, not first every time.
    first_registry: std::sync::atomic::AtomicUsize,
    app: String,
    secret: Secret,
    /// The key this process proves it holds: every token the registry issues to the session is
    /// bound to it (login, resumption and renewal alike), and connections to providers prove it.
    proof_key: ProofKey,
    pub(crate) cfg: SessionConfig,
    current: Mutex<Current>,
    /// Verifies consumers' tokens on this process's providers; its keys come with every login.
    pub(crate) verifier: Arc<TokenVerifier>,
    registrations: Mutex<Vec<Registration>>,
    watches: Mutex<Vec<Arc<ServiceWatch>>>,
    /// This process's servers, for the in-flight count in status reports.
    servers: Mutex<Vec<ServerProbe>>,
    started: std::time::Instant,
    /// When the previous status report was made, and the process's CPU time then.
    last_report: Mutex<(std::time::Instant, Option<u64>)>,
    /// The figures of a status report the registry did not take, for the next one.
    unsent: Mutex<Option<Status>>,
    /// One connection per provider endpoint, shared by every consumer proxy of this process.
    pub(crate) pool: Arc<Pool>,
    /// The traffic rules of every service this process follows (the services it watches).
    traffic: traffic::Followed,
}

impl Session {
    pub(crate) fn new(
        registries: Vec<String>,
        app: String,
        secret: Secret,
        proof_key: ProofKey,
        cfg: SessionConfig,
        policy: Arc<crate::balance::Policy>,
    ) -> Arc<Session> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Session>| {
            let fetcher: Arc<dyn KeyFetcher> = Arc::new(SessionKeys(weak.clone()));
            let pool_config = ClientConfig {
                credentials: Some(SharedCredentials(Arc::new(SessionCredentials(
                    weak.clone(),
                )))),
                tls: cfg.tls.clone(),
                ..ClientConfig::default()
            };
            Session {
                registries,
                first_registry: std::sync::atomic::AtomicUsize::new(0),
                secret,
                proof_key,
                current: Mutex::new(Current {
                    registry: None,
                    token: None,
                    renew_at: None,
                }),
                verifier: Arc::new(TokenVerifier::new(KeySet::new()).with_fetcher(fetcher)),
                registrations: Mutex::new(Vec::new()),
                watches: Mutex::new(Vec::new()),
                servers: Mutex::new(Vec::new()),
                started: std::time::Instant::now(),
                last_report: Mutex::new((std::time::Instant::now(), process::cpu_time_ms())),
                unsent: Mutex::new(None),
                pool: Arc::new(Pool::new(pool_config, policy)),
                traffic: traffic::Followed::new(&app, &cfg),
                app,
                cfg,
            }
        })
    }

    pub(crate) fn app(&self) -> &str {
        &self.app
    }

    /// The registry client of the current connection, if connected.
    fn registry(&self) -> Result<RegistryClient, Error> {
        self.current.lock().registry.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Connect,
                "not connected to the registry right now (reconnecting in the background)",
            )
        })
    }

    /// The current access token.
    pub(crate) fn token(&self) -> Result<(String, SystemTime), Error> {
        self.current
            .lock()
            .token
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Unauthorized, "not logged in to the registry yet"))
    }

    /// Connects to the first registry that answers and logs in, trying the addresses in turn
    /// from the one after the node last lost. A refused login ends the attempt at once (every
    /// registry node shares the same apps).
    pub(crate) async fn establish(self: &Arc<Self>) -> Result<RegistryClient, Error> {
        use std::sync::atomic::Ordering;
        let mut last = None;
        let n = self.registries.len();
        let start = self.first_registry.load(Ordering::Relaxed);
        for i in (0..n).map(|k| (start + k) % n) {
            let addr = &self.registries[i];
            // Revisioned discovery: this client applies deltas.
            // The connection proves the session's key, which the registry binds its tokens to.
            let builder = Client::builder()
                .timeout(self.cfg.registry_timeout)
                .features([FEATURE_DELTA])
                .proof_key(self.proof_key.clone())
                .tls_config(self.cfg.registry_tls.as_ref().map(|t| t.for_endpoint(addr)));
            let client = match builder.connect(addr.as_str()).await {
                Ok(c) => RegistryClient::new(c),
                Err(e) => {
                    tracing::debug!(registry = %addr, error = %e, "registry unreachable");
                    last = Some(e);
                    continue;
                }
            };
            let reply = match self.resume(&client, addr).await {
                Some(reply) => reply,
                None => self.login(&client, addr).await?,
            };
            self.accept_login(&client, reply);
            // Lost later, this node is tried last next time.
            self.first_registry.store((i + 1) % n, Ordering::Relaxed);
            tracing::info!(registry = %addr, app = %self.app, "logged in to the registry");
            return Ok(client);
        }
        Err(last
            .unwrap_or_else(|| Error::new(ErrorKind::Connect, "no registry address configured")))
    }

    /// Logs in on `client`. A login the registry throttles (too many logins from this host at
    /// once, e.g. many processes starting together) is retried after the wait the registry
    /// names, for up to the registry timeout; any other refusal is final.
    async fn login(&self, client: &RegistryClient, addr: &str) -> Result<LoginReply, Error> {
        let give_up = Instant::now() + self.cfg.registry_timeout;
        loop {
            match client
                .login(self.app.clone(), self.secret.0.clone())
                .await?
            {
                Ok(reply) => return Ok(reply),
                Err(RegistryError::Throttled { retry_after_ms, .. })
                    if Instant::now() + Duration::from_millis(retry_after_ms) < give_up =>
                {
                    tracing::info!(registry = %addr, retry_in_ms = retry_after_ms, "login throttled by the registry; retrying");
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.max(10))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Logs in again with the token still held, if the registry takes that (`resume`): no
    /// secret check, so a registry restart's thousands of returning sessions do not queue for
    /// argon2. `None`: log in with the secret (no token, one about to expire, an older registry,
    /// or a refusal, e.g. a registry whose keys changed).
    async fn resume(&self, client: &RegistryClient, addr: &str) -> Option<LoginReply> {
        if !client.client().peer_features().has(FEATURE_RESUME) {
            return None;
        }
        let (token, expires) = self.current.lock().token.clone()?;
        // A token about to expire is not worth resuming with: it would need renewing at once.
        if expires < SystemTime::now() + self.cfg.registry_timeout {
            return None;
        }
        match client.resume(token).await {
            Ok(Ok(reply)) => {
                tracing::debug!(registry = %addr, app = %self.app, "session resumed with its token");
                Some(reply)
            }
            Ok(Err(e)) => {
                tracing::debug!(registry = %addr, error = %e, "resume refused; logging in with the secret");
                None
            }
            Err(e) => {
                tracing::debug!(registry = %addr, error = %e, "resume failed; logging in with the secret");
                None
            }
        }
    }

    fn accept_login(&self, client: &RegistryClient, reply: LoginReply) {
        self.verifier.set_keys(keyset(&reply));
        let expires = crate::auth::token::unix_ms(SystemTime::now());
        let lifetime = Duration::from_millis(reply.expires_at_ms.saturating_sub(expires));
        let mut cur = self.current.lock();
        cur.registry = Some(client.clone());
        cur.token = Some((
            reply.token,
            SystemTime::UNIX_EPOCH + Duration::from_millis(reply.expires_at_ms),
        ));
        // Renew when two thirds of the lifetime have passed.
        cur.renew_at = Some(Instant::now() + lifetime * 2 / 3);
    }

    /// The session's life: steady state, and reconnection whenever it breaks.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            let err = self.steady().await;
            tracing::warn!(error = %err, "lost the registry session; reconnecting");
            // Make before break: connections that may still hold this process's registrations
            // stay open until a new session has registered everything again. A registry ends a
            // session (removing what it registered) when its connection closes; closing first
            // would make the providers vanish from consumers' lists until they are back.
            let mut held: Vec<RegistryClient> =
                self.current.lock().registry.take().into_iter().collect();
            let mut backoff = self.cfg.backoff_min;
            loop {
                let attempt = match self.establish().await {
                    Ok(client) => {
                        let result = self.resync(&client).await;
                        if result.is_err() && !self.registrations.lock().is_empty() {
                            // It may have registered some before failing.
                            if held.len() >= MAX_HELD {
                                held.remove(0);
                            }
                            held.push(client);
                        }
                        result
                    }
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(()) => break,
                    Err(e) => {
                        self.current.lock().registry = None;
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "registry reconnect failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.cfg.backoff_max);
                    }
                }
            }
            drop(held);
        }
    }

    /// Heartbeats, renews and pulls until a registry call fails; returns that failure.
    async fn steady(&self) -> Error {
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        let mut pull = tokio::time::interval(self.cfg.pull);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pull.tick().await; // the first tick is immediate; resync just pulled everything
        loop {
            let result = tokio::select! {
                _ = heartbeat.tick() => self.beat().await,
                _ = pull.tick() => self.pull_all().await,
            };
            if let Err(e) = result {
                return e;
            }
        }
    }

    /// This process's status, with the figures of the window since the previous report.
    fn status(&self) -> Status {
        let mut served = Vec::new();
        let mut unbound_tokens_accepted = 0;
        let in_flight = {
            let mut servers = self.servers.lock();
            let mut total = 0;
            servers.retain(|probe| {
                unbound_tokens_accepted += probe.unbound_tokens_accepted();
                probe.get().inspect(|n| total += n).is_some() && probe.take_windows(&mut served)
            });
            total as u64
        };
        let mut called = Vec::new();
        self.pool.take_call_windows(&mut called);
        let now = std::time::Instant::now();
        let cpu_now = process::cpu_time_ms();
        let (window, cpu) = {
            let mut last = self.last_report.lock();
            let window = now.duration_since(last.0);
            let cpu = match (cpu_now, last.1) {
                (Some(now), Some(before)) => now.saturating_sub(before),
                _ => 0,
            };
            *last = (now, cpu_now);
            (window, cpu)
        };
        Status {
            in_flight,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            window_ms: window.as_millis() as u64,
            cpu_ms: cpu,
            rss_bytes: process::rss_bytes().unwrap_or(0),
            unbound_tokens_accepted,
            served,
            called,
            faults: self.traffic.take_injected(),
        }
    }

    async fn beat(&self) -> Result<(), Error> {
        let client = self.registry()?;
        let mut status = self.status();
        if let Some(earlier) = self.unsent.lock().take() {
            monitor::carry_over(&mut status, earlier);
        }
        tracing::trace!(
            served = status.served.len(),
            called = status.called.len(),
            "status report"
        );
        let sent = client.heartbeat(status.clone()).await;
        if !matches!(sent, Ok(Ok(()))) {
            // Counted in the next report instead. (A heartbeat the registry took whose answer
            // was lost is counted twice: rare, and only ever an overcount.)
            *self.unsent.lock() = Some(status);
        }
        sent?.map_err(Error::from)?;
        let due = self
            .current
            .lock()
            .renew_at
            .is_some_and(|at| Instant::now() >= at);
        if due {
            let reply = client.renew().await?.map_err(Error::from)?;
            self.accept_login(&client, reply);
            tracing::debug!(app = %self.app, "access token renewed");
        }
        Ok(())
    }

    /// Includes `server`'s in-flight calls in this process's status reports.
    pub(crate) fn report_server(&self, probe: ServerProbe) {
        self.servers.lock().push(probe);
    }

    /// Registers an instance now and remembers it for re-registration after reconnects.
    pub(crate) async fn register(&self, registration: Registration) -> Result<Instance, Error> {
        let client = self.registry()?;
        let instance = client
            .register(registration.clone())
            .await?
            .map_err(Error::from)?;
        self.registrations.lock().push(registration);
        Ok(instance)
    }

    /// Forgets a registration and removes it from the registry.
    pub(crate) async fn deregister(&self, service: &str, endpoint: &str) -> Result<(), Error> {
        self.forget(service, endpoint);
        let client = self.registry()?;
        client
            .deregister(service.to_owned(), endpoint.to_owned())
            .await?
            .map_err(Error::from)?;
        Ok(())
    }

    /// Stops re-registering (and heartbeating for) an instance.
    pub(crate) fn forget(&self, service: &str, endpoint: &str) {
        self.registrations
            .lock()
            .retain(|r| !(r.service == service && r.endpoint == endpoint));
    }

    /// Drops the registry connection (the handle was dropped): the registry ends this process's
    /// leases at once.
    pub(crate) fn close(&self) {
        let mut cur = self.current.lock();
        cur.registry = None;
        cur.token = None;
    }
}

fn keyset(reply: &LoginReply) -> KeySet {
    reply
        .keys
        .iter()
        .filter_map(|k| {
            let bytes: [u8; 32] = k.key.as_slice().try_into().ok()?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
            Some((k.kid.clone(), key))
        })
        .collect()
}

/// Fetches the registry's keys through the session (for tokens signed after a key rotation).
struct SessionKeys(std::sync::Weak<Session>);

impl KeyFetcher for SessionKeys {
    fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>> {
        Box::pin(async move {
            let session = self
                .0
                .upgrade()
                .ok_or_else(|| Error::connection_closed("the Stardust handle was dropped"))?;
            let client = session.registry()?;
            let keys = client.public_keys().await?;
            let reply = LoginReply {
                app: String::new(),
                token: String::new(),
                expires_at_ms: 0,
                keys,
                features: Vec::new(),
            };
            Ok(keyset(&reply))
        })
    }
}

/// The session's token, as credentials for connections to providers.
pub(crate) struct SessionCredentials(pub(crate) std::sync::Weak<Session>);

impl Credentials for SessionCredentials {
    fn token(&self) -> BoxFuture<'_, Result<(String, Option<SystemTime>), Error>> {
        Box::pin(async move {
            let session = self
                .0
                .upgrade()
                .ok_or_else(|| Error::connection_closed("the Stardust handle was dropped"))?;
            let (token, exp) = session.token()?;
            Ok((token, Some(exp)))
        })
    }

    fn proof_key(&self) -> Option<ProofKey> {
        self.0.upgrade().map(|session| session.proof_key.clone())
    }
}
