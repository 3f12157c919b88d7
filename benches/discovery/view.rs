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

/// A fast, deterministic, non-cryptographic hasher for the views' endpoint keys and instance
/// fingerprints: FNV-1a over the bytes, then a 64-bit avalanche (murmur3's finalizer). A thousand
/// subscribers hash about ten million instances after a registry restart, and the load
/// generator's hashing must not be what the benchmark measures. (A multiply-rotate word hash
/// was tried first: endpoints like `10.0.3.232:7000` collided.) Nothing here faces input an
/// attacker chooses.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A hasher for keys that are already hashes ([`EndpointKey`]): passes them through.
#[derive(Default, Clone, Copy)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; anything else still gets a deterministic value.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Maps keyed by [`EndpointKey`]s, which are already hashes.
type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Prehashed>>;

pub fn endpoint_key(endpoint: &str) -> EndpointKey {
    // Fixed, so the same in every subscriber, in the ledger and across calls.
    let mut h = Fnv::default();
    endpoint.hash(&mut h);
    h.finish()
}

/// Everything a subscriber can see change about an instance (weight, tags, version, ...).
fn fingerprint(i: &InstanceRef<'_>) -> u64 {
    let mut h = Fnv::default();
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

    /// How this view differs from `expected`: (missing, extra, changed) entries.
    pub fn diff(&self, expected: &View) -> (usize, usize, usize) {
        let missing = expected
            .entries
            .keys()
            .filter(|k| !self.entries.contains_key(k))
            .count();
        let extra = self
            .entries
            .keys()
            .filter(|k| !expected.entries.contains_key(k))
            .count();
        let changed = self
            .entries
            .iter()
            .filter(|(k, v)| expected.entries.get(k).is_some_and(|e| e != *v))
            .count();
        (missing, extra, changed)
    }

    pub fn contains(&self, endpoint: EndpointKey) -> bool {
        self.entries.contains_key(&endpoint)
    }
}
