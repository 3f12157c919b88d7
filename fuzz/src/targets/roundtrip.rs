//! Checks shared by the targets.

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stardust::__wire::codec;

/// Decodes `bytes` as `T` the way a client decodes a response; if that works, checks that the
/// value's encoding is a fixed point: it decodes again, and encodes to the same bytes.
pub(crate) fn decodes_stably<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = codec::decode_value(bytes).ok()?;
    let first = encode(&value);
    let again: T = codec::decode_value(&first)
        .unwrap_or_else(|e| panic!("a re-encoded {} does not decode: {e}", type_name::<T>()));
    assert_eq!(
        encode(&again),
        first,
        "{} does not re-encode to the same bytes",
        type_name::<T>()
    );
    Some(value)
}

/// `value` encoded as the runtime encodes results and arguments.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode_value(&mut buf, value).expect("decoded values encode");
    buf.to_vec()
}

fn type_name<T>() -> &'static str {
    std::any::type_name::<T>()
}

/// The read sizes a stream is delivered in, from one selector byte: 0 means "as much as the
/// reader asks for"; otherwise a short cycle of sizes from 1 byte up, so frames are split
/// across reads at many different points.
pub(crate) fn chunking(selector: u8) -> Vec<usize> {
    match selector {
        0 => Vec::new(),
        s => {
            let s = usize::from(s);
            vec![s % 17 + 1, s % 5 + 1, s]
        }
    }
}
