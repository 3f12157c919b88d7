//! Support for the code `#[stardust::service]` generates. Not a public API: names here may change
//! in any release.

use serde::{Serialize, Serializer};

pub use crate::protocol::codec::decode_args;
pub use crate::service::unknown_method;

/// The argument list of a method without parameters: an empty MessagePack array (a plain `()`
/// would encode as `nil`).
#[derive(Debug, Clone, Copy)]
pub struct NoArgs;

impl Serialize for NoArgs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer
            .serialize_tuple(0)
            .and_then(serde::ser::SerializeTuple::end)
    }
}
