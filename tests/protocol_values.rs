//! Checks `docs/PROTOCOL.md` against the implementation: the encoding of user values
//! (section 12) and the compatibility rules (section 13), with the runtime's public
//! `stardust::__wire::codec` API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stardust::__wire::codec;
use stardust::ErrorKind;

#[path = "common/doc_frames.rs"]
mod doc_frames;
#[path = "common/protocol.rs"]
mod protocol;
use doc_frames::hex;
use protocol::{dec, enc};

// ---------------------------------------------------------------------------------------------
// Section 12: encoding of user values
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Color {
    Red,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Circle(i32),
    Rect(i32, i32),
    Dot { x: i32 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Meters(i32);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pair(i32, i32);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Marker;

#[test]
fn integers_use_the_smallest_form() {
    assert_eq!(enc(&1i64), [0x01]);
    assert_eq!(enc(&127u64), [0x7f]);
    assert_eq!(enc(&200i64), [0xcc, 0xc8]);
    assert_eq!(enc(&300u64), [0xcd, 0x01, 0x2c]);
    assert_eq!(enc(&70_000i32), [0xce, 0x00, 0x01, 0x11, 0x70]);
    assert_eq!(
        enc(&u64::MAX),
        [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(enc(&-1i64), [0xff]);
    assert_eq!(enc(&-32i8), [0xe0]);
    assert_eq!(enc(&-33i64), [0xd0, 0xdf]);
    assert_eq!(enc(&-200i64), [0xd1, 0xff, 0x38]);
    assert_eq!(enc(&5_000_000u64), [0xce, 0x00, 0x4c, 0x4b, 0x40]);
    // Decoders accept any integer format whose value fits.
    assert_eq!(dec::<u8>(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap(), 5);
    assert_eq!(dec::<i64>(&[0xcc, 0xc8]).unwrap(), 200);
    assert_eq!(dec::<u64>(&[0xd0, 0x05]).unwrap(), 5);
    assert!(dec::<u8>(&[0xcd, 0x01, 0x2c]).is_err());
    assert!(dec::<u32>(&[0xff]).is_err());
    // 128-bit integers are 16 bytes of bin, big-endian.
    let mut expected = vec![0xc4, 0x10];
    expected.extend_from_slice(&1u128.to_be_bytes());
    assert_eq!(enc(&1u128), expected);
}

#[test]
fn scalars_and_strings() {
    assert_eq!(
        enc(&1.5f64),
        [0xcb, 0x3f, 0xf8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
    );
    assert_eq!(enc(&1.5f32), [0xca, 0x3f, 0xc0, 0x00, 0x00]);
    assert_eq!(enc(&true), [0xc3]);
    assert_eq!(enc(&false), [0xc2]);
    assert_eq!(enc("hi"), [0xa2, b'h', b'i']);
    assert_eq!(enc(&'x'), [0xa1, b'x']);
    let s = "a".repeat(32);
    assert_eq!(&enc(&s)[..2], [0xd9, 0x20]);
    let s = "a".repeat(256);
    assert_eq!(&enc(&s)[..3], [0xda, 0x01, 0x00]);
}

#[test]
fn structs_are_maps_and_decoders_accept_arrays() {
    let map = [0x82, 0xa1, b'x', 0x01, 0xa1, b'y', 0x02];
    assert_eq!(enc(&Point { x: 1, y: 2 }), map);
    assert_eq!(dec::<Point>(&map).unwrap(), Point { x: 1, y: 2 });
    // Keys in any order.
    assert_eq!(
        dec::<Point>(&[0x82, 0xa1, b'y', 0x02, 0xa1, b'x', 0x01]).unwrap(),
        Point { x: 1, y: 2 }
    );
    // The positional array form is accepted too...
    assert_eq!(
        dec::<Point>(&[0x92, 0x01, 0x02]).unwrap(),
        Point { x: 1, y: 2 }
    );
    // ...but must not be longer than the struct.
    assert!(dec::<Point>(&[0x93, 0x01, 0x02, 0x03]).is_err());
    // Tuple structs are arrays, newtype structs their inner value, unit structs an empty array.
    assert_eq!(enc(&Pair(1, 2)), [0x92, 0x01, 0x02]);
    assert_eq!(enc(&Meters(5)), [0x05]);
    assert_eq!(enc(&Marker), [0x90]);
    assert_eq!(dec::<Marker>(&[0x90]).unwrap(), Marker);
}

#[test]
fn tuples_vecs_and_maps() {
    assert_eq!(enc(&(1i64, "a")), [0x92, 0x01, 0xa1, b'a']);
    assert_eq!(enc(&vec![1u32, 2, 3]), [0x93, 0x01, 0x02, 0x03]);
    assert_eq!(enc(&[1u8, 2]), [0x92, 0x01, 0x02]);
    let m: BTreeMap<String, i32> = [("a".to_owned(), 1)].into_iter().collect();
    assert_eq!(enc(&m), [0x81, 0xa1, b'a', 0x01]);
    // Tuples must have exactly their length.
    assert!(dec::<(i64, i64)>(&[0x93, 0x01, 0x02, 0x03]).is_err());
    assert!(dec::<(i64, i64)>(&[0x91, 0x01]).is_err());
}

#[test]
fn enums_are_externally_tagged() {
    assert_eq!(enc(&Color::Red), [0xa3, b'R', b'e', b'd']);
    assert_eq!(
        enc(&Shape::Circle(2)),
        [0x81, 0xa6, b'C', b'i', b'r', b'c', b'l', b'e', 0x02]
    );
    assert_eq!(
        enc(&Shape::Rect(1, 2)),
        [0x81, 0xa4, b'R', b'e', b'c', b't', 0x92, 0x01, 0x02]
    );
    assert_eq!(
        enc(&Shape::Dot { x: 1 }),
        [0x81, 0xa3, b'D', b'o', b't', 0x81, 0xa1, b'x', 0x01]
    );
    for v in [Shape::Circle(2), Shape::Rect(1, 2), Shape::Dot { x: 1 }] {
        assert_eq!(dec::<Shape>(&enc(&v)).unwrap(), v);
    }
    assert_eq!(dec::<Color>(&[0xa3, b'R', b'e', b'd']).unwrap(), Color::Red);
}

#[test]
fn options_results_and_unit() {
    assert_eq!(enc(&None::<i32>), [0xc0]);
    assert_eq!(enc(&Some(7i32)), [0x07]);
    assert_eq!(enc(&Some("x")), [0xa1, b'x']);
    assert_eq!(dec::<Option<i32>>(&[0xc0]).unwrap(), None);
    assert_eq!(dec::<Option<i32>>(&[0x07]).unwrap(), Some(7));

    assert_eq!(enc(&Ok::<i64, String>(5)), [0x81, 0xa2, b'O', b'k', 0x05]);
    assert_eq!(enc(&Ok::<i64, String>(2)), [0x81, 0xa2, b'O', b'k', 0x02]);
    // The `div(1, 0)` example of section 4.
    assert_eq!(
        enc(&Err::<i64, String>("division by zero".into())),
        hex("
            81                                    # fixmap, 1 entry
            a3 45 72 72                           # \"Err\"
            b0 64 69 76 69 73 69 6f 6e 20 62 79   # fixstr(16) \"division by zero\"
               20 7a 65 72 6f
            ")
    );
    assert_eq!(
        dec::<Result<i64, String>>(&[0x81, 0xa3, b'E', b'r', b'r', 0xa1, b'x']).unwrap(),
        Err("x".to_owned())
    );

    // A unit return value is nil.
    assert_eq!(enc(&()), [0xc0]);
    dec::<()>(&[0xc0]).unwrap();
}

#[test]
fn bytes_are_bin_only_with_serde_bytes_but_decode_either_way() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Blob {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }
    let buf = serde_bytes::ByteBuf::from(vec![1, 2, 3]);
    assert_eq!(enc(&buf), [0xc4, 0x03, 0x01, 0x02, 0x03]);
    assert_eq!(
        enc(serde_bytes::Bytes::new(&[1, 2, 3])),
        [0xc4, 0x03, 0x01, 0x02, 0x03]
    );
    assert_eq!(
        enc(&Blob {
            data: vec![1, 2, 3]
        }),
        [
            0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 0x03, 0x01, 0x02, 0x03
        ]
    );
    // A plain Vec<u8> is an array of integers.
    assert_eq!(enc(&vec![1u8, 2, 3]), [0x93, 0x01, 0x02, 0x03]);
    // Decoders accept both forms, whichever way the field is declared.
    assert_eq!(
        dec::<serde_bytes::ByteBuf>(&[0x93, 0x01, 0x02, 0x03])
            .unwrap()
            .into_vec(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<serde_bytes::ByteBuf>(&[0xc4, 0x03, 0x01, 0x02, 0x03])
            .unwrap()
            .into_vec(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Vec<u8>>(&[0xc4, 0x03, 0x01, 0x02, 0x03]).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Vec<u8>>(&[0x93, 0x01, 0x02, 0x03]).unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        dec::<Blob>(&[0x81, 0xa4, b'd', b'a', b't', b'a', 0x93, 0x01, 0x02, 0x03]).unwrap(),
        Blob {
            data: vec![1, 2, 3]
        }
    );
}

#[test]
fn argument_arrays_are_forgiving() {
    let exact = enc(&(1i64, 2i64));
    assert_eq!(exact, [0x92, 0x01, 0x02]);
    assert_eq!(codec::decode_args::<(i64, i64)>(&exact, 2).unwrap(), (1, 2));
    // Missing trailing argument: nil, so an Option reads None...
    assert_eq!(
        codec::decode_args::<(i64, i64, Option<String>)>(&exact, 3).unwrap(),
        (1, 2, None)
    );
    // ...and any other type is InvalidArguments.
    assert_eq!(
        codec::decode_args::<(i64, i64, i64)>(&exact, 3)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
    // Extra trailing arguments are ignored.
    let extra = enc(&(1i64, 2i64, "new", 4i64));
    assert_eq!(codec::decode_args::<(i64, i64)>(&extra, 2).unwrap(), (1, 2));
    // Not an array, or a wrong type: InvalidArguments.
    assert_eq!(
        codec::decode_args::<(i64,)>(&[0x01], 1).unwrap_err().kind(),
        ErrorKind::InvalidArguments
    );
    assert_eq!(
        codec::decode_args::<(i64, i64)>(&[0x92, 0xa1, b'x', 0x02], 2)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
    // A method without parameters is sent an empty array.
    assert_eq!(enc(&stardust::__private::NoArgs), [0x90]);
}

// ---------------------------------------------------------------------------------------------
// Section 13: compatibility rules
// ---------------------------------------------------------------------------------------------

mod v1 {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct User {
        pub name: String,
        pub age: u32,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub enum Status {
        Active,
        Banned,
    }
}

mod v2 {
    use serde::{Deserialize, Serialize};

    /// v1 + a field with a default + an optional field.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct User {
        pub name: String,
        pub age: u32,
        #[serde(default)]
        pub email: String,
        pub nickname: Option<String>,
    }

    /// v1 with a required field added.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserStrict {
        pub name: String,
        pub age: u32,
        pub email: String,
    }

    /// v1 without `age`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserNoAge {
        pub name: String,
    }

    /// v1 with `name` renamed to `full_name`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamed {
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with `name` renamed but carrying a default.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamedDefault {
        #[serde(default)]
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with `name` renamed in Rust only.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserRenamedKeepWire {
        #[serde(rename = "name")]
        pub full_name: String,
        pub age: u32,
    }

    /// v1 with the fields reordered.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub struct UserReordered {
        pub age: u32,
        pub name: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    pub enum Status {
        Active,
        Banned,
        Suspended,
    }
}

fn old_user() -> v1::User {
    v1::User {
        name: "ann".into(),
        age: 30,
    }
}

#[test]
fn adding_fields() {
    // Field with #[serde(default)] and Option field: new reads old...
    assert_eq!(
        dec::<v2::User>(&enc(&old_user())).unwrap(),
        v2::User {
            name: "ann".into(),
            age: 30,
            email: String::new(),
            nickname: None
        }
    );
    // ...and old reads new (the unknown keys are ignored).
    let new = v2::User {
        name: "ann".into(),
        age: 30,
        email: "a@x".into(),
        nickname: Some("a".into()),
    };
    assert_eq!(dec::<v1::User>(&enc(&new)).unwrap(), old_user());
    // A required field breaks new readers of old data.
    assert_eq!(
        dec::<v2::UserStrict>(&enc(&old_user())).unwrap_err().kind(),
        ErrorKind::Decode
    );
}

#[test]
fn removing_renaming_and_reordering_fields() {
    // New reader without `age` ignores it in old data.
    assert_eq!(
        dec::<v2::UserNoAge>(&enc(&old_user())).unwrap(),
        v2::UserNoAge { name: "ann".into() }
    );
    // Old reader that requires `age` fails on new data.
    assert!(dec::<v1::User>(&enc(&v2::UserNoAge { name: "ann".into() })).is_err());
    // Renaming breaks, both ways...
    assert!(dec::<v2::UserRenamed>(&enc(&old_user())).is_err());
    let renamed = v2::UserRenamed {
        full_name: "ann".into(),
        age: 30,
    };
    assert!(dec::<v1::User>(&enc(&renamed)).is_err());
    // ...or, with a default, silently loses the value.
    assert_eq!(
        dec::<v2::UserRenamedDefault>(&enc(&old_user()))
            .unwrap()
            .full_name,
        ""
    );
    // #[serde(rename)] keeps the wire name.
    assert_eq!(
        dec::<v2::UserRenamedKeepWire>(&enc(&old_user()))
            .unwrap()
            .full_name,
        "ann"
    );
    // Reordering is harmless.
    assert_eq!(
        dec::<v2::UserReordered>(&enc(&old_user())).unwrap(),
        v2::UserReordered {
            age: 30,
            name: "ann".into()
        }
    );
}

#[test]
fn optional_trailing_argument() {
    // Old caller: add(a, b). New provider: add(a, b, label: Option<String>).
    let old_call = enc(&(1i64, 2i64));
    assert_eq!(
        codec::decode_args::<(i64, i64, Option<String>)>(&old_call, 3).unwrap(),
        (1, 2, None)
    );
    // New caller to an old provider: the extra element is ignored.
    let new_call = enc(&(1i64, 2i64, Some("sum")));
    assert_eq!(
        codec::decode_args::<(i64, i64)>(&new_call, 2).unwrap(),
        (1, 2)
    );
    // A non-Option added parameter breaks old callers.
    assert_eq!(
        codec::decode_args::<(i64, i64, String)>(&old_call, 3)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
}

#[test]
fn adding_enum_variants() {
    // Old values still decode in new peers.
    assert_eq!(
        dec::<v2::Status>(&enc(&v1::Status::Banned)).unwrap(),
        v2::Status::Banned
    );
    // The new variant fails in old peers: as a response (Decode, locally)...
    assert_eq!(
        dec::<v1::Status>(&enc(&v2::Status::Suspended))
            .unwrap_err()
            .kind(),
        ErrorKind::Decode
    );
    // ...or as an argument (InvalidArguments, sent back in an Error frame).
    assert_eq!(
        codec::decode_args::<(v1::Status,)>(&enc(&(v2::Status::Suspended,)), 1)
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArguments
    );
}

#[test]
fn widening_integers() {
    assert_eq!(dec::<i64>(&enc(&5i32)).unwrap(), 5);
    assert_eq!(dec::<i32>(&enc(&5i64)).unwrap(), 5);
    assert!(dec::<i32>(&enc(&(i64::from(i32::MAX) + 1))).is_err());
}
