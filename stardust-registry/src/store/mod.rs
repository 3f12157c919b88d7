//! Where registry nodes keep what they share: registrations, dev-mode apps, app definitions,
//! token-signing public keys, the traffic rules and the first service description of each
//! (service, version).
//!
//! Two stores sit behind one trait, [`Store`]:
//!
//! * [`memory`] (the default): one node, nothing shared. The node's own table of registrations
//!   *is* the truth, leases expire by the node's sweeper, dev apps live in this process, the
//!   traffic rules in a file next to the config (when there is one).
//! * `etcd` (cargo feature `etcd`): several nodes share one etcd. A registration is a key held
//!   by an etcd lease that the node keeps alive while the provider's connection and heartbeats
//!   live; every node watches the keys and rebuilds its table from what it sees, so a write
//!   through one node reaches the subscribers of all of them. App definitions and public keys
//!   are shared the same way, so a token from one node is accepted everywhere; so are service
//!   descriptions, so `describe` on any node shows what a provider registered through another.
//!
//! The registry service (`service.rs`) decides *what* may change (sessions, permissions,
//! validation) and keeps the per-connection parts (sessions, subscriptions); a store decides
//! *where* a change is kept and reports the shared table back through [`View`].
//!
//! Which store a node runs is a setting, [`StoreConfig`](crate::StoreConfig): it lives in
//! `config` (below this module, with the other settings), and the node opens the store it names.

// Without the `etcd` feature only the memory store exists, which never builds records or
// reports to a view.
#![cfg_attr(not(feature = "etcd"), allow(dead_code))]

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use stardust::discovery::api::{Instance, PublicKey, ServiceDescription};
use stardust::traffic::Rules;

use crate::config::AppConfig;

#[cfg(feature = "etcd")]
pub(crate) mod etcd;
pub(crate) mod memory;

/// A boxed future (the trait is used as `dyn Store`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a store took a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Not shared: the node applies the change to its own table now (memory store).
    Local,
    /// Stored at this revision: the node's table shows it once the store reported that far
    /// ([`Store::wait_applied`]).
    At(i64),
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// The entry changed since the caller looked (another node wrote it): here is what it is
    /// now (`None`: gone), with its revision.
    Conflict(Option<(Box<Instance>, i64)>),
    /// The store cannot be reached or refused the request; the message says which.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict(_) => f.write_str("changed concurrently by another registry node"),
            StoreError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// One registration as a shared store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) instance: Instance,
    /// The registry node that holds its lease.
    pub(crate) node: String,
    /// That node's session (connection) the lease belongs to.
    pub(crate) session: u64,
    /// The store's revision of this version of the entry.
    pub(crate) revision: i64,
}

/// The node's table of registrations, as a shared store keeps it up to date.
///
/// Calls come from the store's watch task, in the store's order; the node pushes what changed
/// to its subscribers.
pub(crate) trait View: Send + Sync + 'static {
    /// The whole set of registrations (after the watch (re)started).
    fn reset(&self, records: Vec<Record>);
    /// One registration was written (created or replaced).
    fn put(&self, record: Record);
    /// One registration is gone (deregistered, its session ended, or its lease expired).
    fn delete(&self, service: &str, endpoint: &str);
    /// The traffic rules are now `rules` (written through some node, or found when the watch
    /// (re)started).
    fn rules(&self, rules: Rules);
    /// The store holds `description` of `service` `version`, registered by `app` (through some
    /// node): the first one stored for that version, which the node records as it records its
    /// own providers' (first wins, a different one is a conflict).
    fn description(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: &ServiceDescription,
    );
}

/// What registry nodes share: see the [module docs](self).
///
/// Writes of registrations name the revision the caller last saw (`None`: none), so two nodes
/// racing on one entry cannot overwrite each other unseen: the loser gets
/// [`StoreError::Conflict`] with the entry as it is now.
pub(crate) trait Store: Send + Sync + 'static {
    /// For logs: `memory`, `etcd://...`.
    fn describe(&self) -> String;

    /// Whether several nodes share this store (registrations then reach the node's table through
    /// [`View`], never directly).
    fn is_shared(&self) -> bool;

    /// Starts reporting the shared table to `view` and returns once it has been reported in
    /// full once. The memory store has nothing to report.
    fn attach(&self, view: std::sync::Weak<dyn View>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores `instance`, owned by the node's `session`; `seen` is the revision of the entry the
    /// caller saw (`None`: it saw none).
    fn put(
        &self,
        session: u64,
        instance: &Instance,
        seen: Option<i64>,
    ) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Removes the entry of `service` at `endpoint` if it is still at revision `seen`.
    fn delete(
        &self,
        service: &str,
        endpoint: &str,
        seen: i64,
    ) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Keeps `session`'s registrations alive (a heartbeat arrived). `Ok(false)`: they already
    /// expired in the store, the provider must register again.
    fn renew(&self, session: u64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The node's `session` ended: its registrations go now. Does not wait.
    fn release(&self, session: u64);

    /// Waits (bounded) until the node's table shows revision `revision`.
    fn wait_applied(&self, revision: i64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The secret hash of a dev-mode app created by an earlier login (on any node).
    fn dev_app(&self, name: &str) -> Option<String>;

    /// Creates dev-mode app `name` with `hash`, unless someone created it first: then returns
    /// theirs.
    fn create_dev_app(
        &self,
        name: &str,
        hash: String,
    ) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// An app defined by another node's config (this node's own config comes first).
    fn shared_app(&self, name: &str) -> Option<AppConfig>;

    /// Public keys other nodes sign tokens with (this node's own come from its key ring).
    fn shared_keys(&self) -> Vec<PublicKey>;

    /// The traffic rules the store holds now (the node's starting point; later changes come
    /// through [`View::rules`] or the node's own writes).
    fn rules(&self) -> Rules;

    /// Stores `rules` if the stored ones are still at revision `seen` (else
    /// [`StoreError::Conflict`]`(None)`: another node changed them first).
    fn put_rules(&self, rules: &Rules, seen: u64) -> BoxFuture<'_, Result<Written, StoreError>>;

    /// Shares `app`'s `description` of `service` `version` with the other nodes, unless the
    /// store holds one for that version already (the first stays; this node's [`View`] is told
    /// which it is). Not shared by the memory store (`Ok` at once); a failure here is only
    /// logged by the caller, never fails the registration.
    fn put_description(
        &self,
        service: &str,
        version: &str,
        app: &str,
        description: &ServiceDescription,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// `Err(why)` while the node cannot follow the store (it then serves the last table it
    /// had, and refuses writes): for health checks.
    fn health(&self) -> Result<(), String>;
}
