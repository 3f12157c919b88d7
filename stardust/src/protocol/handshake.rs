//! The handshake's bodies: `Hello` (client → server) and `HelloAck` (server → client).
//!
//! A server decodes the `Hello` before it knows who is calling, so [`parse_hello`] reads it by
//! hand: linear in the frame's bytes, unknown keys and trailing elements stepped over without
//! recursion, and the connection metadata checked against the server's [`MetadataLimits`] as it
//! is read. (The serde derives stay for tools and clients that build or inspect a `Hello`.)

use serde::{Deserialize, Serialize};

use super::decode::{self, read_meta};
use crate::error::{Error, ErrorKind};
use crate::metadata::{Metadata, MetadataLimits};

/// The protocol name carried in the handshake, so a server can tell a Stardust client from a
/// stray connection at once.
pub const PROTOCOL_NAME: &str = "stardust";
/// The protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Body of a `Hello` frame (a MessagePack map).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// Always `"stardust"`.
    pub protocol: String,
    /// Protocol version the client speaks.
    pub version: u32,
    /// Free-form client software name and version, for logs.
    #[serde(default)]
    pub agent: String,
    /// The largest frame `length` the client accepts (responses over it are refused by the
    /// server with a `FrameTooLarge` error instead of being sent). Absent means 16 MiB.
    #[serde(default)]
    pub max_frame: Option<u32>,
    /// Connection metadata (credentials arrive here).
    #[serde(default)]
    pub meta: Metadata,
    /// Optional protocol capabilities the client supports (see [`Features`]); absent means
    /// none. At most [`MAX_FEATURES`] names of at most [`MAX_FEATURE_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The credit in bytes the client grants each stream for the server's items (feature
    /// `call.stream`); absent means [`DEFAULT_STREAM_WINDOW`](super::stream::DEFAULT_STREAM_WINDOW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_window: Option<u32>,
}

/// Body of a `HelloAck` frame (a MessagePack map).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloAck {
    /// Protocol version the server will speak on this connection.
    pub version: u32,
    /// Free-form server software name and version.
    #[serde(default)]
    pub agent: String,
    /// The largest frame `length` the server accepts.
    pub max_frame: u32,
    /// Optional protocol capabilities the server supports (see [`Features`]); absent means
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// The credit in bytes the server grants each stream for the client's items (feature
    /// `call.stream`); absent means [`DEFAULT_STREAM_WINDOW`](super::stream::DEFAULT_STREAM_WINDOW).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_window: Option<u32>,
}

/// Most feature names a peer may announce in its handshake.
pub const MAX_FEATURES: usize = 32;
/// Longest feature name, in bytes.
pub const MAX_FEATURE_LEN: usize = 64;

/// The optional capabilities a peer announced in its handshake (`features` of `Hello` or
/// `HelloAck`).
///
/// Every addition to the protocol that an older peer would not understand is named by a feature:
/// a side uses it only when the other side announced it, so peers of different ages keep
/// talking. Names are short dotted strings (`discovery.delta`); unknown names are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features(std::sync::Arc<[String]>);

impl Features {
    /// No features (an older peer, or one that announced none).
    pub fn none() -> Features {
        Features::default()
    }

    /// Whether the peer announced `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|f| f == name)
    }

    /// Every name announced, in the peer's order.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// Adds `names` to a side's announced features: each once, at most [`MAX_FEATURES`] in all
/// (a peer refuses more).
pub(crate) fn announce<S: Into<String>>(
    list: &mut Vec<String>,
    names: impl IntoIterator<Item = S>,
) {
    for name in names {
        let name = name.into();
        if !list.contains(&name) && list.len() < MAX_FEATURES {
            list.push(name);
        }
    }
}

impl From<Vec<String>> for Features {
    fn from(names: Vec<String>) -> Features {
        Features(names.into())
    }
}

/// A `stream_window` must let the peer send something and stay a valid credit: 1 to
/// [`MAX_CREDIT`](super::stream::MAX_CREDIT) bytes.
pub(crate) fn check_stream_window(window: u64) -> Result<u32, String> {
    match u32::try_from(window) {
        Ok(w) if (1..=super::stream::MAX_CREDIT).contains(&w) => Ok(w),
        _ => Err(format!(
            "stream_window is {window}; it must be 1 to {} bytes",
            super::stream::MAX_CREDIT
        )),
    }
}

fn malformed(e: impl std::fmt::Display) -> Error {
    Error::protocol(format!("malformed Hello frame: {e}"))
}

/// Parses a `Hello` body (the map form, or the array form `[protocol, version, agent,
/// max_frame, meta, ...]`), checking the connection metadata against `limits`.
///
/// Protocol name and version are not judged here: the caller decides what it speaks.
pub fn parse_hello(body: &[u8], limits: &MetadataLimits) -> Result<Hello, Error> {
    let mut rd = body;
    let mut hello = Hello {
        protocol: String::new(),
        version: 0,
        agent: String::new(),
        max_frame: None,
        meta: Metadata::new(),
        features: Vec::new(),
        stream_window: None,
    };
    let (mut has_protocol, mut has_version) = (false, false);
    let marker = *rd.first().ok_or_else(|| malformed("empty body"))?;
    let is_array = matches!(marker, 0x90..=0x9f | 0xdc | 0xdd);
    let fields = if is_array {
        rmp::decode::read_array_len(&mut rd).map_err(malformed)?
    } else {
        rmp::decode::read_map_len(&mut rd).map_err(malformed)?
    };
    const POSITIONS: [&str; 6] = [
        "protocol",
        "version",
        "agent",
        "max_frame",
        "meta",
        "features",
    ];
    for i in 0..fields {
        let key = if is_array {
            POSITIONS.get(i as usize).copied().unwrap_or("")
        } else {
            let (key, rest) = rmp::decode::read_str_from_slice(rd).map_err(malformed)?;
            rd = rest;
            key
        };
        match key {
            "protocol" => {
                let (s, rest) = rmp::decode::read_str_from_slice(rd).map_err(malformed)?;
                rd = rest;
                hello.protocol = s.to_owned();
                has_protocol = true;
            }
            "version" => {
                hello.version = rmp::decode::read_int(&mut rd).map_err(malformed)?;
                has_version = true;
            }
            "agent" => {
                let (s, rest) = rmp::decode::read_str_from_slice(rd).map_err(malformed)?;
                rd = rest;
                hello.agent = s.to_owned();
            }
            "max_frame" => {
                hello.max_frame = if rd.first() == Some(&0xc0) {
                    rd = &rd[1..];
                    None
                } else {
                    Some(rmp::decode::read_int(&mut rd).map_err(malformed)?)
                };
            }
            "meta" => hello.meta = read_meta(&mut rd, limits, "connection metadata")?,
            "features" => hello.features = read_features(&mut rd)?,
            "stream_window" => {
                hello.stream_window = if rd.first() == Some(&0xc0) {
                    rd = &rd[1..];
                    None
                } else {
                    let window: u64 = rmp::decode::read_int(&mut rd).map_err(malformed)?;
                    Some(check_stream_window(window).map_err(malformed)?)
                };
            }
            // A later version's field: stepped over, however deep.
            _ => decode::skip_value(&mut rd).map_err(malformed)?,
        }
    }
    if !has_protocol || !has_version {
        return Err(malformed("`protocol` and `version` are required"));
    }
    Ok(hello)
}

/// Reads the `features` array: strings only, bounded in number and length before anything is
/// kept (the `Hello` arrives before authentication).
fn read_features(rd: &mut &[u8]) -> Result<Vec<String>, Error> {
    let n = rmp::decode::read_array_len(rd).map_err(malformed)? as usize;
    if n > MAX_FEATURES {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!("the Hello names {n} features; at most {MAX_FEATURES} are accepted"),
        ));
    }
    let mut features = Vec::with_capacity(n);
    for _ in 0..n {
        let (name, rest) = rmp::decode::read_str_from_slice(*rd).map_err(malformed)?;
        *rd = rest;
        if name.len() > MAX_FEATURE_LEN {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a feature name in the Hello is {} bytes; at most {MAX_FEATURE_LEN} are accepted",
                    name.len()
                ),
            ));
        }
        features.push(name.to_owned());
    }
    Ok(features)
}

/// The longest target (`ip:port`) a `Proof` may name.
pub const MAX_PROOF_TARGET_LEN: usize = 64;

/// Body of a `Challenge` frame: `{"nonce": bin 32}`.
pub fn put_challenge(buf: &mut bytes::BytesMut, nonce: &[u8; 32]) {
    use bytes::BufMut;
    let mut w = buf.writer();
    let _ = rmp::encode::write_map_len(&mut w, 1);
    let _ = rmp::encode::write_str(&mut w, "nonce");
    let _ = rmp::encode::write_bin(&mut w, nonce);
}

/// Body of a `Proof` frame: `{"target": str, "sig": bin 64}`.
pub fn put_proof(buf: &mut bytes::BytesMut, target: &str, sig: &[u8; 64]) {
    use bytes::BufMut;
    let mut w = buf.writer();
    let _ = rmp::encode::write_map_len(&mut w, 2);
    let _ = rmp::encode::write_str(&mut w, "target");
    let _ = rmp::encode::write_str(&mut w, target);
    let _ = rmp::encode::write_str(&mut w, "sig");
    let _ = rmp::encode::write_bin(&mut w, sig);
}

/// A parsed `Proof` body.
#[derive(Clone, PartialEq, Eq)]
pub struct Proof {
    /// The server address the client signed for (`ip:port`).
    pub target: String,
    /// The Ed25519 signature.
    pub sig: [u8; 64],
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A proof is single-use, but never printed either.
        f.debug_struct("Proof")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Reads a map body's entries, handing each key and the rest of the input to `field`, which
/// consumes the value of the keys it knows (others are stepped over). Bounded by the body.
fn read_map<'a>(
    body: &'a [u8],
    what: &str,
    mut field: impl FnMut(&str, &mut &'a [u8]) -> Result<bool, Error>,
) -> Result<(), Error> {
    let bad = |e: &dyn std::fmt::Display| Error::protocol(format!("malformed {what} frame: {e}"));
    let mut rd = body;
    let n = rmp::decode::read_map_len(&mut rd).map_err(|e| bad(&e))?;
    for _ in 0..n {
        let (key, rest) = rmp::decode::read_str_from_slice(rd).map_err(|e| bad(&e))?;
        rd = rest;
        if !field(key, &mut rd)? {
            decode::skip_value(&mut rd).map_err(|e| bad(&e))?;
        }
    }
    Ok(())
}

/// Reads a `bin` of exactly `N` bytes.
fn read_fixed_bin<const N: usize>(rd: &mut &[u8], what: &str) -> Result<[u8; N], Error> {
    let len = rmp::decode::read_bin_len(rd)
        .map_err(|e| Error::protocol(format!("malformed {what}: {e}")))? as usize;
    if len != N || rd.len() < N {
        return Err(Error::protocol(format!(
            "malformed {what}: expected {N} bytes, got {len}"
        )));
    }
    let (bytes, rest) = rd.split_at(N);
    *rd = rest;
    Ok(bytes.try_into().expect("split at N"))
}

/// Parses a `Challenge` body: the nonce.
pub fn parse_challenge(body: &[u8]) -> Result<[u8; 32], Error> {
    let mut nonce = None;
    read_map(body, "Challenge", |key, rd| {
        if key != "nonce" {
            return Ok(false);
        }
        nonce = Some(read_fixed_bin::<32>(rd, "challenge nonce")?);
        Ok(true)
    })?;
    nonce.ok_or_else(|| Error::protocol("malformed Challenge frame: no `nonce`"))
}

/// Parses a `Proof` body. The target is at most 64 bytes (an `ip:port`).
pub fn parse_proof(body: &[u8]) -> Result<Proof, Error> {
    let (mut target, mut sig) = (None, None);
    read_map(body, "Proof", |key, rd| {
        match key {
            "target" => {
                let (s, rest) = rmp::decode::read_str_from_slice(*rd)
                    .map_err(|e| Error::protocol(format!("malformed Proof target: {e}")))?;
                if s.len() > MAX_PROOF_TARGET_LEN {
                    return Err(Error::protocol(
                        "malformed Proof frame: the target is too long",
                    ));
                }
                *rd = rest;
                target = Some(s.to_owned());
            }
            "sig" => sig = Some(read_fixed_bin::<64>(rd, "proof signature")?),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    match (target, sig) {
        (Some(target), Some(sig)) => Ok(Proof { target, sig }),
        _ => Err(Error::protocol(
            "malformed Proof frame: `target` and `sig` are required",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(hello: &Hello) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        crate::protocol::codec::encode_value(&mut buf, hello).unwrap();
        buf.to_vec()
    }

    fn hello(meta: Metadata) -> Hello {
        Hello {
            protocol: "stardust".into(),
            version: 1,
            agent: "test".into(),
            max_frame: Some(4096),
            meta,
            features: Vec::new(),
            stream_window: None,
        }
    }

    #[test]
    fn features_are_read_and_bounded() {
        let mut sent = hello(Metadata::new());
        sent.features = vec!["discovery.delta".into(), "x.y".into()];
        let got = parse_hello(&encode(&sent), &MetadataLimits::DEFAULT).unwrap();
        assert_eq!(got.features, sent.features);
        let features = Features::from(got.features);
        assert!(features.has("discovery.delta") && !features.has("discovery"));
        // An older client sends none: the key is absent.
        let got = parse_hello(&encode(&hello(Metadata::new())), &MetadataLimits::DEFAULT).unwrap();
        assert!(got.features.is_empty());
        sent.features = (0..=MAX_FEATURES).map(|i| i.to_string()).collect();
        let err = parse_hello(&encode(&sent), &MetadataLimits::DEFAULT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
        sent.features = vec!["x".repeat(MAX_FEATURE_LEN + 1)];
        let err = parse_hello(&encode(&sent), &MetadataLimits::DEFAULT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
        sent.features = Vec::new();
        let mut body = encode(&sent);
        // A features value that is not an array of strings is malformed.
        body[0] += 1;
        rmp::encode::write_str(&mut body, "features").unwrap();
        rmp::encode::write_uint(&mut body, 7).unwrap();
        let err = parse_hello(&body, &MetadataLimits::DEFAULT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    }

    #[test]
    fn map_and_array_forms() {
        let sent = hello([("token", "t"), ("k", "v")].into_iter().collect());
        let got = parse_hello(&encode(&sent), &MetadataLimits::DEFAULT).unwrap();
        assert_eq!(
            (
                got.protocol.as_str(),
                got.version,
                got.agent.as_str(),
                got.max_frame
            ),
            ("stardust", 1, "test", Some(4096))
        );
        assert_eq!(got.meta, sent.meta);
        // ["stardust", 1]
        let short = [
            0x92, 0xa8, b's', b't', b'a', b'r', b'd', b'u', b's', b't', 0x01,
        ];
        let got = parse_hello(&short, &MetadataLimits::DEFAULT).unwrap();
        assert_eq!((got.version, got.max_frame, got.meta.len()), (1, None, 0));
    }

    #[test]
    fn unknown_keys_are_stepped_over_and_required_keys_checked() {
        // {"protocol": "stardust", "future": [[[nil]]], "version": 1}
        let mut body = vec![0x83, 0xa8];
        body.extend_from_slice(b"protocol");
        body.extend_from_slice(&[0xa8]);
        body.extend_from_slice(b"stardust");
        body.extend_from_slice(&[0xa6]);
        body.extend_from_slice(b"future");
        body.extend_from_slice(&[0x91, 0x91, 0x91, 0xc0, 0xa7]);
        body.extend_from_slice(b"version");
        body.push(0x01);
        assert_eq!(
            parse_hello(&body, &MetadataLimits::DEFAULT)
                .unwrap()
                .version,
            1
        );
        let err = parse_hello(&[0x80], &MetadataLimits::DEFAULT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(parse_hello(&[], &MetadataLimits::DEFAULT).is_err());
    }

    #[test]
    fn metadata_over_the_limits_is_refused_with_the_limit_named() {
        let mut limits = MetadataLimits::DEFAULT;
        limits.max_entries = 2;
        let three = hello([("a", "1"), ("b", "2"), ("c", "3")].into_iter().collect());
        let err = parse_hello(&encode(&three), &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        assert!(
            err.message().contains("connection metadata has 3 entries"),
            "{err}"
        );
    }

    #[test]
    fn challenge_and_proof_round_trip_and_bad_bodies_are_refused() {
        let mut buf = bytes::BytesMut::new();
        put_challenge(&mut buf, &[7; 32]);
        assert_eq!(parse_challenge(&buf).unwrap(), [7; 32]);
        let mut buf = bytes::BytesMut::new();
        put_proof(&mut buf, "127.0.0.1:9", &[5; 64]);
        let proof = parse_proof(&buf).unwrap();
        assert_eq!((proof.target.as_str(), proof.sig), ("127.0.0.1:9", [5; 64]));
        assert!(!format!("{proof:?}").contains("5, 5"));
        let mut long = bytes::BytesMut::new();
        put_proof(&mut long, &"1".repeat(65), &[5; 64]);
        for bad in [
            &[][..],
            &[0x80],
            &[0x81, 0xa5, b'n', b'o', b'n', b'c', b'e', 0xc4, 0x01, 0x00],
            &long,
        ] {
            assert!(parse_challenge(bad).is_err());
            assert_eq!(parse_proof(bad).unwrap_err().kind(), ErrorKind::Protocol);
        }
    }

    #[test]
    fn a_logged_hello_shows_no_token() {
        let mut meta = Metadata::new();
        meta.insert("token", "sd1.the-token.signature");
        meta.insert("client", "web-7");
        let shown = format!("{:?}", hello(meta));
        assert!(!shown.contains("the-token"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("web-7"),
            "{shown}"
        );
    }
}
