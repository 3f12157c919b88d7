//! `stardust_registry::json`: every rule of PROTOCOL.md §12.1 both ways, against the encoding a
//! Stardust provider and consumer really use (`stardust::__wire::codec`, rmp-serde with structs as
//! maps): JSON → MessagePack → a Rust type, and a Rust value → MessagePack → JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use serde_json::{Value, json};
use stardust::__wire::codec::{decode_args, decode_value, encode_value};
use stardust_registry::json::{
    BytesIn, BytesOut, MAX_DEPTH, args_to_msgpack, from_msgpack, to_msgpack,
};

/// `value` as a Stardust peer writes it.
fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_value(&mut buf, value).unwrap();
    buf.to_vec()
}

fn to_mp(json: &Value) -> Vec<u8> {
    to_msgpack(json, BytesIn::Bin).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn from_mp(data: &[u8]) -> Value {
    from_msgpack(data, BytesOut::Base64).unwrap_or_else(|e| panic!("{data:02x?}: {e}"))
}

/// `json` decodes as `value` on the Rust side, `value` comes out as `json`, and `json` survives
/// being printed and parsed again.
#[track_caller]
fn round_trip<T>(json: Value, value: T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded: T = decode_value(&to_mp(&json)).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(decoded, value, "JSON → MessagePack → Rust");
    assert_eq!(from_mp(&enc(&value)), json, "Rust → MessagePack → JSON");
    let text = serde_json::to_string(&json).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json,
        "{text}"
    );
}

fn error(json: &Value) -> String {
    to_msgpack(json, BytesIn::Bin).unwrap_err().to_string()
}

fn decode_error(data: &[u8]) -> String {
    from_msgpack(data, BytesOut::Base64)
        .unwrap_err()
        .to_string()
}

#[test]
fn integers_exact_at_the_extremes_in_the_smallest_format() {
    round_trip(
        json!([i64::MIN, i64::MAX, u64::MAX, 0, -1]),
        (i64::MIN, i64::MAX, u64::MAX, 0u8, -1i8),
    );
    // Byte for byte what rmp-serde writes for an i64/u64 of the same value.
    for n in [
        0, 1, 127, 128, 200, 255, 256, 65535, 65536, -1, -32, -33, -200, -40000,
    ] {
        assert_eq!(to_mp(&json!(n)), enc(&(n as i64)), "{n}");
    }
    for n in [
        u32::MAX as u64 + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX,
    ] {
        assert_eq!(to_mp(&json!(n)), enc(&n), "{n}");
    }
    // Every MessagePack integer format reads back as the same number.
    assert_eq!(from_mp(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5]), json!(5));
    assert_eq!(
        from_mp(&[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
        json!(-2)
    );
    // From text too: serde_json holds u64 and i64 exactly.
    let text = format!("[{}, {}]", u64::MAX, i64::MIN);
    let parsed: Value = serde_json::from_str(&text).unwrap();
    let (max, min): (u64, i64) = decode_value(&to_mp(&parsed)).unwrap();
    assert_eq!((max, min), (u64::MAX, i64::MIN));
}

#[test]
fn floats_as_f64_f32_shortest_and_non_finite_as_markers() {
    round_trip(
        json!([1.5, 0.1, -2.5e-10, 2.0]),
        (1.5f64, 0.1f64, -2.5e-10f64, 2.0f64),
    );
    assert_eq!(to_mp(&json!(1.5)), enc(&1.5f64));
    // An exponent makes a float; an integer is accepted by a float field.
    assert_eq!(to_mp(&serde_json::from_str("1e2").unwrap()), enc(&100.0f64));
    assert_eq!(decode_value::<f64>(&to_mp(&json!(3))).unwrap(), 3.0);
    // f32 prints as its shortest decimal and reads back into an f32 field.
    assert_eq!(from_mp(&enc(&0.1f32)), json!(0.1));
    assert_eq!(decode_value::<f32>(&to_mp(&json!(0.1))).unwrap(), 0.1f32);
    // NaN and the infinities, which JSON cannot hold.
    round_trip(
        json!([{"$float": "Infinity"}, {"$float": "-Infinity"}]),
        (f64::INFINITY, f64::NEG_INFINITY),
    );
    assert_eq!(from_mp(&enc(&f64::NAN)), json!({"$float": "NaN"}));
    assert_eq!(
        from_mp(&enc(&f32::NEG_INFINITY)),
        json!({"$float": "-Infinity"})
    );
    assert!(
        decode_value::<f64>(&to_mp(&json!({"$float": "NaN"})))
            .unwrap()
            .is_nan()
    );
    assert_eq!(
        error(&json!([0, {"points": [1, 2, 3, {"$float": "nan"}]}])),
        r#"[1].points[3].$float: $float takes "NaN", "Infinity" or "-Infinity", not "nan""#
    );
}

#[test]
fn bytes_as_base64_or_hex_markers() {
    let data = ByteBuf::from(vec![1, 2, 3, 0xff]);
    round_trip(json!({"$base64": "AQID/w=="}), data.clone());
    round_trip(json!({"$base64": ""}), ByteBuf::new());
    let packed = enc(&data);
    assert_eq!(packed, [0xc4, 4, 1, 2, 3, 0xff]);
    assert_eq!(
        from_msgpack(&packed, BytesOut::Hex).unwrap(),
        json!({"$hex": "010203ff"})
    );
    for hex in ["010203ff", "010203FF"] {
        let back: ByteBuf = decode_value(&to_mp(&json!({"$hex": hex}))).unwrap();
        assert_eq!(back, data);
    }
    // As an array of integers, byte for byte what a plain Vec<u8> is.
    let array = to_msgpack(&json!({"$hex": "010203ff"}), BytesIn::Array).unwrap();
    assert_eq!(array, enc(&vec![1u8, 2, 3, 0xff]));
    assert_eq!(decode_value::<ByteBuf>(&array).unwrap(), data);
    // A plain Vec<u8> comes out as the array of numbers it is on the wire.
    assert_eq!(from_mp(&enc(&vec![1u8, 2])), json!([1, 2]));
    // A 128-bit integer is 16 bytes of bin.
    let big: i128 =
        decode_value(&to_mp(&json!({"$hex": "00000000000000000000000000000100"}))).unwrap();
    assert_eq!(big, 256);
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    note: Option<String>,
    lines: Vec<Line>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    qty: u32,
    price: f64,
}

#[test]
fn a_struct_is_an_object_keyed_by_field_name() {
    round_trip(
        json!({
            "id": 7,
            "customer": "ada",
            "note": null,
            "lines": [{"sku": "a-1", "qty": 2, "price": 9.5}],
            "signature": {"$base64": "qg=="},
        }),
        Order {
            id: 7,
            customer: "ada".into(),
            note: None,
            lines: vec![Line {
                sku: "a-1".into(),
                qty: 2,
                price: 9.5,
            }],
            signature: vec![0xaa],
        },
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(u32),
    Rect(u32, u32),
    Dot { x: i32 },
}

#[test]
fn enums_in_all_four_shapes_need_no_rule() {
    round_trip(
        json!(["Empty", {"Circle": 2}, {"Rect": [1, 2]}, {"Dot": {"x": -1}}]),
        vec![
            Shape::Empty,
            Shape::Circle(2),
            Shape::Rect(1, 2),
            Shape::Dot { x: -1 },
        ],
    );
    round_trip(json!({"Ok": 5}), Ok::<i64, String>(5));
    round_trip(json!({"Err": "no"}), Err::<i64, String>("no".into()));
}

#[test]
fn option_is_null_or_the_value() {
    round_trip(
        json!([null, 7, "x"]),
        (None::<i32>, Some(7), Some("x".to_string())),
    );
    round_trip(json!([null, true, false]), ((), true, false));
}

#[test]
fn maps_with_integer_keys_use_the_map_marker() {
    let map = BTreeMap::from([(1u32, "one".to_string()), (2, "two".to_string())]);
    round_trip(json!({"$map": [[1, "one"], [2, "two"]]}), map);
    round_trip(json!({}), BTreeMap::<u32, String>::new());
    // String keys are an object; so is an empty map.
    round_trip(
        json!({"a": 1, "b c": 2}),
        HashMap::from([("a".to_string(), 1), ("b c".to_string(), 2)]),
    );
    // A one-key map named like a marker is not mistaken for one.
    let tricky = HashMap::from([("$hex".to_string(), "zz".to_string())]);
    round_trip(json!({"$map": [["$hex", "zz"]]}), tricky);
    // A repeated key (no Rust map writes one) keeps both entries, in order.
    let repeated = [0x82, 0xa1, b'a', 1, 0xa1, b'a', 2];
    let json = from_mp(&repeated);
    assert_eq!(json, json!({"$map": [["a", 1], ["a", 2]]}));
    assert_eq!(to_mp(&json), repeated);
}

#[test]
fn nested_arrays() {
    round_trip(
        json!([[[1, 2], []], [[3]], []]),
        vec![vec![vec![1, 2], vec![]], vec![vec![3]], vec![]],
    );
    round_trip(
        json!([1, "a", [2.5, null]]),
        (1u8, 'a', (2.5f32, None::<u8>)),
    );
}

#[test]
fn arguments_are_a_json_array() {
    let packed = args_to_msgpack(&json!([1, "a", {"Circle": 2}, null])).unwrap();
    let (a, b, c, d): (i64, String, Shape, Option<u8>) = decode_args(&packed, 4).unwrap();
    assert_eq!((a, b.as_str(), c, d), (1, "a", Shape::Circle(2), None));
    assert_eq!(args_to_msgpack(&json!([])).unwrap(), [0x90]);
    assert_eq!(
        args_to_msgpack(&json!({"a": 1})).unwrap_err().to_string(),
        "arguments are a JSON array, one element per argument: [1, 2] (got an object)"
    );
    assert!(args_to_msgpack(&json!(5)).unwrap_err().path().is_empty());
}

#[test]
fn bad_bytes_name_where() {
    let err = args_to_msgpack(&json!([1, {"data": {"$base64": "AQ!D"}}])).unwrap_err();
    assert_eq!(err.path(), "[1].data.$base64");
    assert!(
        err.to_string()
            .starts_with("[1].data.$base64: invalid base64"),
        "{err}"
    );
    assert!(error(&json!({"$base64": "AQI"})).contains("invalid base64"));
    assert!(error(&json!({"$hex": "abc"})).contains("odd"));
    assert!(error(&json!({"$hex": "zz"})).contains("invalid hex"));
    assert_eq!(
        error(&json!({"$hex": 1})),
        "$hex: $hex takes a string of bytes, not a number"
    );
    assert_eq!(
        error(&json!({"odd key": {"$map": [[1, 2], [3]]}})),
        r#"["odd key"].$map[1]: a $map entry is a [key, value] pair, not an array"#
    );
    assert_eq!(
        error(&json!({"$map": [[{"$hex": "x"}, 2]]})),
        "$map[0][0].$hex: invalid hex: 1 digits, an odd number"
    );
}

fn nested_json(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

fn nested_msgpack(levels: usize) -> Vec<u8> {
    let mut data = vec![0x91; levels];
    data.push(1);
    data
}

#[test]
fn depth_is_bounded_both_ways() {
    assert_eq!(
        from_mp(&to_mp(&nested_json(MAX_DEPTH))),
        nested_json(MAX_DEPTH)
    );
    assert!(error(&nested_json(MAX_DEPTH + 1)).contains("nested deeper than 128"));
    // Decoding: the limit, and far beyond it without exhausting the stack.
    assert_eq!(from_mp(&nested_msgpack(MAX_DEPTH)), nested_json(MAX_DEPTH));
    for levels in [MAX_DEPTH + 1, 1_000_000] {
        let err = from_msgpack(&nested_msgpack(levels), BytesOut::Base64).unwrap_err();
        assert!(err.message().contains("nested deeper than 128"), "{err}");
        assert_eq!(err.path(), "[0]".repeat(MAX_DEPTH));
    }
    // A map at the limit, and a `$map` counts as one level.
    let deep_map = (0..MAX_DEPTH).fold(json!(1), |inner, _| json!({"$map": [[1, inner]]}));
    let packed = to_mp(&deep_map);
    assert_eq!(from_mp(&packed), deep_map);
    assert!(error(&json!([deep_map])).contains("nested deeper"));
}

#[test]
fn malformed_or_foreign_msgpack_is_an_error() {
    // An ext type, inside a map: the path is where it would have been in the JSON.
    let err = decode_error(&[0x81, 0xa1, b'a', 0x92, 1, 0xd4, 1, 0]);
    assert_eq!(
        err,
        "a[1]: MessagePack ext type (0xd4 at offset 5): Stardust uses none"
    );
    assert!(decode_error(&[0xc1]).contains("reserved"));
    assert!(decode_error(&[1, 2]).contains("1 bytes left after the value"));
    assert!(decode_error(&[0x92, 1]).contains("ends early"));
    assert!(decode_error(&[]).contains("ends early"));
    // A header claiming 4 billion elements is refused before anything is allocated.
    assert!(decode_error(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1]).contains("ends early"));
    assert!(decode_error(&[0xdf, 0xff, 0xff, 0xff, 0xff, 1, 1]).contains("ends early"));
    assert!(decode_error(&[0xa2, 0xff, 0xfe]).contains("str at offset 1"));
    // A non-str key's error path.
    assert_eq!(
        decode_error(&[0x81, 0x01, 0xc1]),
        "$map[0][1]: invalid MessagePack: the reserved marker 0xc1 at offset 2"
    );
}

#[test]
fn the_examples_of_protocol_section_12_1() {
    let args = json!([{"id": 7, "sig": {"$hex": "aa"}, "tags": {"$map": [[1, "a"]]}}]);
    let expected = "91 83 a2 69 64 07 a3 73 69 67 c4 01 aa a4 74 61 67 73 81 01 a1 61";
    let hex: Vec<String> = args_to_msgpack(&args)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex.join(" "), expected);
    assert_eq!(args_to_msgpack(&json!([1, 2])).unwrap(), [0x92, 1, 2]);
    assert_eq!(to_mp(&json!(-200)), [0xd1, 0xff, 0x38]);
    assert_eq!(
        to_mp(&json!(u64::MAX)),
        [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    // `-0` and integers beyond u64 are floats to serde_json.
    assert_eq!(to_mp(&serde_json::from_str("-0").unwrap()), enc(&-0.0f64));
    assert_eq!(
        to_mp(&serde_json::from_str("18446744073709551616").unwrap()),
        enc(&18446744073709551616.0f64)
    );
    // Only a one-member object with a marker key is a marker.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Dollar {
        #[serde(rename = "$base64")]
        b: String,
        n: u8,
    }
    let dollar = Dollar {
        b: "AQ==".into(),
        n: 1,
    };
    round_trip(json!({"$base64": "AQ==", "n": 1}), dollar);
    round_trip(json!({"$x": 1}), HashMap::from([("$x".to_string(), 1)]));
}
