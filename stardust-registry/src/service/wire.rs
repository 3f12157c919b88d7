//! The discovery payloads, written from instances encoded once.
//!
//! Every lease keeps its instance encoded (MessagePack, as serde writes it), so a snapshot, a
//! delta or a full list is a few headers and copies of those bytes: no instance is encoded twice,
//! and a change costs its own size, not the list's. The layouts are exactly what serde writes for
//! the `stardust::discovery::api` types (the tests compare them byte for byte), so every client
//! decodes them with serde.

use bytes::{BufMut, Bytes, BytesMut};

/// An instance as the wire carries it (a MessagePack map), shared by every payload built from it.
pub(super) type Encoded = Bytes;

fn w(buf: &mut BytesMut) -> bytes::buf::Writer<&mut BytesMut> {
    buf.writer()
}

fn str_field(buf: &mut BytesMut, key: &str, value: &str) {
    let _ = rmp::encode::write_str(&mut w(buf), key);
    let _ = rmp::encode::write_str(&mut w(buf), value);
}

fn uint_field(buf: &mut BytesMut, key: &str, value: u64) {
    let _ = rmp::encode::write_str(&mut w(buf), key);
    let _ = rmp::encode::write_uint(&mut w(buf), value);
}

fn instances<'a>(buf: &mut BytesMut, list: impl ExactSizeIterator<Item = &'a Encoded>) {
    let _ = rmp::encode::write_array_len(&mut w(buf), list.len() as u32);
    for i in list {
        buf.extend_from_slice(i);
    }
}

/// A MessagePack array of instances (an `InstanceList`'s bytes).
pub(super) fn instance_array<'a>(list: impl ExactSizeIterator<Item = &'a Encoded>) -> Bytes {
    let mut buf = BytesMut::new();
    instances(&mut buf, list);
    buf.freeze()
}

/// What a delta says, before it is encoded.
pub(super) struct DeltaParts<'a> {
    pub(super) service: &'a str,
    pub(super) version_req: &'a str,
    pub(super) epoch: u64,
    pub(super) from: u64,
    pub(super) to: u64,
}

/// A `DiscoveryPush::Delta` payload.
pub(super) fn delta_push<'a>(
    d: &DeltaParts<'_>,
    upserted: impl ExactSizeIterator<Item = &'a Encoded>,
    removed: &[String],
) -> Bytes {
    let mut buf = BytesMut::new();
    let _ = rmp::encode::write_map_len(&mut w(&mut buf), 1);
    let _ = rmp::encode::write_str(&mut w(&mut buf), "Delta");
    let _ = rmp::encode::write_map_len(&mut w(&mut buf), 7);
    str_field(&mut buf, "service", d.service);
    str_field(&mut buf, "version_req", d.version_req);
    uint_field(&mut buf, "epoch", d.epoch);
    uint_field(&mut buf, "from", d.from);
    uint_field(&mut buf, "to", d.to);
    let _ = rmp::encode::write_str(&mut w(&mut buf), "upserted");
    instances(&mut buf, upserted);
    let _ = rmp::encode::write_str(&mut w(&mut buf), "removed");
    let _ = rmp::encode::write_array_len(&mut w(&mut buf), removed.len() as u32);
    for endpoint in removed {
        let _ = rmp::encode::write_str(&mut w(&mut buf), endpoint);
    }
    buf.freeze()
}

/// A `DiscoveryPush::Resync` payload.
pub(super) fn resync_push(service: &str, version_req: &str) -> Bytes {
    let mut buf = BytesMut::new();
    let _ = rmp::encode::write_map_len(&mut w(&mut buf), 1);
    let _ = rmp::encode::write_str(&mut w(&mut buf), "Resync");
    let _ = rmp::encode::write_map_len(&mut w(&mut buf), 2);
    str_field(&mut buf, "service", service);
    str_field(&mut buf, "version_req", version_req);
    buf.freeze()
}

/// A `DiscoveryEvent` payload: the whole list, for subscribers of the first protocol revision.
pub(super) fn full_event<'a>(
    service: &str,
    version_req: &str,
    list: impl ExactSizeIterator<Item = &'a Encoded>,
) -> Bytes {
    let mut buf = BytesMut::new();
    let _ = rmp::encode::write_map_len(&mut w(&mut buf), 3);
    str_field(&mut buf, "service", service);
    str_field(&mut buf, "version_req", version_req);
    let _ = rmp::encode::write_str(&mut w(&mut buf), "instances");
    instances(&mut buf, list);
    buf.freeze()
}

/// An instance encoded as serde encodes it.
pub(super) fn encode_instance(instance: &stardust::discovery::api::Instance) -> Encoded {
    rmp_serde::to_vec_named(instance)
        .expect("an instance always encodes")
        .into()
}

#[cfg(test)]
mod tests {
    use stardust::discovery::api::{DiscoveryDelta, DiscoveryEvent, DiscoveryPush, Instance};

    use super::*;

    fn instance(endpoint: &str, weight: u32) -> Instance {
        Instance {
            app: "calc".into(),
            service: "calc.Calculator".into(),
            version: "1.2.3".into(),
            endpoint: endpoint.into(),
            weight,
            tags: [("zone".to_owned(), "a".to_owned())].into(),
            tls: true,
        }
    }

    #[test]
    fn payloads_are_what_serde_writes() {
        let list = [instance("127.0.0.1:1", 100), instance("127.0.0.1:2", 7)];
        let encoded: Vec<Encoded> = list.iter().map(encode_instance).collect();

        let delta = DiscoveryPush::Delta(DiscoveryDelta {
            service: "calc.Calculator".into(),
            version_req: "^1".into(),
            epoch: u64::MAX,
            from: 3,
            to: 300,
            upserted: list.to_vec(),
            removed: vec!["127.0.0.1:9".into()],
        });
        let parts = DeltaParts {
            service: "calc.Calculator",
            version_req: "^1",
            epoch: u64::MAX,
            from: 3,
            to: 300,
        };
        assert_eq!(
            &delta_push(&parts, encoded.iter(), &["127.0.0.1:9".into()])[..],
            &rmp_serde::to_vec_named(&delta).unwrap()[..]
        );

        let resync = DiscoveryPush::Resync {
            service: "s".into(),
            version_req: "*".into(),
        };
        assert_eq!(
            &resync_push("s", "*")[..],
            &rmp_serde::to_vec_named(&resync).unwrap()[..]
        );

        let event = DiscoveryEvent {
            service: "calc.Calculator".into(),
            version_req: "*".into(),
            instances: list.to_vec(),
        };
        assert_eq!(
            &full_event("calc.Calculator", "*", encoded.iter())[..],
            &rmp_serde::to_vec_named(&event).unwrap()[..]
        );
        assert_eq!(
            &instance_array(encoded.iter())[..],
            &rmp_serde::to_vec_named(&list.to_vec()).unwrap()[..]
        );
    }
}
