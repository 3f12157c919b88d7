//! A service whose methods return what they were given, with parameters of every shape the
//! codec handles: the request target drives the code `#[stardust::service]` generates for
//! decoding arguments (`Service::call`), then checks the decoded values survive re-encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A struct with nested, optional, recursive and enum fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// A string.
    pub name: String,
    /// A map.
    pub tags: BTreeMap<String, String>,
    /// A sequence.
    pub values: Vec<i64>,
    /// Bytes (MessagePack bin).
    pub blob: ByteBuf,
    /// An enum with unit, tuple and struct variants.
    pub shape: Shape,
    /// Recursion.
    #[serde(default)]
    pub child: Option<Box<Record>>,
}

/// Every kind of enum variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    /// Unit.
    Empty,
    /// Tuple.
    Point(i32, i32),
    /// Struct.
    Named {
        /// A field.
        label: String,
    },
}

/// Scalars of every width.
pub type Scalars = (u8, u16, u32, u64, i8, i16, f32, f64, bool, char);

/// The echo service.
#[stardust::service(name = "fuzz.Echo", version = "1.0.0")]
pub trait Echo {
    /// Two integers.
    async fn pair(&self, a: i64, b: i64) -> (i64, i64);
    /// A string and an optional trailing parameter (older callers omit it).
    async fn text(&self, text: String, suffix: Option<String>) -> (String, Option<String>);
    /// A struct.
    async fn record(&self, record: Record) -> Record;
    /// Every scalar type.
    async fn scalars(&self, scalars: Scalars) -> Scalars;
    /// No parameters.
    async fn nothing(&self);
    /// Collections of tuples and maps with integer keys.
    async fn nested(
        &self,
        items: Vec<(String, Option<u32>)>,
        by_id: BTreeMap<u64, Vec<u8>>,
    ) -> (Vec<(String, Option<u32>)>, BTreeMap<u64, Vec<u8>>);
    /// An application `Result`, as a parameter.
    async fn result(&self, outcome: Result<u32, String>) -> Result<u32, String>;
    /// `n` items counting up: a server stream (the provider sends `Item`s under credit).
    async fn count(&self, n: u8) -> stardust::Stream<u32>;
    /// The sum of the items: a client stream (the provider grants `Credit`).
    async fn sum(&self, items: stardust::Streaming<u64>) -> u64;
}

/// The implementation: every method returns its arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mirror;

impl Echo for Mirror {
    async fn pair(&self, a: i64, b: i64) -> (i64, i64) {
        (a, b)
    }

    async fn text(&self, text: String, suffix: Option<String>) -> (String, Option<String>) {
        (text, suffix)
    }

    async fn record(&self, record: Record) -> Record {
        record
    }

    async fn scalars(&self, scalars: Scalars) -> Scalars {
        scalars
    }

    async fn nothing(&self) {}

    async fn nested(
        &self,
        items: Vec<(String, Option<u32>)>,
        by_id: BTreeMap<u64, Vec<u8>>,
    ) -> (Vec<(String, Option<u32>)>, BTreeMap<u64, Vec<u8>>) {
        (items, by_id)
    }

    async fn result(&self, outcome: Result<u32, String>) -> Result<u32, String> {
        outcome
    }

    async fn count(&self, n: u8) -> stardust::Stream<u32> {
        stardust::Stream::iter(0..u32::from(n))
    }

    async fn sum(&self, mut items: stardust::Streaming<u64>) -> u64 {
        let mut total = 0u64;
        while let Some(Ok(n)) = items.next().await {
            total = total.wrapping_add(n);
        }
        total
    }
}
