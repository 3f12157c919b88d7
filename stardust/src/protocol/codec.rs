//! Encoding of user values (arguments and results) as MessagePack.
//!
//! Structs are encoded as maps keyed by field name (not as positional arrays): it costs a few bytes,
//! but a peer in another language can read them without knowing field order, and a field added with
//! `#[serde(default)]` is compatible in both directions. Decoding accepts both forms.
//!
//! Arguments travel as one array, one element per parameter. The array length is forgiving in
//! both directions (see [`decode_args`]), which is what lets a service grow an optional trailing
//! parameter without breaking older peers.

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::zero_copy::CaptureWriter;
use crate::error::{Error, ErrorKind};

/// Appends `value` to `buf` as MessagePack, structs as maps.
pub fn encode_value<T: Serialize + ?Sized>(buf: &mut BytesMut, value: &T) -> Result<(), Error> {
    // Appends like `buf.writer()`, and lets a write queue take large `ZeroCopy` payloads as
    // segments of their own (`zero_copy`).
    let mut ser = rmp_serde::Serializer::new(CaptureWriter(buf)).with_struct_map();
    value.serialize(&mut ser).map_err(Error::encode)
}

/// Decodes a complete MessagePack value of type `T` from `bytes`.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!(
                "response does not match the expected type {}: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

/// Decodes an argument array into the tuple `T` of `arity` elements.
///
/// - Fewer elements than `arity`: the missing trailing ones decode as `nil`, so an `Option`
///   parameter added at the end reads `None` from an older caller (any other type gives a clear
///   [`ErrorKind::InvalidArguments`] error).
/// - More elements than `arity`: the extra trailing ones are ignored, so a newer caller can talk to
///   an older provider that does not know the new optional parameter.
///
/// The common case (exact arity) decodes in place without copying.
pub fn decode_args<T: DeserializeOwned>(bytes: &[u8], arity: usize) -> Result<T, Error> {
    let mut rd = bytes;
    let len = rmp::decode::read_array_len(&mut rd).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArguments,
            format!("arguments must be a MessagePack array: {e}"),
        )
    })? as usize;
    let result = if len == arity {
        rmp_serde::from_slice(bytes)
    } else {
        // Rewrite the header to the expected arity and pad with nils; trailing extras are simply
        // never read.
        let mut fixed = Vec::with_capacity(bytes.len() + arity);
        rmp::encode::write_array_len(&mut fixed, arity as u32).expect("vec write");
        fixed.extend_from_slice(rd);
        fixed.extend(std::iter::repeat_n(0xc0u8, arity.saturating_sub(len)));
        rmp_serde::from_slice(&fixed)
    };
    result.map_err(|e| {
        Error::new(
            ErrorKind::InvalidArguments,
            format!(
                "arguments do not decode as {}: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct PointV2 {
        x: i32,
        y: i32,
        #[serde(default)]
        z: i32,
    }

    fn enc<T: Serialize>(v: &T) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_value(&mut buf, v).unwrap();
        buf.to_vec()
    }

    #[test]
    fn structs_are_maps() {
        // fixmap(2) "x" 1 "y" 2
        assert_eq!(
            enc(&Point { x: 1, y: 2 }),
            vec![0x82, 0xa1, b'x', 0x01, 0xa1, b'y', 0x02]
        );
    }

    #[test]
    fn new_field_with_default_reads_old_data() {
        let v: PointV2 = decode_value(&enc(&Point { x: 1, y: 2 })).unwrap();
        assert_eq!(v, PointV2 { x: 1, y: 2, z: 0 });
    }

    #[test]
    fn results_and_options() {
        let ok: Result<i64, String> = Ok(5);
        let err: Result<i64, String> = Err("no".into());
        // {"Ok": 5} and {"Err": "no"}
        assert_eq!(enc(&ok), vec![0x81, 0xa2, b'O', b'k', 0x05]);
        assert_eq!(
            enc(&err),
            vec![0x81, 0xa3, b'E', b'r', b'r', 0xa2, b'n', b'o']
        );
        assert_eq!(enc(&None::<i32>), vec![0xc0]);
        assert_eq!(enc(&Some(7)), vec![0x07]);
    }

    #[test]
    fn args_exact_missing_and_extra() {
        let exact = enc(&(1i64, 2i64));
        assert_eq!(decode_args::<(i64, i64)>(&exact, 2).unwrap(), (1, 2));
        // An older caller that does not send the new optional third parameter.
        assert_eq!(
            decode_args::<(i64, i64, Option<String>)>(&exact, 3).unwrap(),
            (1, 2, None)
        );
        // A newer caller sending a parameter this provider does not know.
        let extra = enc(&(1i64, 2i64, "new"));
        assert_eq!(decode_args::<(i64, i64)>(&extra, 2).unwrap(), (1, 2));
        // A missing required parameter is a clear error.
        let err = decode_args::<(i64, i64, i64)>(&exact, 3).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArguments);
        // Wrong types too.
        let err = decode_args::<(String,)>(&enc(&(1i64,)), 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArguments);
        // Not an array at all.
        let err = decode_args::<(i64,)>(&[0x05], 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArguments);
    }
}
