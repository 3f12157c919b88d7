//! Caps on what one registry connection may send and make the registry keep (`[limits]`).

use serde::Deserialize;

use super::ConfigError;

/// Caps on what one connection (one session) may send the registry and make it keep.
///
/// Any app that can log in (in dev mode, anyone) can then register, subscribe and report over
/// its connection. Without caps one connection could make the registry hold unbounded state (a
/// subscription list, registrations, tags) or work through arbitrarily long names and reports.
/// The registry checks every call's arguments against these caps before it does anything with
/// them; a call over a cap is refused with `RegistryError::Invalid` (the Rust client's
/// `ErrorKind::InvalidArguments`), whose message names the cap and its value
/// (`... the limit is 32 (limits.max_tags)`), and changes nothing: the connection stays usable.
///
/// Fixed bounds complete them: app names at most
/// [`MAX_APP_NAME_LEN`](crate::config::MAX_APP_NAME_LEN) bytes and secrets 4096 bytes (longer
/// ones fail `login` like a wrong secret, through the login throttle), endpoints 259 bytes (a
/// DNS name and a port), and every message the server's frame size limit.
///
/// Keep the caps at or above what the registry's clients need: a `stardust::Stardust` session
/// that reconnects registers and subscribes everything again, and gives the connection up if
/// any of that is refused.
///
/// Build one with [`Limits::default`] and the `with_*` methods, then
/// [`Config::with_limits`](crate::Config::with_limits); in the config file, `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Subscriptions one connection may hold (`subscribe`; subscribing again to the same
    /// service and requirement replaces the earlier one). Default 1024, what a sidecar agent
    /// tracking its default 1024 services needs.
    pub max_subscriptions: usize,
    /// Registrations (service and endpoint) one connection may hold (`register`; registering
    /// the same again refreshes it). Default 256.
    pub max_registrations: usize,
    /// Longest service name, in bytes, in any call, and longest method name in a status report.
    /// Default 256.
    pub max_name_len: usize,
    /// Longest version (`register`, and a status report's software version) or version
    /// requirement (`discover`, `subscribe`, `unsubscribe`), in bytes. Default 128.
    pub max_version_len: usize,
    /// Tags one registration may carry. Default 32.
    pub max_tags: usize,
    /// Longest tag key, and longest tag value, in bytes. Default 256.
    pub max_tag_len: usize,
    /// Entries one heartbeat's status report may carry: what the process served (per service
    /// and method) plus what it called (per provider endpoint and service). Default 16 384.
    pub max_report_entries: usize,
    /// Bytes of discovery pushes that may wait for one subscriber that is not reading them.
    /// Past it the subscriber gets no more pushes; once it has read down to half of it, it is
    /// told to resync (or, speaking the first protocol revision, sent the whole list again).
    /// Default 1 MiB.
    pub subscriber_queue_bytes: usize,
    /// Connections the registry serves at once (each logged-in process holds one); more are
    /// turned away with a `GoAway` saying so. Default 10 000.
    pub max_connections: usize,
    /// Connections still in their handshake at once; more are turned away at once with a
    /// `GoAway` (`Overloaded`), which clients retry after their backoff. Set it above the burst
    /// of connections expected at one moment (every session reconnecting after a restart).
    /// Default 256.
    pub max_pending_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_subscriptions: 1024,
            max_registrations: 256,
            max_name_len: 256,
            max_version_len: 128,
            max_tags: 32,
            max_tag_len: 256,
            max_report_entries: 16_384,
            subscriber_queue_bytes: 1024 * 1024,
            max_connections: 10_000,
            max_pending_handshakes: 256,
        }
    }
}

impl Limits {
    /// Sets [`max_subscriptions`](Self::max_subscriptions).
    pub fn with_max_subscriptions(mut self, n: usize) -> Limits {
        self.max_subscriptions = n;
        self
    }

    /// Sets [`max_registrations`](Self::max_registrations).
    pub fn with_max_registrations(mut self, n: usize) -> Limits {
        self.max_registrations = n;
        self
    }

    /// Sets [`max_name_len`](Self::max_name_len).
    pub fn with_max_name_len(mut self, bytes: usize) -> Limits {
        self.max_name_len = bytes;
        self
    }

    /// Sets [`max_version_len`](Self::max_version_len).
    pub fn with_max_version_len(mut self, bytes: usize) -> Limits {
        self.max_version_len = bytes;
        self
    }

    /// Sets [`max_tags`](Self::max_tags).
    pub fn with_max_tags(mut self, n: usize) -> Limits {
        self.max_tags = n;
        self
    }

    /// Sets [`max_tag_len`](Self::max_tag_len).
    pub fn with_max_tag_len(mut self, bytes: usize) -> Limits {
        self.max_tag_len = bytes;
        self
    }

    /// Sets [`max_report_entries`](Self::max_report_entries).
    pub fn with_max_report_entries(mut self, n: usize) -> Limits {
        self.max_report_entries = n;
        self
    }

    /// Sets [`subscriber_queue_bytes`](Self::subscriber_queue_bytes).
    pub fn with_subscriber_queue_bytes(mut self, bytes: usize) -> Limits {
        self.subscriber_queue_bytes = bytes;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, n: usize) -> Limits {
        self.max_connections = n;
        self
    }

    /// Sets [`max_pending_handshakes`](Self::max_pending_handshakes).
    pub fn with_max_pending_handshakes(mut self, n: usize) -> Limits {
        self.max_pending_handshakes = n;
        self
    }

    /// Every cap by its name in the config file.
    fn named(&self) -> [(&'static str, usize); 10] {
        [
            ("max_subscriptions", self.max_subscriptions),
            ("max_registrations", self.max_registrations),
            ("max_name_len", self.max_name_len),
            ("max_version_len", self.max_version_len),
            ("max_tags", self.max_tags),
            ("max_tag_len", self.max_tag_len),
            ("max_report_entries", self.max_report_entries),
            ("subscriber_queue_bytes", self.subscriber_queue_bytes),
            ("max_connections", self.max_connections),
            ("max_pending_handshakes", self.max_pending_handshakes),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // Zero would refuse every call of its kind: a mistake, not a policy.
        match self.named().into_iter().find(|(_, n)| *n == 0) {
            Some((name, _)) => Err(ConfigError::new(format!(
                "limits.{name} must be at least 1"
            ))),
            None => Ok(()),
        }
    }
}

/// `[limits]` as written in the file: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_subscriptions: Option<usize>,
    max_registrations: Option<usize>,
    max_name_len: Option<usize>,
    max_version_len: Option<usize>,
    max_tags: Option<usize>,
    max_tag_len: Option<usize>,
    max_report_entries: Option<usize>,
    subscriber_queue_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_pending_handshakes: Option<usize>,
}

impl RawLimits {
    /// Overrides the caps the file sets.
    pub(super) fn apply(self, limits: &mut Limits) {
        let set = |from: Option<usize>, into: &mut usize| {
            if let Some(n) = from {
                *into = n;
            }
        };
        set(self.max_subscriptions, &mut limits.max_subscriptions);
        set(self.max_registrations, &mut limits.max_registrations);
        set(self.max_name_len, &mut limits.max_name_len);
        set(self.max_version_len, &mut limits.max_version_len);
        set(self.max_tags, &mut limits.max_tags);
        set(self.max_tag_len, &mut limits.max_tag_len);
        set(self.max_report_entries, &mut limits.max_report_entries);
        set(
            self.subscriber_queue_bytes,
            &mut limits.subscriber_queue_bytes,
        );
        set(self.max_connections, &mut limits.max_connections);
        set(
            self.max_pending_handshakes,
            &mut limits.max_pending_handshakes,
        );
    }
}
