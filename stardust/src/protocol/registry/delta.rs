//! Revisioned discovery (feature [`FEATURE_DELTA`]): a subscription starts from a snapshot and
//! then receives only what changed.
//!
//! Every registry node numbers the changes of its table with one counter (the *revision*) and
//! picks a random *epoch* when it starts, so a revision is only ever compared with revisions of
//! the same node and the same run. [`Registry::watch`](crate::discovery::api::Registry::watch) subscribes
//! and answers with what the caller lacks: nothing ([`WatchReply::Unchanged`]), the changes since
//! the revision it holds ([`WatchReply::Delta`]) or the whole list ([`WatchReply::Snapshot`]).
//! Later changes arrive as [`DiscoveryPush`]es on [`DELTA_TOPIC`], each naming the revision it
//! moves the subscriber's list from and to; a subscriber that finds a gap, or is told to
//! [`Resync`](DiscoveryPush::Resync), calls `watch` again with the revision it holds.
//! `docs/PROTOCOL.md` §17 spells out the rules for other-language clients.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Instance;
use crate::error::Error;

/// Notification topic of [`DiscoveryPush`]es (subscriptions made with `watch`).
pub const DELTA_TOPIC: &str = "stardust.discovery.delta";

/// Feature a registry announces (in its `HelloAck` and login answers) when it answers `watch`
/// and pushes deltas; a client announces it in its `Hello` when it can apply them.
pub const FEATURE_DELTA: &str = "discovery.delta";

/// Feature a registry announces when it takes `resume` (logging in again with a still-valid
/// access token instead of the secret).
pub const FEATURE_RESUME: &str = "registry.resume";

/// Where a subscriber's list stands: the registry node's run (`epoch`) and the revision of its
/// table the list reflects.
///
/// Revisions of different epochs are unrelated: a client that reconnects to another node, or
/// to the same node after a restart, gets a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Revision {
    /// The registry node's run, random per start.
    pub epoch: u64,
    /// The revision of the node's table.
    pub rev: u64,
}

/// The answer to [`Registry::watch`](crate::discovery::api::Registry::watch): what the caller needs to
/// bring its list to the registry's current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatchReply {
    /// The caller's list is current; `at` is the revision it holds.
    Unchanged {
        /// The revision the caller already holds.
        at: Revision,
    },
    /// The changes since the revision the caller named.
    Delta(DiscoveryDelta),
    /// The whole list (the caller named no revision, one of another epoch, or one too old for a
    /// delta).
    Snapshot {
        /// The revision the list reflects.
        at: Revision,
        /// Every matching live instance, ordered by endpoint.
        instances: InstanceList,
    },
}

/// The changes to one subscription's list between two revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryDelta {
    /// The service.
    pub service: String,
    /// The version requirement of the subscription.
    pub version_req: String,
    /// The registry node's run the revisions belong to.
    pub epoch: u64,
    /// The revision the subscriber's list must be at for this delta to apply.
    pub from: u64,
    /// The revision the list is at afterwards.
    pub to: u64,
    /// Instances added, or changed (weight, tags, version, ...): each replaces the instance at
    /// its endpoint.
    #[serde(default)]
    pub upserted: Vec<Instance>,
    /// Endpoints whose instance is gone (or no longer matches the version requirement).
    /// Endpoints the subscriber does not list are ignored.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// A push on [`DELTA_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscoveryPush {
    /// What changed since the previous push (or the snapshot).
    Delta(DiscoveryDelta),
    /// The registry dropped pushes for this subscription (the subscriber was not reading them
    /// fast enough): call `watch` with the revision held.
    Resync {
        /// The service.
        service: String,
        /// The version requirement of the subscription.
        version_req: String,
    },
}

/// A list of instances as a snapshot carries it: one MessagePack `bin` whose bytes are the
/// encoded array of [`Instance`] maps.
///
/// The registry keeps every instance encoded and builds a snapshot by concatenating them, so a
/// thousand subscribers of a ten-thousand-instance service cost it copies, not encodings.
/// [`InstanceList::decode`] checks and decodes the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct InstanceList {
    encoded: Bytes,
}

impl InstanceList {
    /// Encodes `instances`.
    pub fn new(instances: &[Instance]) -> InstanceList {
        let encoded = rmp_serde::to_vec_named(instances).expect("instances always encode");
        InstanceList {
            encoded: encoded.into(),
        }
    }

    /// Wraps bytes that are already a MessagePack array of instance maps (not checked here:
    /// [`decode`](Self::decode) does).
    pub fn from_encoded(encoded: Bytes) -> InstanceList {
        InstanceList { encoded }
    }

    /// The encoded array.
    pub fn encoded(&self) -> &Bytes {
        &self.encoded
    }

    /// Decodes the instances.
    pub fn decode(&self) -> Result<Vec<Instance>, Error> {
        crate::protocol::codec::decode_value(&self.encoded)
    }
}

impl std::fmt::Debug for InstanceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceList")
            .field("bytes", &self.encoded.len())
            .finish()
    }
}

impl Serialize for InstanceList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encoded)
    }
}

impl<'de> Deserialize<'de> for InstanceList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceList, D::Error> {
        Ok(InstanceList {
            encoded: Bytes::deserialize(d)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(endpoint: &str) -> Instance {
        Instance {
            app: "calc".into(),
            service: "calc.Calculator".into(),
            version: "1.0.0".into(),
            endpoint: endpoint.into(),
            weight: 100,
            tags: Default::default(),
            tls: false,
        }
    }

    #[test]
    fn snapshots_carry_the_list_as_one_bin() {
        let list = vec![instance("127.0.0.1:1"), instance("127.0.0.1:2")];
        let reply = WatchReply::Snapshot {
            at: Revision { epoch: 7, rev: 3 },
            instances: InstanceList::new(&list),
        };
        let bytes = rmp_serde::to_vec_named(&reply).unwrap();
        let back: WatchReply = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, reply);
        let WatchReply::Snapshot { instances, .. } = back else {
            unreachable!()
        };
        assert_eq!(instances.decode().unwrap(), list);
        // A bin of garbage decodes to an error, not a panic.
        let bad = InstanceList::from_encoded(Bytes::from_static(&[0x92, 0xc1]));
        assert!(bad.decode().is_err());
    }
}
