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
//! | `{prefix}/rules`                  | the traffic rules, all services, whole | none |
//! | `{prefix}/descriptions/{svc}/{ver}` | the first description of that version, and its app | none |
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
//!
//! **Rules.** The traffic rules are one key, rewritten whole by every edit in a transaction that
//! holds only while the key is still as this node last saw it (its revision, or absent): an edit
//! through another node first makes this one's fail as a conflict, never lost unseen. Like a
//! registration, an edit returns once the watch has delivered it, and every node takes the
//! rules from its watch (deleting the key by hand clears the rules).
//!
//! **Descriptions.** The description a provider registers with is written under its (service,
//! version) only if that key is absent (a transaction on its creation revision): the first one
//! stays, as on a single node, and a node whose write finds a different one there takes the
//! stored one as the first and shows its own provider's as a conflict. The keys have no lease:
//! a description outlives the instances that registered it, as the per-node record does (an
//! operator may delete them by hand; nodes keep what they recorded). Every node takes them from
//! its list and watch; values over 256 KiB, or malformed, are logged and ignored. A failed write
//! never fails the registration: the node keeps the description itself.
//!
//! **Files.** This one holds the [`Store`] entry points and the node's shared state ([`Inner`]);
//! `encoding` the key layout and value formats, `leases` the registrations' leases, `follow`
//! the list-and-watch that feeds the table, `publish` the node's apps and public keys, and
//! `connection` the connection options, TLS and credentials.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;
use stardust::discovery::api::{Instance, PublicKey, ServiceDescription};
use stardust::traffic::Rules;
use tokio::sync::watch;

use super::{BoxFuture, Store, StoreError, View, Written};
use crate::config::store::StoreConfig;
use crate::config::{AppConfig, EtcdAccess};
use crate::keys::KeyRing;

mod connection;
mod encoding;
mod follow;
mod leases;
mod publish;

use connection::{connect_options, plaintext_remote, with_hint};
use encoding::{
    Decoded, MAX_DESCRIPTION_VALUE, StoredApp, StoredDescription, StoredInstance, encode_rules,
};
use leases::keep_alive;

/// Bound on one etcd request (a healthy etcd answers in milliseconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on connecting at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the watch to deliver a write this node made.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The node's side of the store, shared by the store's handles and its background tasks (the
/// watch, the key lease). Its fields are private to this module; the files of the module, being
/// its children, use them directly (no accessors).
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
    /// The traffic rules last listed or watched.
    rules: Mutex<SeenRules>,
    /// The highest revision the node's table reflects.
    applied: watch::Sender<i64>,
    /// Why the watch is down (`None`: following etcd).
    watch_down: Mutex<Option<String>>,
    /// The node's table (set by `attach`): told which description etcd holds when this node's
    /// write of another one finds it there.
    view: Mutex<Option<Weak<dyn View>>>,
}

/// The traffic rules as this node last saw them in etcd.
#[derive(Default)]
struct SeenRules {
    rules: Rules,
    /// The rules key's revision (0: absent), which an edit expects to find unchanged.
    revision: i64,
}

#[derive(Default)]
struct Learnt {
    apps: HashMap<String, AppConfig>,
    dev_apps: HashMap<String, String>,
    /// Public keys by kid, with the node that published them.
    keys: HashMap<String, (PublicKey, String)>,
}

// Helpers every file of the module uses.

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

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

impl EtcdStore {
    /// Connects to etcd (bounded) and publishes the node's apps and public keys.
    pub(crate) async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let describe = StoreConfig::Etcd {
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
            rules: Mutex::new(SeenRules::default()),
            applied: watch::Sender::new(0),
            watch_down: Mutex::new(Some("not listed yet".into())),
            view: Mutex::new(None),
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

fn compare_seen(key: &str, seen: Option<i64>) -> Compare {
    match seen {
        // Absent: it was never created (or was deleted since).
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(r) => Compare::mod_revision(key, CompareOp::Equal, r),
    }
}

impl Inner {
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

impl Store for EtcdStore {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn attach(&self, view: Weak<dyn View>) -> BoxFuture<'_, Result<(), StoreError>> {
        *self.inner.view.lock() = Some(view.clone());
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
            roles: Vec::new(),
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

    fn rules(&self) -> Rules {
        self.inner.rules.lock().rules.clone()
    }

    fn put_rules(&self, rules: &Rules, seen: u64) -> BoxFuture<'_, Result<Written, StoreError>> {
        let key = self.inner.rules_key();
        let value = encode_rules(rules);
        Box::pin(async move {
            // The key as this node saw it when it held the rules at `seen`: an edit made on
            // older rules than the store reported meanwhile is a conflict at once.
            let at = {
                let held = self.inner.rules.lock();
                if held.rules.revision != seen {
                    return Err(StoreError::Conflict(None));
                }
                held.revision
            };
            let txn = Txn::new()
                .when([compare_seen(&key, (at != 0).then_some(at))])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            let mut client = self.inner.client.clone();
            let response = bounded("store the traffic rules", client.txn(txn)).await?;
            if response.succeeded() {
                Ok(Written::At(revision_of(response.header())))
            } else {
                Err(StoreError::Conflict(None))
            }
        })
    }

    fn put_description(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: &ServiceDescription,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.inner.description_key(service, version);
        let value = serde_json::to_vec(&StoredDescription {
            app: app.to_owned(),
            description: description.clone(),
        })
        .expect("serialisable");
        let (service, version) = (service.to_owned(), version.to_owned());
        Box::pin(async move {
            if value.len() > MAX_DESCRIPTION_VALUE {
                return Err(unavailable(
                    "store a service description",
                    format!(
                        "{} bytes, more than the {MAX_DESCRIPTION_VALUE} a description may take",
                        value.len()
                    ),
                ));
            }
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut client = self.inner.client.clone();
            let response = bounded("store a service description", client.txn(txn)).await?;
            if response.succeeded() {
                // The watch reports it like any other node's.
                return Ok(());
            }
            // One is stored already: it is the first, whatever this node's table shows yet (the
            // watch may not have delivered it), so the view learns it now; the caller's own
            // record then finds it and shows a different one as a conflict.
            let stored = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                    let name = format!("{service}/{version}");
                    match encoding::decode_description(&name, kv.value()) {
                        Ok(Decoded::Description {
                            app, description, ..
                        }) => Some((app, description)),
                        _ => None,
                    }
                }),
                _ => None,
            });
            let view = self.inner.view.lock().as_ref().and_then(Weak::upgrade);
            if let (Some((app, description)), Some(view)) = (stored, view) {
                view.description(&service, &version, &app, &description);
            }
            Ok(())
        })
    }
}
