//! Call and connection metadata: a small ordered list of string pairs, and the limits a receiver
//! puts on what a peer may send.
//!
//! Metadata travels with requests (trace context, caller-chosen tags) and with the handshake
//! (credentials). It is usually empty or tiny, so it is a plain `Vec` (no allocation when empty)
//! rather than a hash map. What arrives from the network is different: a peer chooses how many
//! entries it sends, so received metadata is checked against [`MetadataLimits`] entry by entry
//! and de-duplicated in one pass ([`Metadata::from_received`]), never by repeated lookups whose
//! cost would grow with the square of the entry count.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use serde::de::{Error as _, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};

/// Key/value string pairs attached to a call or a connection. Keys are case-sensitive; a key
/// appears at most once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// An empty set.
    pub const fn new() -> Metadata {
        Metadata {
            entries: Vec::new(),
        }
    }

    /// An empty set with room for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> Metadata {
        Metadata {
            entries: Vec::with_capacity(n),
        }
    }

    /// The value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` to `value`, replacing an earlier value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Whether an entry under `key` may hold a credential (an access token, a secret, a proof of
/// possession): its value is never shown by `Debug`, so a logged handshake or call leaks none.
fn is_sensitive(key: &str) -> bool {
    const NAMES: [&str; 7] = [
        "token",
        "authorization",
        "secret",
        "password",
        "proof",
        "challenge",
        "cookie",
    ];
    let key = key.to_ascii_lowercase();
    NAMES.iter().any(|n| {
        key == *n
            || key.strip_suffix(n).is_some_and(|rest| {
                rest.ends_with('-') || rest.ends_with('_') || rest.ends_with('.')
            })
    })
}

/// Entries are shown in order, except that the values of keys that may hold credentials
/// (`token`, `authorization`, `secret`, `password`, `proof`, `challenge`, `cookie`, and keys
/// ending in `-token`, `_secret` and the like) are shown as `<redacted>`.
impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (k, if is_sensitive(k) { "<redacted>" } else { v })),
            )
            .finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Metadata {
        Metadata::from_received(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Up to this many entries a duplicate is looked for by scanning: no hash map to build.
pub(crate) const SCAN_UP_TO: usize = 16;

impl Metadata {
    /// Metadata from pairs as they arrived, in linear time: a repeated key keeps the position of
    /// its first occurrence and the value of its last (what the same [`insert`](Self::insert)s
    /// would give).
    pub(crate) fn from_received(mut entries: Vec<(String, String)>) -> Metadata {
        let n = entries.len();
        if n <= SCAN_UP_TO {
            let mut m = Metadata::new();
            for (k, v) in entries {
                m.insert(k, v);
            }
            return m;
        }
        // For each first occurrence, the index of the key's last occurrence (`usize::MAX` marks a
        // repeat). The map hashes with a random key (SipHash), so a peer cannot choose keys that
        // collide.
        let mut last = vec![usize::MAX; n];
        let mut repeats = false;
        {
            let mut first: HashMap<&str, usize> = HashMap::with_capacity(n);
            for (i, (k, _)) in entries.iter().enumerate() {
                match first.entry(k.as_str()) {
                    Entry::Occupied(e) => {
                        last[*e.get()] = i;
                        repeats = true;
                    }
                    Entry::Vacant(e) => {
                        e.insert(i);
                        last[i] = i;
                    }
                }
            }
        }
        if !repeats {
            return Metadata { entries };
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            if last[i] != usize::MAX {
                let key = std::mem::take(&mut entries[i].0);
                let value = std::mem::take(&mut entries[last[i]].1);
                out.push((key, value));
            }
        }
        Metadata { entries: out }
    }
}

/// What a receiver accepts as metadata from a peer: the handshake's connection metadata and each
/// request's call metadata are checked entry by entry as they are decoded, and the first limit
/// crossed fails with [`ErrorKind::LimitExceeded`] naming it (a request is answered with that
/// error and the connection stays usable; a handshake is refused).
///
/// The defaults leave room for W3C trace context (`traceparent`, `tracestate`) and a token, and
/// keep the work one peer can cause per frame small.
///
/// ```
/// let mut limits = stardust::MetadataLimits::default();
/// limits.max_entries = 32;
/// let _server = stardust::Server::builder().metadata_limits(limits);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetadataLimits {
    /// Most entries in one map, counting repeated keys (default 256).
    pub max_entries: usize,
    /// Longest key, in bytes (default 256).
    pub max_key_len: usize,
    /// Longest value, in bytes (default 8 KiB).
    pub max_value_len: usize,
    /// Most bytes of keys and values together (default 64 KiB).
    pub max_total: usize,
}

impl MetadataLimits {
    /// The default limits: 256 entries, keys up to 256 bytes, values up to 8 KiB, 64 KiB in all.
    pub const DEFAULT: MetadataLimits = MetadataLimits {
        max_entries: 256,
        max_key_len: 256,
        max_value_len: 8 * 1024,
        max_total: 64 * 1024,
    };

    /// Checks a map header announcing `entries` pairs, before any is read. `what` names the
    /// map in the error ("call metadata").
    pub(crate) fn check_count(&self, entries: usize, what: &str) -> Result<(), Error> {
        if entries > self.max_entries {
            return Err(limit(format!(
                "{what} has {entries} entries, over the limit of {}",
                self.max_entries
            )));
        }
        Ok(())
    }

    /// Checks one entry; `total` is the byte count of the entries before it and is updated.
    pub(crate) fn check_entry(
        &self,
        key: &str,
        value: &str,
        total: &mut usize,
        what: &str,
    ) -> Result<(), Error> {
        self.check_sizes(key, value.len(), total, what)
    }

    /// [`check_entry`](Self::check_entry) for a value known by its length only.
    pub(crate) fn check_sizes(
        &self,
        key: &str,
        value_len: usize,
        total: &mut usize,
        what: &str,
    ) -> Result<(), Error> {
        if key.len() > self.max_key_len {
            return Err(limit(format!(
                "{what} has a key of {} bytes, over the limit of {} bytes",
                key.len(),
                self.max_key_len
            )));
        }
        if value_len > self.max_value_len {
            return Err(limit(format!(
                "{what} has a value of {} bytes (key `{key}`), over the limit of {} bytes",
                value_len, self.max_value_len
            )));
        }
        *total += key.len() + value_len;
        if *total > self.max_total {
            return Err(limit(format!(
                "{what} has more than {} bytes of keys and values, over the limit of {} bytes",
                *total, self.max_total
            )));
        }
        Ok(())
    }
}

impl Default for MetadataLimits {
    fn default() -> MetadataLimits {
        MetadataLimits::DEFAULT
    }
}

fn limit(message: String) -> Error {
    Error::new(ErrorKind::LimitExceeded, message)
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Metadata, A::Error> {
                // Whoever deserializes metadata gets the default limits and a linear decode:
                // the wire paths check their own configured limits before this is reached.
                let limits = MetadataLimits::DEFAULT;
                let announced = access.size_hint().unwrap_or(0);
                let what = "metadata";
                limits
                    .check_count(announced, what)
                    .map_err(A::Error::custom)?;
                let mut entries = Vec::with_capacity(announced);
                let mut total = 0;
                while let Some((k, v)) = access.next_entry::<String, String>()? {
                    limits
                        .check_count(entries.len() + 1, what)
                        .map_err(A::Error::custom)?;
                    limits
                        .check_entry(&k, &v, &mut total, what)
                        .map_err(A::Error::custom)?;
                    entries.push((k, v));
                }
                Ok(Metadata::from_received(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces() {
        let mut m = Metadata::new();
        m.insert("a", "1");
        m.insert("b", "2");
        m.insert("a", "3");
        assert_eq!(m.get("a"), Some("3"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove("b").as_deref(), Some("2"));
        assert!(m.get("b").is_none());
    }

    #[test]
    fn received_pairs_keep_first_position_and_last_value() {
        for n in [3usize, 40] {
            // k0..kn, then k1 again and k0 again: both keep their place with the later value.
            let mut pairs: Vec<(String, String)> =
                (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
            pairs.push(("k1".into(), "late1".into()));
            pairs.push(("k0".into(), "late0".into()));
            let m = Metadata::from_received(pairs);
            assert_eq!(m.len(), n, "{n}");
            let keys: Vec<&str> = m.iter().map(|(k, _)| k).collect();
            assert_eq!(&keys[..2], ["k0", "k1"]);
            assert_eq!(m.get("k0"), Some("late0"));
            assert_eq!(m.get("k1"), Some("late1"));
            assert_eq!(m.get("k2"), Some("v2"));
        }
    }

    #[test]
    fn many_distinct_keys_decode_in_linear_time() {
        // 200,000 distinct keys: a lookup per insert would be 2*10^10 comparisons (minutes);
        // one pass with a map is milliseconds. (Deserialize's default limits are not involved.)
        let pairs: Vec<(String, String)> = (0..200_000)
            .map(|i| (i.to_string(), String::new()))
            .collect();
        let m = Metadata::from_received(pairs);
        assert_eq!(m.len(), 200_000);
        assert_eq!(m.get("199999"), Some(""));
    }

    #[test]
    fn deserialize_applies_the_default_limits() {
        let many: std::collections::BTreeMap<String, String> =
            (0..300).map(|i| (i.to_string(), String::new())).collect();
        let bytes = rmp_serde::to_vec(&many).unwrap();
        let err = rmp_serde::from_slice::<Metadata>(&bytes).unwrap_err();
        assert!(err.to_string().contains("300 entries"), "{err}");
        let long = std::collections::BTreeMap::from([("k", "v".repeat(9000))]);
        let bytes = rmp_serde::to_vec(&long).unwrap();
        let err = rmp_serde::from_slice::<Metadata>(&bytes).unwrap_err();
        assert!(err.to_string().contains("9000 bytes"), "{err}");
        let ok = std::collections::BTreeMap::from([("k", "v")]);
        let m: Metadata = rmp_serde::from_slice(&rmp_serde::to_vec(&ok).unwrap()).unwrap();
        assert_eq!(m.get("k"), Some("v"));
    }

    #[test]
    fn limits_name_what_was_crossed() {
        let limits = MetadataLimits::DEFAULT;
        let mut total = 0;
        let e = limits
            .check_entry(&"k".repeat(257), "", &mut total, "call metadata")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LimitExceeded);
        assert!(e.message().contains("key of 257 bytes"), "{e}");
        let mut total = 60 * 1024;
        let e = limits
            .check_entry("k", &"v".repeat(8 * 1024), &mut total, "call metadata")
            .unwrap_err();
        assert!(e.message().contains("over the limit of 65536 bytes"), "{e}");
    }

    #[test]
    fn debug_output_never_shows_a_credential() {
        let meta: Metadata = [
            ("token", "eyJ.secret-token.sig"),
            ("x-api-token", "k-123"),
            ("Authorization", "Bearer abc"),
            ("client_secret", "s3cret"),
            ("tenant", "acme"),
            ("tokens-used", "12"),
        ]
        .into_iter()
        .collect();
        let shown = format!("{meta:?}");
        for secret in ["eyJ.secret-token.sig", "k-123", "Bearer abc", "s3cret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"tenant\": \"acme\""), "{shown}");
        assert!(shown.contains("\"tokens-used\": \"12\""), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 4, "{shown}");
    }
}
