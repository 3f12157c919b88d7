//! The registry's API: a Stardust service like any other (the registry dogfoods the framework).
//!
//! The `stardust-registry` crate implements [`Registry`]; [`RegistryClient`] is what providers
//! and consumers use to reach it. `docs/PROTOCOL.md` describes these calls for implementers in
//! other languages. The types the calls carry are defined with the wire format (in the runtime's
//! bottom layer, so the client and the server can use them without depending on discovery) and
//! re-exported here.

pub use crate::protocol::registry::*;
use crate::traffic::{Rules, RulesEdit, ServiceRules};

/// The registry service.
///
/// A connection starts anonymous; `login` authenticates it as the app (the registry remembers
/// the identity for the connection), after which the other calls act on that app's behalf.
/// Registrations are leases: they live while the provider's heartbeats arrive within the TTL,
/// and end at once on `deregister`.
#[crate::service(name = "stardust.Registry", version = "1.0.0")]
pub trait Registry {
    /// Logs the connection in as `app` with its secret and returns an access token.
    async fn login(&self, app: String, secret: String) -> Result<LoginReply, RegistryError>;
    /// A fresh token for the app this connection is logged in as (before the old one expires).
    async fn renew(&self) -> Result<LoginReply, RegistryError>;
    /// The public keys tokens are currently signed and accepted with.
    #[stardust(idempotent)]
    async fn public_keys(&self) -> Vec<PublicKey>;
    /// Registers (or refreshes) an instance of a service this app provides.
    async fn register(&self, registration: Registration) -> Result<Instance, RegistryError>;
    /// Removes this app's instance of `service` at `endpoint`; `true` if it existed.
    async fn deregister(&self, service: String, endpoint: String) -> Result<bool, RegistryError>;
    /// Renews every lease of this connection and reports the provider's status.
    async fn heartbeat(&self, status: Status) -> Result<(), RegistryError>;
    /// The live instances of `service` matching `version_req` (semver, e.g. `^1.2`; `*` for any).
    #[stardust(idempotent)]
    async fn discover(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError>;
    /// Like `discover`, and pushes a [`DiscoveryEvent`] on [`DISCOVERY_TOPIC`] to this connection
    /// whenever the list changes.
    async fn subscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<Vec<Instance>, RegistryError>;
    /// Subscribes to `service`'s instances matching `version_req` with revisioned pushes (feature
    /// [`FEATURE_DELTA`]): answers with what the caller lacks given the revision it holds
    /// (`known`; `None` for a first subscription), then pushes [`DiscoveryPush`]es on
    /// [`DELTA_TOPIC`] to this connection as the list changes. Calling it again (a periodic
    /// check, or after a gap) keeps the one subscription.
    async fn watch(
        &self,
        service: String,
        version_req: String,
        known: Option<Revision>,
    ) -> Result<WatchReply, RegistryError>;
    /// Logs the connection in with a still-valid access token this registry issued, instead of
    /// the app's secret (feature [`FEATURE_RESUME`]): how sessions come back after a registry
    /// restart without queueing for the secret check. Refused (`Unauthorized`) when the token is
    /// expired, signed with a key the registry no longer has, or names an app no longer
    /// configured; the caller then logs in with its secret.
    async fn resume(&self, token: String) -> Result<LoginReply, RegistryError>;
    /// Stops the pushes of an earlier `subscribe` with the same `service` and `version_req`;
    /// `true` if there was one. (A registry older than this method answers `UnknownMethod`:
    /// its subscriptions end with the connection.)
    #[stardust(idempotent)]
    async fn unsubscribe(
        &self,
        service: String,
        version_req: String,
    ) -> Result<bool, RegistryError>;
    /// Follows `service`'s traffic rules (feature
    /// [`FEATURE_TRAFFIC`](crate::traffic::FEATURE_TRAFFIC)): answers with them unless the
    /// caller already holds them (`known`: the `revision` of the rules it holds), `None` then;
    /// afterwards pushes a [`TrafficPush`](crate::traffic::TrafficPush) on
    /// [`TRAFFIC_TOPIC`](crate::traffic::TRAFFIC_TOPIC) to this connection whenever they change.
    /// Calling it again (a periodic check) keeps the one subscription.
    async fn traffic(
        &self,
        service: String,
        known: Option<u64>,
    ) -> Result<Option<ServiceRules>, RegistryError>;
    /// Every service's traffic rules, with their revision (any logged-in app may read them).
    #[stardust(idempotent)]
    async fn rules(&self) -> Result<Rules, RegistryError>;
    /// Changes the traffic rules by one edit and returns their new revision. Only apps with
    /// the `admin` role may (`PermissionDenied` otherwise); with `if_revision`, only while the
    /// rules are still at that revision (`Invalid` otherwise, nothing changed), so two
    /// operators cannot overwrite each other's edits unseen.
    async fn edit_rules(
        &self,
        edit: RulesEdit,
        if_revision: Option<u64>,
    ) -> Result<u64, RegistryError>;
    /// The services with live instances that this app may call: versions, instance counts,
    /// health (operators' tools: `stardust-registry services`). A view at most a second old:
    /// callers within a second share one copy of the registry's figures.
    #[stardust(idempotent)]
    async fn services(&self) -> Result<Vec<ServiceSummary>, RegistryError>;
    /// What providers told the registry about `service` (methods, signatures as written in
    /// Rust, docs), per version with live instances or registered since the registry started
    /// (operators' tools: `stardust-registry describe`). `PermissionDenied` for a service this
    /// app may not call.
    #[stardust(idempotent)]
    async fn describe(&self, service: String) -> Result<Vec<VersionDescription>, RegistryError>;
}
