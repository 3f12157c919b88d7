//! A subscriber's picture of the service it watches, kept small: endpoint -> fingerprint of the
//! instance (64-bit hashes both), 16 bytes an entry plus the map's overhead, so 1,000 views of
//! 10,000 instances take a few hundred MB rather than the gigabytes of 10 million `Instance`s.
//!
//! Pushes are decoded borrowing their strings from the received bytes ([`InstanceRef`]): with
//! full lists, every subscriber decodes about 1 MB per change at 10,000 instances, and the load
//! generator must not be what limits the measurement.
//!
//! Both protocols are followed: whole lists on every change ([`View::apply_full`], `subscribe`)
//! and revisioned deltas ([`View::apply_delta`], `watch`: a snapshot, then `{from, to, upserted,
//! removed}`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use serde::Deserialize;
use stardust::discovery::api::Instance;

/// 64-bit key of an endpoint (`host:port`).
pub type EndpointKey = u64;

/// An instance as pushed, its strings borrowed from the push's bytes.
#[derive(Debug, Deserialize)]
pub struct InstanceRef<'a> {
    #[serde(borrow)]
    pub app: &'a str,
    #[serde(borrow)]
    pub service: &'a str,
    #[serde(borrow)]
    pub version: &'a str,
    #[serde(borrow)]
    pub endpoint: &'a str,
    pub weight: u32,
    #[serde(default, borrow)]
    pub tags: BTreeMap<&'a str, &'a str>,
    #[serde(default)]
    pub tls: bool,
}

impl<'a> From<&'a Instance> for InstanceRef<'a> {
    fn from(i: &'a Instance) -> InstanceRef<'a> {
        InstanceRef {
            app: &i.app,
            service: &i.service,
            version: &i.version,
            endpoint: &i.endpoint,
            weight: i.weight,
            tags: i
                .tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            tls: i.tls,
        }
    }
}

/// A full-list push (`DiscoveryEvent` on `DISCOVERY_TOPIC`), borrowed.
#[derive(Debug, Deserialize)]
pub struct FullPush<'a> {
    #[serde(borrow)]
    pub service: &'a str,
    #[serde(borrow)]
    pub instances: Vec<InstanceRef<'a>>,
}

impl<'a> FullPush<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<FullPush<'a>, String> {
        rmp_serde::from_slice(payload).map_err(|e| format!("undecodable discovery push: {e}"))
    }
}

/// A delta push (`DiscoveryPush` on `DELTA_TOPIC`), borrowed.
#[derive(Debug, Deserialize)]
pub enum DeltaPush<'a> {
    #[serde(borrow)]
    Delta(DeltaRef<'a>),
    Resync {
        #[serde(borrow)]
        service: &'a str,
    },
}

/// A `DiscoveryDelta`, borrowed.
#[derive(Debug, Deserialize)]
pub struct DeltaRef<'a> {
    #[serde(borrow)]
    pub service: &'a str,
    pub epoch: u64,
    pub from: u64,
    pub to: u64,
    #[serde(borrow)]
    pub upserted: Vec<InstanceRef<'a>>,
    #[serde(borrow)]
    pub removed: Vec<&'a str>,
}

impl<'a> DeltaPush<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<DeltaPush<'a>, String> {
        rmp_serde::from_slice(payload).map_err(|e| format!("undecodable delta push: {e}"))
    }

    pub fn service(&self) -> &'a str {
        match self {
            DeltaPush::Delta(d) => d.service,
            DeltaPush::Resync { service } => service,
        }
    }
}

/// A snapshot's instance list (the bytes of an `InstanceList`), borrowed.
pub fn decode_list(bytes: &[u8]) -> Result<Vec<InstanceRef<'_>>, String> {
    rmp_serde::from_slice(bytes).map_err(|e| format!("undecodable snapshot: {e}"))
}

/// A fast, deterministic, non-cryptographic hasher (the multiply-rotate of rustc's FxHash): a
/// thousand subscribers hash about ten million instances after a registry restart, and the
/// load generator's hashing must not be what the benchmark measures. Nothing here faces input
/// an attacker chooses.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Maps keyed by [`EndpointKey`]s (already hashes): [`Fx`] is plenty.
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

pub fn endpoint_key(endpoint: &str) -> EndpointKey {
    // Fixed, so the same in every subscriber, in the ledger and across calls.
    let mut h = Fx::default();
    endpoint.hash(&mut h);
    h.finish()
}

/// Everything a subscriber can see change about an instance (weight, tags, version, ...).
fn fingerprint(i: &InstanceRef<'_>) -> u64 {
    let mut h = Fx::default();
    (i.app, i.service, i.version, i.endpoint, i.weight, i.tls).hash(&mut h);
    for (k, v) in &i.tags {
        (k, v).hash(&mut h);
    }
    h.finish()
}

/// One subscriber's view of one service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    entries: FxMap<EndpointKey, u64>,
}

impl View {
    /// The view of a list (a `discover` answer, or a subscribe reply).
    pub fn of<'a>(list: impl IntoIterator<Item = InstanceRef<'a>>) -> View {
        let mut view = View::default();
        view.apply_full(list, |_| {});
        view
    }

    /// Replaces the view by `list`; `removed` is called with every endpoint that was in the view
    /// and is not in the list.
    pub fn apply_full<'a>(
        &mut self,
        list: impl IntoIterator<Item = InstanceRef<'a>>,
        mut removed: impl FnMut(EndpointKey),
    ) {
        let list = list.into_iter();
        let mut next = FxMap::with_capacity_and_hasher(
            list.size_hint().0.max(self.entries.len()),
            Default::default(),
        );
        for i in list {
            next.insert(endpoint_key(i.endpoint), fingerprint(&i));
        }
        for key in self.entries.keys() {
            if !next.contains_key(key) {
                removed(*key);
            }
        }
        self.entries = next;
    }

    /// Applies a delta: each upserted instance replaces its endpoint's, each removed endpoint
    /// goes (`removed` is called for those the view had).
    pub fn apply_delta<'a>(
        &mut self,
        upserted: impl IntoIterator<Item = InstanceRef<'a>>,
        gone: &[&str],
        mut removed: impl FnMut(EndpointKey),
    ) {
        for endpoint in gone {
            let key = endpoint_key(endpoint);
            if self.entries.remove(&key).is_some() {
                removed(key);
            }
        }
        for i in upserted {
            self.entries
                .insert(endpoint_key(i.endpoint), fingerprint(&i));
        }
    }

    pub fn contains(&self, endpoint: EndpointKey) -> bool {
        self.entries.contains_key(&endpoint)
    }
}
