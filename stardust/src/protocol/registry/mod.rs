//! The registry API's wire types: what `stardust.Registry` calls take and return, the status
//! reports providers send with their heartbeats, and the discovery pushes.
//!
//! They live here, beside the frames, because both sides of the runtime use them (the server
//! records figures in the report types, the client's pool too) and the registry crate decodes
//! them: nothing here depends on the client, the server or discovery. The `Registry` service
//! itself, whose generated client and server need those layers, is
//! [`stardust::discovery::api`](crate::discovery::api), which re-exports these types: that is
//! the path to use them by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

mod delta;
mod describe;

pub use delta::{
    DELTA_TOPIC, DiscoveryDelta, DiscoveryPush, FEATURE_DELTA, FEATURE_RESUME, InstanceList,
    Revision, WatchReply,
};
pub use describe::{
    ArgDescription, MethodDescription, ServiceDescription, ServiceSummary, VersionDescription,
    VersionSummary,
};

/// Notification topic on which the registry pushes [`DiscoveryEvent`]s to subscribers.
pub const DISCOVERY_TOPIC: &str = "stardust.discovery";

/// A successful login: the token to present to providers, and the keys that verify tokens.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginReply {
    /// The application logged in.
    pub app: String,
    /// Signed access token (`sd1.…`).
    pub token: String,
    /// Token expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// The registry's current public keys.
    pub keys: Vec<PublicKey>,
    /// Optional registry capabilities ([`FEATURE_DELTA`], [`FEATURE_RESUME`], ...); absent
    /// from an older registry.
    #[serde(default)]
    pub features: Vec<String>,
}

impl std::fmt::Debug for LoginReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("LoginReply")
            .field("app", &self.app)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("keys", &self.keys)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key the registry signs tokens with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Key id, as found in tokens' `kid` claim.
    pub kid: String,
    /// The 32-byte Ed25519 public key.
    pub key: ByteBuf,
}

/// A provider's registration of one service it hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Service name, e.g. `calc.Calculator`.
    pub service: String,
    /// Service version (semver).
    pub version: String,
    /// Address consumers should dial, `host:port`.
    pub endpoint: String,
    /// Relative share of traffic (default 100).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The provider speaks TLS at `endpoint` (consumers connect with TLS); plaintext otherwise.
    #[serde(default)]
    pub tls: bool,
    /// The service's methods and docs, for operators' tools (absent from older providers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<ServiceDescription>,
}

fn default_weight() -> u32 {
    100
}

/// One live provider instance of a service, as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The providing application.
    pub app: String,
    /// Service name.
    pub service: String,
    /// Service version.
    pub version: String,
    /// Address to dial.
    pub endpoint: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// Free-form tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The provider speaks TLS at `endpoint`: connect with TLS.
    #[serde(default)]
    pub tls: bool,
}

/// A provider's periodic status report; also its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Calls being handled right now.
    #[serde(default)]
    pub in_flight: u64,
    /// Milliseconds since the provider started.
    #[serde(default)]
    pub uptime_ms: u64,
    /// Software version of the provider.
    #[serde(default)]
    pub version: String,
    /// How long the window the figures below cover was: milliseconds since the previous report
    /// (since start for the first).
    #[serde(default)]
    pub window_ms: u64,
    /// CPU time (user + system) the process used during the window, in milliseconds; 0 where
    /// the platform does not tell cheaply.
    #[serde(default)]
    pub cpu_ms: u64,
    /// The process's resident memory at report time, in bytes; 0 where unknown.
    #[serde(default)]
    pub rss_bytes: u64,
    /// Unbound (bearer) access tokens this process's providers accepted since it started (only
    /// with `require_proof(false)`): the clients a fleet must still upgrade before proof of
    /// possession can be required everywhere.
    #[serde(default)]
    pub unbound_tokens_accepted: u64,
    /// What this process served during the window, per service and method (providers).
    #[serde(default)]
    pub served: Vec<MethodFigures>,
    /// What this process called during the window, per provider endpoint and service
    /// (consumers): how the providers look from the outside.
    #[serde(default)]
    pub called: Vec<CallFigures>,
    /// Faults the registry's traffic rules made this process inject during the window
    /// (consumers), so a drill is never mistaken for an outage.
    #[serde(default)]
    pub faults: Vec<FaultCount>,
}

/// Calls of one service a consumer delayed or failed on purpose during a report window, as one
/// fault of the traffic rules told it to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCount {
    /// Service name.
    pub service: String,
    /// The fault's name in the rules.
    pub fault: String,
    /// `delay` or `abort`.
    pub kind: String,
    /// Calls it hit.
    pub count: u64,
}

/// Upper bounds, in microseconds, of the latency buckets of [`Latency::buckets`]; a last,
/// unbounded bucket follows them.
pub const LATENCY_BOUNDS_US: [u64; 18] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Calls of one method a provider served during a report window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodFigures {
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Calls that completed (successfully or not) during the window.
    pub calls: u64,
    /// Of those, the ones that failed, by kind.
    #[serde(default)]
    pub errors: Vec<ErrorCount>,
    /// Calls running at report time.
    #[serde(default)]
    pub in_flight: u64,
    /// How long the completed calls took, from request to response (for a streaming call:
    /// from its request to its end).
    #[serde(default)]
    pub latency: Latency,
    /// Stream items the completed streaming calls received from their callers.
    #[serde(default)]
    pub items_in: u64,
    /// Stream items the completed streaming calls sent to their callers.
    #[serde(default)]
    pub items_out: u64,
    /// The window's slowest call among those whose trace was sampled (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest: Option<Exemplar>,
    /// The window's latest failed call among those whose trace was sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Exemplar>,
}

/// One call a report window picked out, so an operator can look its trace up: the window's
/// slowest call or its latest failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exemplar {
    /// The call's W3C trace id: 32 lowercase hexadecimal digits.
    pub trace_id: String,
    /// How long the call took, in microseconds.
    pub latency_us: u64,
    /// The error code of a failed call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<u16>,
}

/// Calls a consumer made to one service at one provider during a report window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallFigures {
    /// The provider's endpoint, as registered.
    pub endpoint: String,
    /// Service name.
    pub service: String,
    /// Calls that completed during the window, including those that could not reach the
    /// provider.
    pub calls: u64,
    /// Of those, the ones that failed, by kind (`Connect` for a provider that cannot be
    /// reached).
    #[serde(default)]
    pub errors: Vec<ErrorCount>,
    /// How long the calls took as the consumer saw them.
    #[serde(default)]
    pub latency: Latency,
}

/// A number of failed calls of one [`ErrorKind`](crate::ErrorKind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCount {
    /// The kind's stable code ([`ErrorKind::code`](crate::ErrorKind::code)).
    pub code: u16,
    /// How many calls failed with it.
    pub count: u64,
}

/// A latency distribution over a report window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Calls per bucket: `buckets[i]` counts calls that took at most [`LATENCY_BOUNDS_US`]`[i]`
    /// microseconds (and more than the bound before); the last entry counts the rest. Empty
    /// when there were no calls.
    #[serde(default)]
    pub buckets: Vec<u64>,
    /// Sum of all latencies, in microseconds.
    #[serde(default)]
    pub sum_us: u64,
    /// Median, in microseconds.
    #[serde(default)]
    pub p50_us: u64,
    /// 90th percentile, in microseconds.
    #[serde(default)]
    pub p90_us: u64,
    /// 99th percentile, in microseconds.
    #[serde(default)]
    pub p99_us: u64,
    /// The slowest call, in microseconds.
    #[serde(default)]
    pub max_us: u64,
}

/// The full current list of instances of a subscribed service (pushed on every change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryEvent {
    /// The service.
    pub service: String,
    /// The version requirement of the subscription this event answers.
    pub version_req: String,
    /// Every matching live instance.
    pub instances: Vec<Instance>,
}

/// Why the registry refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryError {
    /// Wrong or unknown credentials, or the connection has not logged in.
    Unauthorized(String),
    /// The app may not provide or consume that service.
    PermissionDenied(String),
    /// The request itself is invalid (bad version requirement, bad endpoint, ...).
    Invalid(String),
    /// The login was refused before its secret was checked: too many failed logins for the app
    /// or from the caller's address, too many logins from that address, or the registry is busy
    /// checking others. Retrying sooner than `retry_after_ms` is refused the same way.
    Throttled {
        /// What was throttled, and when to retry (`...; retry in 3.2s`).
        message: String,
        /// Milliseconds after which a retry may succeed.
        retry_after_ms: u64,
    },
    /// The registry node cannot reach the store it shares with other nodes (etcd), so it could
    /// not do this now; nothing was changed. Retry, or use another registry node.
    Unavailable(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            RegistryError::PermissionDenied(m) => write!(f, "permission denied: {m}"),
            RegistryError::Invalid(m) => write!(f, "invalid request: {m}"),
            RegistryError::Throttled { message, .. } => write!(f, "throttled: {message}"),
            RegistryError::Unavailable(m) => write!(f, "registry unavailable: {m}"),
        }
    }
}

impl std::error::Error for RegistryError {}

impl From<RegistryError> for crate::Error {
    fn from(e: RegistryError) -> crate::Error {
        use crate::ErrorKind;
        match e {
            RegistryError::Unauthorized(m) => crate::Error::new(ErrorKind::Unauthorized, m),
            RegistryError::PermissionDenied(m) => crate::Error::new(ErrorKind::PermissionDenied, m),
            RegistryError::Invalid(m) => crate::Error::new(ErrorKind::InvalidArguments, m),
            // Nothing was checked: like an overloaded provider, retrying later is safe.
            RegistryError::Throttled { message, .. } => {
                crate::Error::new(ErrorKind::Overloaded, format!("throttled: {message}"))
            }
            // The node, not the request, is the problem: like a registry that cannot be reached
            // (the session moves on to another node).
            RegistryError::Unavailable(m) => {
                crate::Error::new(ErrorKind::Connect, format!("registry unavailable: {m}"))
            }
        }
    }
}
