//! JSON ↔ MessagePack for values in Stardust's encoding: what an operator types to call a method
//! (`stardust-registry call SERVICE METHOD ARGS_JSON`, the console's call form) and reads back.
//!
//! The rules are section 12.1 of `docs/PROTOCOL.md`. In short: nil ↔ `null`, bool, str ↔
//! string, array, a map with str keys ↔ object, integers ↔ numbers without a fraction (u64 and
//! i64 exactly), floats ↔ numbers with a fraction or exponent. Enums need nothing special
//! (`"Red"`, `{"Circle": 2}`, `{"Rect": [1, 2]}`, `{"Dot": {"x": 1}}`, as serde writes them).
//! What JSON cannot say is a one-key object with a `$` key: bin is `{"$base64": "AQID"}` or
//! `{"$hex": "010203"}` ([`BytesOut`]), a map with a key that is not a str is
//! `{"$map": [[1, "one"], [2, "two"]]}`, NaN and ±∞ are `{"$float": "NaN"}`, `"Infinity"`,
//! `"-Infinity"`. Input accepts the same forms, so what Stardust writes survives MessagePack →
//! JSON → MessagePack; a real one-key map named like a marker comes out in the `$map` form. Ext
//! types are refused. Limits ([`MAX_DEPTH`], [`MAX_BYTES`], [`MAX_VALUES`]) keep hostile input
//! from exhausting the stack or memory; a [`ConvertError`] names the JSON path where it failed.
//!
//! ```
//! use serde_json::json;
//! use stardust_registry::json::{BytesIn, BytesOut, args_to_msgpack, from_msgpack, to_msgpack};
//!
//! // `add(1, 2)`: the argument array of a call.
//! assert_eq!(args_to_msgpack(&json!([1, 2])).unwrap(), [0x92, 0x01, 0x02]);
//! // Bytes are explicit: a JSON string is a MessagePack str.
//! let bin = to_msgpack(&json!({"$hex": "0102"}), BytesIn::Bin).unwrap();
//! assert_eq!(bin, [0xc4, 0x02, 0x01, 0x02]);
//! assert_eq!(from_msgpack(&bin, BytesOut::Base64).unwrap(), json!({"$base64": "AQI="}));
//! ```

use std::collections::HashSet;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rmp::Marker;
use serde_json::{Map, Number, Value};

type Error = ConvertError;

/// The deepest nesting of arrays and maps converted, in either direction (the argument array of
/// a call counts as one level). serde_json's parser has the same limit by default.
pub const MAX_DEPTH: usize = 128;

/// The largest MessagePack value converted, in either direction: the protocol's default frame
/// limit (16 MiB), which a call's arguments or result must fit anyway.
pub const MAX_BYTES: usize = 16 << 20;

/// The most values (counting each map key) one MessagePack value may hold to be turned into
/// JSON: a byte of MessagePack can become dozens of bytes of `serde_json::Value`.
pub const MAX_VALUES: usize = 1 << 20;

/// The marker keys: a one-key JSON object with one of these keys is not a map.
const BASE64: &str = "$base64";
const HEX: &str = "$hex";
const MAP: &str = "$map";
const FLOAT: &str = "$float";
const MARKERS: [&str; 4] = [BASE64, HEX, MAP, FLOAT];

/// How a byte marker (`{"$base64": ...}`, `{"$hex": ...}`) is written as MessagePack.
///
/// Both forms decode into both kinds of Rust byte fields (`serde_bytes` and a plain `Vec<u8>`),
/// see §12 of the protocol; they differ only in size and in what a peer in another language sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BytesIn {
    /// bin, as `serde_bytes` fields and `bytes::Bytes` are written (the default).
    #[default]
    Bin,
    /// An array of integers, as a plain `Vec<u8>` or `[u8; N]` is written.
    Array,
}

/// How MessagePack bin is shown in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BytesOut {
    /// `{"$base64": "AQID"}`: standard alphabet, with padding (the default).
    #[default]
    Base64,
    /// `{"$hex": "010203"}`: lowercase.
    Hex,
}

/// Why a value could not be converted, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    path: String,
    message: String,
}

impl ConvertError {
    /// Where in the JSON value the conversion failed, e.g. `[1].points[3]` (empty at the top
    /// level). For [`from_msgpack`] it is where the value would have been in the JSON.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What went wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConvertError {}

/// Encodes `value` as MessagePack in Stardust's encoding: what a Rust peer decodes into the
/// type the JSON describes (see the [module](self) documentation for the rules).
pub fn to_msgpack(value: &Value, bytes: BytesIn) -> Result<Vec<u8>, ConvertError> {
    let mut enc = Encoder {
        out: Vec::new(),
        bytes,
    };
    enc.value(value, &Path::Root, 0)?;
    if enc.out.len() > MAX_BYTES {
        return Err(Path::Root.error(format!(
            "the MessagePack would be {} bytes, over the limit of {MAX_BYTES}",
            enc.out.len()
        )));
    }
    Ok(enc.out)
}

/// Encodes the arguments of a call: `args` must be a JSON array, one element per parameter of
/// the method (`[1, 2]` for `add(a, b)`, `[]` for none); it becomes the MessagePack argument
/// array of the request. Byte markers become bin.
pub fn args_to_msgpack(args: &Value) -> Result<Vec<u8>, ConvertError> {
    if !args.is_array() {
        return Err(Path::Root.error(format!(
            "arguments are a JSON array, one element per argument: [1, 2] (got {})",
            kind(args)
        )));
    }
    to_msgpack(args, BytesIn::Bin)
}

/// Decodes one complete MessagePack value (a call's result, an argument array, a notification's
/// payload) into JSON; bin becomes a byte marker in the form `bytes` says.
pub fn from_msgpack(data: &[u8], bytes: BytesOut) -> Result<Value, ConvertError> {
    if data.len() > MAX_BYTES {
        return Err(Path::Root.error(format!(
            "{} bytes of MessagePack, over the limit of {MAX_BYTES}",
            data.len()
        )));
    }
    let mut dec = Decoder {
        data,
        pos: 0,
        values: 0,
        bytes,
    };
    let value = dec.value(&Path::Root, 0)?;
    if dec.pos != data.len() {
        return Err(Path::Root.error(format!(
            "{} bytes left after the value (at offset {})",
            data.len() - dec.pos,
            dec.pos
        )));
    }
    Ok(value)
}

/// Where a conversion is: a chain of steps on the stack, only turned into text for an error.
enum Path<'a> {
    Root,
    /// An array element.
    Index(&'a Path<'a>, usize),
    /// An object member (or a marker object's key).
    Key(&'a Path<'a>, &'a str),
    /// Entry `i` of a `$map`: its key (`[i][0]`) or its value (`[i][1]`).
    Entry(&'a Path<'a>, usize, u8),
}

impl Path<'_> {
    fn write(&self, out: &mut String) {
        use fmt::Write as _;
        match self {
            Path::Root => {}
            Path::Index(parent, i) => {
                parent.write(out);
                let _ = write!(out, "[{i}]");
            }
            Path::Key(parent, key) => {
                parent.write(out);
                let plain = key
                    .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$')
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
                if !plain {
                    let quoted = serde_json::to_string(key).unwrap_or_default();
                    let _ = write!(out, "[{quoted}]");
                } else if out.is_empty() {
                    out.push_str(key);
                } else {
                    let _ = write!(out, ".{key}");
                }
            }
            Path::Entry(parent, i, part) => {
                Path::Key(parent, MAP).write(out);
                let _ = write!(out, "[{i}][{part}]");
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> ConvertError {
        let mut path = String::new();
        self.write(&mut path);
        ConvertError {
            path,
            message: message.into(),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The depth inside an array or map at `depth`, unless that is over [`MAX_DEPTH`].
fn deeper(depth: usize, path: &Path) -> Result<usize, Error> {
    match depth < MAX_DEPTH {
        true => Ok(depth + 1),
        false => Err(path.error(format!("nested deeper than {MAX_DEPTH} arrays and maps"))),
    }
}

/// A length as MessagePack's u32 length field.
fn len32(len: usize, what: &str, path: &Path) -> Result<u32, Error> {
    u32::try_from(len)
        .map_err(|_| path.error(format!("{what} of {len} is too long for MessagePack")))
}

struct Encoder {
    out: Vec<u8>,
    bytes: BytesIn,
}

// Writing to a Vec cannot fail: the `expect`s below never fire.
const VEC: &str = "writing to a Vec cannot fail";

impl Encoder {
    fn value(&mut self, value: &Value, path: &Path, depth: usize) -> Result<(), Error> {
        match value {
            Value::Null => rmp::encode::write_nil(&mut self.out).expect(VEC),
            Value::Bool(b) => rmp::encode::write_bool(&mut self.out, *b).expect(VEC),
            Value::Number(n) => self.number(n),
            Value::String(s) => {
                len32(s.len(), "a string", path)?;
                rmp::encode::write_str(&mut self.out, s).expect(VEC);
            }
            Value::Array(items) => {
                let depth = deeper(depth, path)?;
                let len = len32(items.len(), "an array", path)?;
                rmp::encode::write_array_len(&mut self.out, len).expect(VEC);
                for (i, item) in items.iter().enumerate() {
                    self.value(item, &Path::Index(path, i), depth)?;
                }
            }
            Value::Object(map) => {
                if map.len() == 1 {
                    let (key, inner) = map.iter().next().expect("one entry");
                    if MARKERS.contains(&key.as_str()) {
                        return self.marker(key, inner, path, depth);
                    }
                }
                let depth = deeper(depth, path)?;
                let len = len32(map.len(), "an object", path)?;
                rmp::encode::write_map_len(&mut self.out, len).expect(VEC);
                for (key, inner) in map {
                    rmp::encode::write_str(&mut self.out, key).expect(VEC);
                    self.value(inner, &Path::Key(path, key), depth)?;
                }
            }
        }
        Ok(())
    }

    fn number(&mut self, n: &Number) {
        // serde_json holds a number as u64 (≥ 0), i64 (< 0) or f64 (a fraction or an exponent,
        // or an integer outside i64::MIN..=u64::MAX); integers get the smallest format, as
        // rmp_serde writes them.
        if let Some(u) = n.as_u64() {
            rmp::encode::write_uint(&mut self.out, u).expect(VEC);
        } else if let Some(i) = n.as_i64() {
            rmp::encode::write_sint(&mut self.out, i).expect(VEC);
        } else {
            let f = n.as_f64().unwrap_or(f64::NAN);
            rmp::encode::write_f64(&mut self.out, f).expect(VEC);
        }
    }

    /// A one-key object `{key: inner}` with a marker key, at `parent`.
    fn marker(&mut self, key: &str, inner: &Value, at: &Path, depth: usize) -> Result<(), Error> {
        let path = &Path::Key(at, key);
        match key {
            BASE64 | HEX => {
                let Value::String(text) = inner else {
                    return Err(path.error(format!(
                        "{key} takes a string of bytes, not {}",
                        kind(inner)
                    )));
                };
                let data = if key == BASE64 {
                    STANDARD.decode(text).map_err(|e| {
                        path.error(format!("invalid base64 (standard, padded): {e}"))
                    })?
                } else {
                    decode_hex(text).map_err(|e| path.error(e))?
                };
                let len = len32(data.len(), "bytes", path)?;
                match self.bytes {
                    BytesIn::Bin => {
                        rmp::encode::write_bin(&mut self.out, &data).expect(VEC);
                    }
                    BytesIn::Array => {
                        deeper(depth, path)?;
                        rmp::encode::write_array_len(&mut self.out, len).expect(VEC);
                        for b in data {
                            rmp::encode::write_uint(&mut self.out, u64::from(b)).expect(VEC);
                        }
                    }
                }
            }
            FLOAT => {
                let f = match inner.as_str() {
                    Some("NaN") => f64::NAN,
                    Some("Infinity") => f64::INFINITY,
                    Some("-Infinity") => f64::NEG_INFINITY,
                    _ => {
                        return Err(path.error(format!(
                            "$float takes \"NaN\", \"Infinity\" or \"-Infinity\", not {inner}"
                        )));
                    }
                };
                rmp::encode::write_f64(&mut self.out, f).expect(VEC);
            }
            _ => {
                // MAP: [[key, value], ...], any JSON value as a key.
                let Value::Array(entries) = inner else {
                    return Err(path.error(format!(
                        "$map takes an array of [key, value] pairs, not {}",
                        kind(inner)
                    )));
                };
                let depth = deeper(depth, path)?;
                let len = len32(entries.len(), "a map", path)?;
                rmp::encode::write_map_len(&mut self.out, len).expect(VEC);
                for (i, entry) in entries.iter().enumerate() {
                    let pair = match entry.as_array().map(Vec::as_slice) {
                        Some([k, v]) => (k, v),
                        _ => {
                            return Err(Path::Index(path, i).error(format!(
                                "a $map entry is a [key, value] pair, not {}",
                                kind(entry)
                            )));
                        }
                    };
                    self.value(pair.0, &Path::Entry(at, i, 0), depth)?;
                    self.value(pair.1, &Path::Entry(at, i, 1), depth)?;
                }
            }
        }
        Ok(())
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("invalid hex: {} digits, an odd number", text.len()));
    }
    let digit = |i: usize| {
        let c = text.as_bytes()[i];
        (c as char)
            .to_digit(16)
            .map(|d| d as u8)
            .ok_or_else(|| format!("invalid hex: {:?} at offset {i}", c as char))
    };
    (0..text.len() / 2)
        .map(|i| Ok(digit(2 * i)? << 4 | digit(2 * i + 1)?))
        .collect()
}

fn encode_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |d: u8| char::from(DIGITS[usize::from(d)]);
    data.iter()
        .flat_map(|b| [digit(b >> 4), digit(b & 0xf)])
        .collect()
}

/// A one-key object `{marker: inner}`.
fn marked(marker: &str, inner: Value) -> Value {
    Value::Object(Map::from_iter([(marker.to_owned(), inner)]))
}

fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => marked(FLOAT, Value::from("NaN")),
        None if f > 0.0 => marked(FLOAT, Value::from("Infinity")),
        None => marked(FLOAT, Value::from("-Infinity")),
    }
}

struct Decoder<'d> {
    data: &'d [u8],
    pos: usize,
    values: usize,
    bytes: BytesOut,
}

impl<'d> Decoder<'d> {
    fn take(&mut self, n: usize, path: &Path) -> Result<&'d [u8], Error> {
        let rest = &self.data[self.pos..];
        if rest.len() < n {
            return Err(path.error(format!(
                "the MessagePack ends early: {n} bytes needed at offset {}, {} left",
                self.pos,
                rest.len()
            )));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn be<const N: usize>(&mut self, path: &Path) -> Result<[u8; N], Error> {
        let mut buf = [0; N];
        buf.copy_from_slice(self.take(N, path)?);
        Ok(buf)
    }

    /// The length field after a str/bin/array/map marker of 8, 16 or 32 bits.
    fn length(&mut self, marker: Marker, path: &Path) -> Result<usize, Error> {
        Ok(match marker {
            Marker::Str8 | Marker::Bin8 => usize::from(self.be::<1>(path)?[0]),
            Marker::Str16 | Marker::Bin16 | Marker::Array16 | Marker::Map16 => {
                usize::from(u16::from_be_bytes(self.be(path)?))
            }
            _ => u32::from_be_bytes(self.be(path)?) as usize,
        })
    }

    fn value(&mut self, path: &Path, depth: usize) -> Result<Value, Error> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(path.error(format!("more than {MAX_VALUES} values")));
        }
        let at = self.pos;
        let marker = Marker::from_u8(self.be::<1>(path)?[0]);
        Ok(match marker {
            Marker::Null => Value::Null,
            Marker::True => Value::Bool(true),
            Marker::False => Value::Bool(false),
            Marker::FixPos(n) => Value::from(n),
            Marker::FixNeg(n) => Value::from(n),
            Marker::U8 => Value::from(self.be::<1>(path)?[0]),
            Marker::U16 => Value::from(u16::from_be_bytes(self.be(path)?)),
            Marker::U32 => Value::from(u32::from_be_bytes(self.be(path)?)),
            Marker::U64 => Value::from(u64::from_be_bytes(self.be(path)?)),
            Marker::I8 => Value::from(i8::from_be_bytes(self.be(path)?)),
            Marker::I16 => Value::from(i16::from_be_bytes(self.be(path)?)),
            Marker::I32 => Value::from(i32::from_be_bytes(self.be(path)?)),
            Marker::I64 => Value::from(i64::from_be_bytes(self.be(path)?)),
            Marker::F32 => {
                let f = f32::from_be_bytes(self.be(path)?);
                // The shortest decimal that reads back as the same f32 (0.1f32 → 0.1, not
                // 0.10000000149011612); finite f32 text always parses as a finite f64.
                let wide = if f.is_finite() {
                    f.to_string().parse::<f64>().unwrap_or(f64::from(f))
                } else {
                    f64::from(f)
                };
                float(wide)
            }
            Marker::F64 => float(f64::from_be_bytes(self.be(path)?)),
            Marker::FixStr(n) => self.str(usize::from(n), path)?,
            Marker::Str8 | Marker::Str16 | Marker::Str32 => {
                let n = self.length(marker, path)?;
                self.str(n, path)?
            }
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => {
                let n = self.length(marker, path)?;
                let data = self.take(n, path)?;
                match self.bytes {
                    BytesOut::Base64 => marked(BASE64, Value::from(STANDARD.encode(data))),
                    BytesOut::Hex => marked(HEX, Value::from(encode_hex(data))),
                }
            }
            Marker::FixArray(n) => self.array(usize::from(n), path, depth)?,
            Marker::Array16 | Marker::Array32 => {
                let n = self.length(marker, path)?;
                self.array(n, path, depth)?
            }
            Marker::FixMap(n) => self.map(usize::from(n), path, depth)?,
            Marker::Map16 | Marker::Map32 => {
                let n = self.length(marker, path)?;
                self.map(n, path, depth)?
            }
            Marker::Reserved => {
                return Err(path.error(format!(
                    "invalid MessagePack: the reserved marker 0xc1 at offset {at}"
                )));
            }
            // Only ext types are left.
            _ => {
                return Err(path.error(format!(
                    "MessagePack ext type (0x{:02x} at offset {at}): Stardust uses none",
                    marker.to_u8()
                )));
            }
        })
    }

    fn str(&mut self, n: usize, path: &Path) -> Result<Value, Error> {
        let at = self.pos;
        let raw = self.take(n, path)?;
        let text = std::str::from_utf8(raw);
        text.map(Value::from)
            .map_err(|e| path.error(format!("str at offset {at}: {e}")))
    }

    /// Checks a container of `n` elements (`min` bytes each at least) before reading it: within
    /// the depth limit, and not claiming more elements than there are bytes left.
    fn container(&self, n: usize, min: usize, at: &Path, depth: usize) -> Result<usize, Error> {
        let left = self.data.len() - self.pos;
        if n.saturating_mul(min) > left {
            return Err(at.error(format!(
                "the MessagePack ends early: {n} elements at offset {}, {left} bytes left",
                self.pos
            )));
        }
        deeper(depth, at)
    }

    fn array(&mut self, n: usize, path: &Path, depth: usize) -> Result<Value, Error> {
        let depth = self.container(n, 1, path, depth)?;
        let mut items = Vec::with_capacity(n.min(1024));
        for i in 0..n {
            items.push(self.value(&Path::Index(path, i), depth)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, path: &Path, depth: usize) -> Result<Value, Error> {
        let depth = self.container(n, 2, path, depth)?;
        let mut entries = Vec::with_capacity(n.min(1024));
        for i in 0..n {
            let key = self.value(&Path::Entry(path, i, 0), depth)?;
            let value = match &key {
                Value::String(name) => self.value(&Path::Key(path, name), depth)?,
                _ => self.value(&Path::Entry(path, i, 1), depth)?,
            };
            entries.push((key, value));
        }
        // An object when every key is a str, no key repeats and the map cannot be mistaken for
        // a marker; `{"$map": [[key, value], ...]}` (in MessagePack order) otherwise.
        let plain = n != 1 || !MARKERS.contains(&entries[0].0.as_str().unwrap_or_default());
        let mut seen = HashSet::with_capacity(n);
        if plain
            && entries
                .iter()
                .all(|(k, _)| k.as_str().is_some_and(|k| seen.insert(k)))
        {
            let object = entries
                .into_iter()
                .map(|(k, v)| match k {
                    Value::String(k) => (k, v),
                    _ => unreachable!("every key is a str"),
                })
                .collect();
            return Ok(Value::Object(object));
        }
        let pairs = entries
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect();
        Ok(marked(MAP, Value::Array(pairs)))
    }
}
