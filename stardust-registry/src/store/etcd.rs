//! The etcd store: several registry nodes sharing one view (cargo feature `etcd`).
//!
//! Keys under the configured prefix (JSON values, readable with `etcdctl get --prefix`):
//!
//! | key                               | value                                  | lease |
//! |-----------------------------------|----------------------------------------|-------|
//! | `{prefix}/instances/{svc}/{ep}`   | the instance, its node and session     | the provider's session |
//! | `{prefix}/apps/{name}`            | an app from some node's config         | none |
//! | `{prefix}/dev-apps/{name}`        | a dev-mode app's secret hash           | none |
//! | `{prefix}/keys/{kid}`             | a node's token-signing public key      | the node's key lease |
//!
//! **Registrations.** The first registration of a session grants an etcd lease with the
//! registry's lease TTL; every heartbeat of that session keeps it alive; the session's end
//! revokes it. A node that dies simply stops keeping its leases alive, so its providers'
//! entries go when their TTL runs out, unless the providers registered again through another
//! node first (a put attaches the key to the new node's lease, so the old lease's expiry no
//! longer touches it).
//!
//! **The table.** Every node lists the prefix once, then watches it from the next revision and
//! reports each change to its [`View`], which pushes to the node's own subscribers. A node's own
//! writes take the same road: a registration returns once the watch has delivered it, so a
//! `discover` right after `register` on the same node sees it. If the watch breaks (etcd
//! restarting, compaction), the node lists again and reports the whole table anew; meanwhile it
//! keeps serving the last table it had.
//!
//! **Keys.** Each node publishes the public keys of its key ring under a lease of its own whose
//! TTL outlives the tokens it signed (`token_ttl` plus a few refresh periods), so a token
//! issued by a node that died stays verifiable everywhere until it expires.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use stardust::discovery::api::{Instance, PublicKey};
use tokio::sync::watch;

use super::{BoxFuture, Record, Store, StoreError, View, Written};
use crate::config::{AppConfig, EtcdAccess};
use crate::keys::KeyRing;

/// Bound on one etcd request (a healthy etcd answers in milliseconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on connecting at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the watch to deliver a write this node made.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the node renews its key lease and republishes rotated keys.
const KEY_REFRESH: Duration = Duration::from_secs(5);

/// What a node needs to join the shared store.
pub(crate) struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    /// This node, as other nodes see it in the entries it owns (address and a random tag).
    pub(crate) node: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) keys: KeyRing,
    /// The node's own config apps, published for nodes that do not define them.
    pub(crate) apps: BTreeMap<String, AppConfig>,
    /// Stops the watch and the key lease's keep-alive (the node shut down or was dropped).
    pub(crate) stopping: watch::Receiver<bool>,
    /// TLS files and credentials.
    pub(crate) access: EtcdAccess,
}

/// The etcd store; cheap to share (`Arc` inside).
pub(crate) struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `{prefix}/`.
    root: String,
    describe: String,
    node: String,
    lease_ttl_secs: i64,
    keys: KeyRing,
    apps: BTreeMap<String, AppConfig>,
    stopping: watch::Receiver<bool>,
    /// Each session's etcd lease (granted with its first registration). The async lock keeps
    /// two registrations of one session from granting two leases.
    sessions: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<i64>>>>>,
    /// What the watch learnt besides registrations.
    learnt: Mutex<Learnt>,
    /// The highest revision the node's table reflects.
    applied: watch::Sender<i64>,
    /// Why the watch is down (`None`: following etcd).
    watch_down: Mutex<Option<String>>,
}

#[derive(Default)]
struct Learnt {
    apps: HashMap<String, AppConfig>,
    dev_apps: HashMap<String, String>,
    /// Public keys by kid, with the node that published them.
    keys: HashMap<String, (PublicKey, String)>,
}

/// A registration's value.
#[derive(Serialize, Deserialize)]
struct StoredInstance {
    instance: Instance,
    node: String,
    session: u64,
}

/// An app definition's value (the same fields as a config file's `[apps.NAME]`).
#[derive(Serialize, Deserialize)]
struct StoredApp {
    secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provide: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consume: Option<Vec<String>>,
}

/// A public key's value.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// URL-safe base64 of the 32-byte Ed25519 public key.
    key: String,
    node: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("the registry's etcd store failed to {what}: {e}"))
}

/// Runs one etcd request with [`REQUEST_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(
            what,
            format!("no answer within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

/// Renews lease `id` once: `Ok(false)` if it has expired (or was revoked).
///
/// Opening etcd-client's keep-alive stream sends one renewal and reads its answer, refusing a
/// lease whose TTL came back as 0; the stream is then dropped (one short-lived stream per
/// heartbeat keeps no per-session task alive).
async fn keep_alive(client: &Client, id: i64) -> Result<bool, StoreError> {
    let mut client = client.clone();
    match tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(id)).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => Ok(false),
        Ok(Err(e)) => Err(unavailable("renew a lease", e)),
        Err(_) => Err(unavailable(
            "renew a lease",
            format!("no answer within {REQUEST_TIMEOUT:?}"),
        )),
    }
}

/// The connection options: timeouts, HTTP/2 keep-alive, TLS and credentials.
fn connect_options(
    endpoints: &[String],
    access: &EtcdAccess,
) -> Result<ConnectOptions, StoreError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot read [etcd] {what} {}: {e}", path.display()))
        })
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        // HTTP/2 pings notice a dead etcd connection on an idle node.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    if endpoints.iter().any(|e| e.starts_with("https://")) {
        let ca_file = access.ca_file.as_deref().ok_or_else(|| {
            StoreError::Unavailable("an etcds:// store needs [etcd] ca_file".into())
        })?;
        let mut tls =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca_file", ca_file)?));
        if let (Some(cert), Some(key)) = (&access.cert_file, &access.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    if let (Some(user), Some(file)) = (&access.user, &access.password_file) {
        let text = String::from_utf8(read("password_file", file)?).map_err(|_| {
            StoreError::Unavailable(format!(
                "[etcd] password_file {} is not UTF-8 text",
                file.display()
            ))
        })?;
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        // etcd's auth tokens expire (5 min by default): fetch a new one when they do.
        options = options
            .with_user(user.clone(), password.to_owned())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// `e` with a hint at the setting most likely missing, for errors that do not name it.
fn with_hint(e: StoreError, endpoints: &[String], access: &EtcdAccess) -> StoreError {
    let StoreError::Unavailable(message) = e else {
        return e;
    };
    let tls = endpoints.iter().any(|e| e.starts_with("https://"));
    let hint = if message.contains("user name is empty") {
        Some("etcd has authentication on: set [etcd] user and password_file")
    } else if tls && access.cert_file.is_none() {
        Some(
            "if etcd requires client certificates (--client-cert-auth), set [etcd] cert_file and key_file",
        )
    } else if !tls && message.contains("connection") {
        Some("if etcd speaks TLS, write the store as etcds://")
    } else {
        None
    };
    StoreError::Unavailable(match hint {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    })
}

/// The first host of a plaintext endpoint that is not on loopback, if any.
fn plaintext_remote(endpoints: &[String]) -> Option<String> {
    endpoints.iter().find_map(|e| {
        let host_port = e.strip_prefix("http://")?;
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| host.to_owned())
    })
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

impl EtcdStore {
    /// Connects to etcd (bounded) and publishes the node's apps and public keys.
    pub(crate) async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let describe = super::StoreConfig::Etcd {
            endpoints: options.endpoints.clone(),
            prefix: options.prefix.clone(),
        }
        .to_string();
        let connect_options = connect_options(&options.endpoints, &options.access)?;
        if let Some(host) = plaintext_remote(&options.endpoints) {
            tracing::warn!(
                store = %describe,
                %host,
                "etcd is reached in plaintext over the network: registrations, app secret hashes \
                 and public keys cross it unencrypted and unauthenticated; use etcds:// with \
                 [etcd] ca_file (and a client certificate or user)"
            );
        }
        let connect = Client::connect(&options.endpoints, Some(connect_options));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unavailable(&format!("connect to {describe}"), e)),
            Err(_) => {
                return Err(unavailable(
                    &format!("connect to {describe}"),
                    "no answer in time",
                ));
            }
        };
        let inner = Arc::new(Inner {
            client,
            root: format!("{}/", options.prefix),
            describe,
            node: options.node,
            // etcd counts whole seconds (and raises very short TTLs to its own minimum).
            lease_ttl_secs: options.lease_ttl.as_secs_f64().ceil().max(1.0) as i64,
            keys: options.keys,
            apps: options.apps,
            stopping: options.stopping,
            sessions: Mutex::new(HashMap::new()),
            learnt: Mutex::new(Learnt::default()),
            applied: watch::Sender::new(0),
            watch_down: Mutex::new(Some("not listed yet".into())),
        });
        // A first request proves etcd answers (the channel connects lazily).
        let mut client = inner.client.clone();
        bounded(
            &format!("reach {}", inner.describe),
            client.get(
                inner.root.clone(),
                Some(GetOptions::new().with_count_only()),
            ),
        )
        .await
        .map_err(|e| with_hint(e, &options.endpoints, &options.access))?;
        inner.publish_apps().await?;
        Ok(EtcdStore { inner })
    }
}

impl Inner {
    fn instance_key(&self, service: &str, endpoint: &str) -> String {
        format!("{}instances/{service}/{endpoint}", self.root)
    }

    /// Publishes this node's config apps (without a lease: definitions outlive nodes; a node's
    /// own config always wins over what it reads back).
    async fn publish_apps(&self) -> Result<(), StoreError> {
        for (name, app) in &self.apps {
            let value = serde_json::to_vec(&StoredApp {
                secret_hash: app.secret_hash.clone(),
                provide: app.provide.clone(),
                consume: app.consume.clone(),
            })
            .expect("serialisable");
            let mut client = self.client.clone();
            bounded(
                "publish an app definition",
                client.put(format!("{}apps/{name}", self.root), value, None),
            )
            .await?;
        }
        Ok(())
    }

    /// The session's lease, granted now if it has none.
    async fn session_lease(&self, session: u64) -> Result<i64, StoreError> {
        let slot = self.sessions.lock().entry(session).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let mut client = self.client.clone();
        let granted = bounded(
            "grant a lease",
            client.lease_grant(self.lease_ttl_secs, None),
        )
        .await?;
        // (A session that ended meanwhile is released again by the registry once the write
        // returns, which revokes this lease.)
        *slot = Some(granted.id());
        Ok(granted.id())
    }

    /// Forgets `session`'s lease if it still is `id` (it expired in etcd).
    fn forget_lease(&self, session: u64, id: i64) {
        let slot = self.sessions.lock().get(&session).cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && *slot == Some(id)
        {
            *slot = None;
        }
    }

    /// Revokes lease `id` in the background (its keys go at once).
    fn revoke(&self, id: i64) {
        let mut client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = bounded("revoke a lease", client.lease_revoke(id)).await {
                // It expires on its own within the lease TTL.
                tracing::debug!(lease = id, error = %e, "lease not revoked");
            }
        });
    }

    /// Decodes one key of the prefix into the table (registrations) or what was learnt.
    fn decode(&self, kv: &KeyValue) -> Option<Decoded> {
        let (key, kind, name) = split_key(&self.root, kv.key())?;
        let parsed = match kind {
            "instances" => serde_json::from_slice::<StoredInstance>(kv.value())
                .map(|s| {
                    Decoded::Instance(Record {
                        instance: s.instance,
                        node: s.node,
                        session: s.session,
                        revision: kv.mod_revision(),
                    })
                })
                .map_err(|e| e.to_string()),
            "apps" => serde_json::from_slice::<StoredApp>(kv.value())
                .map(|a| {
                    Decoded::App(
                        name.to_owned(),
                        AppConfig {
                            secret_hash: a.secret_hash,
                            provide: a.provide,
                            consume: a.consume,
                        },
                    )
                })
                .map_err(|e| e.to_string()),
            "dev-apps" => serde_json::from_slice::<StoredApp>(kv.value())
                .map(|a| Decoded::DevApp(name.to_owned(), a.secret_hash))
                .map_err(|e| e.to_string()),
            "keys" => serde_json::from_slice::<StoredKey>(kv.value())
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    let bytes = URL_SAFE_NO_PAD.decode(&k.key).map_err(|e| e.to_string())?;
                    Ok(Decoded::Key(
                        PublicKey {
                            kid: name.to_owned(),
                            key: ByteBuf::from(bytes),
                        },
                        k.node,
                    ))
                }),
            _ => return None,
        };
        match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring a malformed entry in the registry's etcd prefix");
                None
            }
        }
    }

    /// Which registration or learnt entry a deleted key was.
    fn deleted(&self, key: &[u8]) -> Option<Deleted> {
        deleted(&self.root, key)
    }

    /// Lists the prefix into `view` and what was learnt; returns the revision listed at.
    async fn list(&self, view: &dyn View) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let listed = bounded(
            "list the registry's keys",
            client.get(self.root.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = revision_of(listed.header());
        let mut records = Vec::new();
        let mut learnt = Learnt::default();
        for kv in listed.kvs() {
            match self.decode(kv) {
                Some(Decoded::Instance(r)) => records.push(r),
                Some(Decoded::App(name, app)) => drop(learnt.apps.insert(name, app)),
                Some(Decoded::DevApp(name, hash)) => drop(learnt.dev_apps.insert(name, hash)),
                Some(Decoded::Key(key, node)) => {
                    drop(learnt.keys.insert(key.kid.clone(), (key, node)))
                }
                None => {}
            }
        }
        *self.learnt.lock() = learnt;
        view.reset(records);
        *self.watch_down.lock() = None;
        self.applied.send_modify(|a| *a = (*a).max(revision));
        Ok(revision)
    }

    /// Lists, then follows the watch until it breaks or the node stops (`Ok`).
    async fn follow(
        &self,
        view: &Weak<dyn View>,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let revision = {
            let Some(v) = view.upgrade() else {
                return Ok(());
            };
            self.list(&*v).await?
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut client = self.client.clone();
        let mut stream = bounded(
            "watch the registry's keys",
            client.watch(
                self.root.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        let mut stopping = self.stopping.clone();
        loop {
            let message = tokio::select! {
                _ = stopping.wait_for(|s| *s) => return Ok(()),
                m = stream.message() => m,
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => return Err(unavailable("watch", "the watch ended")),
                Err(e) => return Err(unavailable("watch", e)),
            };
            if response.canceled() {
                return Err(unavailable(
                    "watch",
                    format!(
                        "etcd cancelled the watch ({}; compacted at revision {})",
                        response.cancel_reason(),
                        response.compact_revision()
                    ),
                ));
            }
            let Some(view) = view.upgrade() else {
                return Ok(());
            };
            let mut latest = 0;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                latest = latest.max(kv.mod_revision());
                match event.event_type() {
                    EventType::Put => match self.decode(kv) {
                        Some(Decoded::Instance(r)) => view.put(r),
                        Some(Decoded::App(name, app)) => {
                            self.learnt.lock().apps.insert(name, app);
                        }
                        Some(Decoded::DevApp(name, hash)) => {
                            self.learnt.lock().dev_apps.insert(name, hash);
                        }
                        Some(Decoded::Key(key, node)) => {
                            self.learnt.lock().keys.insert(key.kid.clone(), (key, node));
                        }
                        None => {}
                    },
                    EventType::Delete => match self.deleted(kv.key()) {
                        Some(Deleted::Instance(service, endpoint)) => {
                            view.delete(&service, &endpoint)
                        }
                        Some(Deleted::App(name)) => drop(self.learnt.lock().apps.remove(&name)),
                        Some(Deleted::DevApp(name)) => {
                            drop(self.learnt.lock().dev_apps.remove(&name))
                        }
                        Some(Deleted::Key(kid)) => drop(self.learnt.lock().keys.remove(&kid)),
                        None => {}
                    },
                }
            }
            if latest > 0 {
                self.applied.send_modify(|a| *a = (*a).max(latest));
            }
        }
    }

    /// The watch's life: follow, and on any break list and follow again, with backoff.
    async fn run_watch(
        self: Arc<Self>,
        view: Weak<dyn View>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut backoff = Duration::from_millis(100);
        let mut stopping = self.stopping.clone();
        loop {
            match self.follow(&view, &mut ready).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(store = %self.describe, error = %e, retry_in_ms = backoff.as_millis() as u64, "lost the etcd watch; serving the last known registrations until it is back");
                    *self.watch_down.lock() = Some(e.to_string());
                }
            }
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The key lease's TTL: it outlives every token this node signed, by a few refresh periods.
    fn key_lease_ttl(&self) -> i64 {
        (self.keys.token_ttl() + KEY_REFRESH * 3)
            .as_secs_f64()
            .ceil() as i64
    }

    /// Keeps this node's public keys published (the first round was done by `attach`).
    async fn run_key_lease(
        self: Arc<Self>,
        mut lease: Option<i64>,
        mut published: HashSet<String>,
    ) {
        let ttl = self.key_lease_ttl();
        let mut stopping = self.stopping.clone();
        let mut tick = tokio::time::interval(KEY_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // immediate: the first round is done
        loop {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.refresh_keys(ttl, &mut lease, &mut published).await {
                tracing::warn!(store = %self.describe, error = %e, "could not publish the signing keys (tokens from this node may be refused by providers logged in elsewhere)");
            }
        }
    }

    async fn refresh_keys(
        &self,
        ttl: i64,
        lease: &mut Option<i64>,
        published: &mut HashSet<String>,
    ) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        if let Some(id) = *lease
            && !keep_alive(&client, id).await?
        {
            *lease = None;
        }
        let id = match *lease {
            Some(id) => id,
            None => {
                let id = bounded("grant the key lease", client.lease_grant(ttl, None))
                    .await?
                    .id();
                *lease = Some(id);
                published.clear();
                id
            }
        };
        let own = self.keys.public_keys();
        for key in &own {
            if published.contains(&key.kid) {
                continue;
            }
            let value = serde_json::to_vec(&StoredKey {
                key: URL_SAFE_NO_PAD.encode(&key.key),
                node: self.node.clone(),
            })
            .expect("serialisable");
            bounded(
                "publish a public key",
                client.put(
                    format!("{}keys/{}", self.root, key.kid),
                    value,
                    Some(PutOptions::new().with_lease(id)),
                ),
            )
            .await?;
            published.insert(key.kid.clone());
        }
        // Keys the ring pruned (their tokens have all expired).
        let gone: Vec<String> = published
            .iter()
            .filter(|kid| !own.iter().any(|k| &k.kid == *kid))
            .cloned()
            .collect();
        for kid in gone {
            bounded(
                "withdraw a public key",
                client.delete(format!("{}keys/{kid}", self.root), None),
            )
            .await?;
            published.remove(&kid);
        }
        Ok(())
    }

    /// A conflicting transaction's `get`: the entry as it is now.
    fn current(&self, response: &etcd_client::TxnResponse) -> Option<(Box<Instance>, i64)> {
        response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| match self.decode(kv) {
                Some(Decoded::Instance(r)) => Some((Box::new(r.instance), r.revision)),
                _ => None,
            }),
            _ => None,
        })
    }
}

/// A key under `root` as `(key, kind, name)`: `kind` is `instances`, `apps`, `dev-apps` or
/// `keys`; `name` the rest.
fn split_key<'a>(root: &str, key: &'a [u8]) -> Option<(&'a str, &'a str, &'a str)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(root)?;
    let (kind, name) = rest.split_once('/')?;
    Some((key, kind, name))
}

/// Which registration or learnt entry a deleted key under `root` was (a delete event carries
/// the key only).
fn deleted(root: &str, key: &[u8]) -> Option<Deleted> {
    let (_, kind, name) = split_key(root, key)?;
    Some(match kind {
        "instances" => {
            // Endpoints are `host:port` (no `/`); service names may hold `/`.
            let (service, endpoint) = name.rsplit_once('/')?;
            Deleted::Instance(service.to_owned(), endpoint.to_owned())
        }
        "apps" => Deleted::App(name.to_owned()),
        "dev-apps" => Deleted::DevApp(name.to_owned()),
        "keys" => Deleted::Key(name.to_owned()),
        _ => return None,
    })
}

enum Decoded {
    Instance(Record),
    App(String, AppConfig),
    DevApp(String, String),
    Key(PublicKey, String),
}

#[derive(Debug, PartialEq, Eq)]
enum Deleted {
    Instance(String, String),
    App(String),
    DevApp(String),
    Key(String),
}

fn compare_seen(key: &str, seen: Option<i64>) -> Compare {
    match seen {
        // Absent: it was never created (or was deleted since).
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn attach(&self, view: Weak<dyn View>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(self.inner.clone().run_watch(view, ready_tx));
            // Publish the keys once before serving, then keep them fresh.
            let inner = self.inner.clone();
            let ttl = inner.key_lease_ttl();
            let (mut lease, mut published) = (None, HashSet::new());
            inner.refresh_keys(ttl, &mut lease, &mut published).await?;
            tokio::spawn(inner.run_key_lease(lease, published));
            match tokio::time::timeout(APPLY_TIMEOUT, ready_rx).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(unavailable(
                    &format!("list {}", self.inner.describe),
                    "no answer in time",
                )),
            }
        })
    }

    fn put(
        &self,
        session: u64,
        instance: &Instance,
        seen: Option<i64>,
    ) -> BoxFuture<'_, Result<Written, StoreError>> {
        let inner = self.inner.clone();
        let key = inner.instance_key(&instance.service, &instance.endpoint);
        let value = serde_json::to_vec(&StoredInstance {
            instance: instance.clone(),
            node: inner.node.clone(),
            session,
        })
        .expect("serialisable");
        Box::pin(async move {
            // A lease can expire between the grant and the put (no heartbeat for a TTL): grant
            // a fresh one once.
            for attempt in 0..2 {
                let lease = inner.session_lease(session).await?;
                let txn = Txn::new()
                    .when([compare_seen(&key, seen)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let mut client = inner.client.clone();
                match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
                    Ok(Ok(response)) if response.succeeded() => {
                        return Ok(Written::At(revision_of(response.header())));
                    }
                    Ok(Ok(response)) => return Err(StoreError::Conflict(inner.current(&response))),
                    Ok(Err(e)) if attempt == 0 && e.to_string().contains("lease not found") => {
                        inner.forget_lease(session, lease);
                    }
                    Ok(Err(e)) => return Err(unavailable("store a registration", e)),
                    Err(_) => {
                        return Err(unavailable(
                            "store a registration",
                            format!("no answer within {REQUEST_TIMEOUT:?}"),
                        ));
                    }
                }
            }
            Err(unavailable(
                "store a registration",
                "its lease kept expiring",
            ))
        })
    }

    fn delete(
        &self,
        service: &str,
        endpoint: &str,
        seen: i64,
    ) -> BoxFuture<'_, Result<Written, StoreError>> {
        let inner = self.inner.clone();
        let key = inner.instance_key(service, endpoint);
        Box::pin(async move {
            let txn = Txn::new()
                .when([compare_seen(&key, Some(seen))])
                .and_then([TxnOp::delete(key.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut client = inner.client.clone();
            let response = bounded("remove a registration", client.txn(txn)).await?;
            if response.succeeded() {
                Ok(Written::At(revision_of(response.header())))
            } else {
                Err(StoreError::Conflict(inner.current(&response)))
            }
        })
    }

    fn renew(&self, session: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let slot = self.inner.sessions.lock().get(&session).cloned();
            let Some(slot) = slot else {
                return Ok(true); // nothing registered: nothing to keep alive
            };
            let Some(id) = *slot.lock().await else {
                return Ok(true);
            };
            let alive = keep_alive(&self.inner.client, id).await?;
            if !alive {
                self.inner.forget_lease(session, id);
            }
            Ok(alive)
        })
    }

    fn release(&self, session: u64) {
        let Some(slot) = self.inner.sessions.lock().remove(&session) else {
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // Waits for a grant under way (which then sees the session gone and revokes).
            if let Some(id) = *slot.lock().await {
                inner.revoke(id);
            }
        });
    }

    fn wait_applied(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut applied = self.inner.applied.subscribe();
            match tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|a| *a >= revision)).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(unavailable(
                    "show a write in this node's table",
                    format!("the etcd watch did not deliver revision {revision} in time"),
                )),
            }
        })
    }

    fn dev_app(&self, name: &str) -> Option<String> {
        self.inner.learnt.lock().dev_apps.get(name).cloned()
    }

    fn create_dev_app(
        &self,
        name: &str,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let key = format!("{}dev-apps/{name}", self.inner.root);
        let value = serde_json::to_vec(&StoredApp {
            secret_hash: hash.clone(),
            provide: None,
            consume: None,
        })
        .expect("serialisable");
        let name = name.to_owned();
        Box::pin(async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut client = self.inner.client.clone();
            let response = bounded("create a dev-mode app", client.txn(txn)).await?;
            if response.succeeded() {
                // Known here at once (the watch will say the same).
                self.inner.learnt.lock().dev_apps.insert(name, hash);
                return Ok(None);
            }
            let theirs = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .and_then(|kv| serde_json::from_slice::<StoredApp>(kv.value()).ok())
                    .map(|a| a.secret_hash),
                _ => None,
            });
            match theirs {
                Some(h) => Ok(Some(h)),
                None => Err(unavailable(
                    "create a dev-mode app",
                    "it was created and removed concurrently",
                )),
            }
        })
    }

    fn shared_app(&self, name: &str) -> Option<AppConfig> {
        self.inner.learnt.lock().apps.get(name).cloned()
    }

    fn health(&self) -> Result<(), String> {
        match &*self.inner.watch_down.lock() {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    fn shared_keys(&self) -> Vec<PublicKey> {
        self.inner
            .learnt
            .lock()
            .keys
            .values()
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_what_they_hold() {
        let root = "team/registry/";
        assert_eq!(
            deleted(
                root,
                b"team/registry/instances/calc.Calculator/10.0.0.1:9000"
            ),
            Some(Deleted::Instance(
                "calc.Calculator".into(),
                "10.0.0.1:9000".into()
            ))
        );
        // A service name with `/` in it: the endpoint never has one.
        assert_eq!(
            deleted(root, b"team/registry/instances/a/b/[::1]:7"),
            Some(Deleted::Instance("a/b".into(), "[::1]:7".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/apps/web"),
            Some(Deleted::App("web".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/dev-apps/web"),
            Some(Deleted::DevApp("web".into()))
        );
        assert_eq!(
            deleted(root, b"team/registry/keys/kid1"),
            Some(Deleted::Key("kid1".into()))
        );
        // Another registry's prefix, an unknown kind, or a key that is not UTF-8: not ours.
        assert_eq!(deleted(root, b"team/other/apps/web"), None);
        assert_eq!(deleted(root, b"team/registry/leader"), None);
        assert_eq!(deleted(root, b"team/registry/queues/x"), None);
        assert_eq!(deleted(root, b"team/registry/apps/\xff"), None);
    }

    #[test]
    fn plaintext_is_only_quiet_on_loopback() {
        let eps = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(
            plaintext_remote(&eps(&[
                "http://127.0.0.1:2379",
                "http://localhost:2379",
                "http://[::1]:2379"
            ])),
            None
        );
        assert_eq!(plaintext_remote(&eps(&["https://10.0.0.1:2379"])), None);
        assert_eq!(
            plaintext_remote(&eps(&["http://127.0.0.1:2379", "http://10.0.0.2:2379"])).as_deref(),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn values_are_readable_json() {
        let stored = StoredInstance {
            instance: Instance {
                app: "calc".into(),
                service: "calc.Calculator".into(),
                version: "1.2.0".into(),
                endpoint: "127.0.0.1:9000".into(),
                weight: 100,
                tags: Default::default(),
                tls: false,
            },
            node: "node-1".into(),
            session: 7,
        };
        let json = serde_json::to_string(&stored).unwrap();
        assert!(json.contains("\"endpoint\":\"127.0.0.1:9000\""), "{json}");
        let back: StoredInstance = serde_json::from_str(&json).unwrap();
        assert_eq!(back.instance, stored.instance);
        assert_eq!((back.node.as_str(), back.session), ("node-1", 7));
        // App definitions are the config file's fields; absent lists stay absent.
        let app: StoredApp = serde_json::from_str(r#"{"secret_hash":"h"}"#).unwrap();
        assert_eq!((app.provide, app.consume), (None, None));
    }
}
