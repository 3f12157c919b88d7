//! The benchmarked service, independent of any framework.
//!
//! Two methods, implemented alike by every contender:
//! - `add(a: i64, b: i64) -> i64`: the smallest useful call, so framework overhead dominates;
//! - `echo(data: bytes) -> bytes`: moves a payload each way. Payloads are `serde_bytes::ByteBuf`
//!   everywhere, so they travel as MessagePack `bin` (stardust, raw) or as one length-prefixed
//!   byte string (tarpc's bincode), never as an array of integers.
//!
//! Every reply is checked: the arguments of call number `seq` are derived from `seq`, so a reply
//! delivered to the wrong caller is caught, not just a corrupted one.

use std::future::Future;

use serde_bytes::ByteBuf;

/// The second operand of every `add`; the first is the call's sequence number.
const ADD_B: i64 = 1_000_003;

/// Arguments of `add` for call number `seq`.
pub fn add_args(seq: u64) -> (i64, i64) {
    (seq as i64, ADD_B)
}

/// Checks the result of `add` for call number `seq`.
pub fn check_add(seq: u64, got: i64) -> Result<(), String> {
    let (a, b) = add_args(seq);
    if got == a + b {
        Ok(())
    } else {
        Err(format!("add({a}, {b}) returned {got}"))
    }
}

/// The `echo` payload of one scenario: a fixed pattern whose first 8 bytes are overwritten with
/// the call's sequence number.
pub struct Payload {
    base: Vec<u8>,
}

impl Payload {
    pub fn new(size: usize) -> Payload {
        assert!(size >= 8, "payloads carry an 8-byte sequence number");
        Payload {
            base: (0..size).map(|i| (i * 31 % 251) as u8).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.base.len()
    }

    /// The payload of call number `seq` (a fresh buffer: proxies take their arguments by value).
    pub fn for_call(&self, seq: u64) -> ByteBuf {
        let mut data = self.base.clone();
        self.stamp(seq, &mut data);
        ByteBuf::from(data)
    }

    /// The payload of call number `seq` as `Bytes` built in `scratch`, a caller's reused
    /// buffer: its allocation is taken back once the previous call's payload was dropped (what
    /// an application sending `Bytes` does; an API taking a `Vec` by value cannot).
    pub fn bytes_for_call(&self, seq: u64, scratch: &mut bytes::BytesMut) -> bytes::Bytes {
        scratch.reserve(self.base.len());
        let start = scratch.len();
        scratch.extend_from_slice(&self.base);
        self.stamp(seq, &mut scratch[start..]);
        scratch.split().freeze()
    }

    /// Writes the payload of call `seq` into `out` (for the ceiling, which encodes in place).
    pub fn write_into(&self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.base);
        self.stamp(seq, &mut out[start..]);
    }

    fn stamp(&self, seq: u64, data: &mut [u8]) {
        data[..8].copy_from_slice(&seq.to_le_bytes());
    }

    /// Checks an echoed payload for call number `seq`.
    pub fn check(&self, seq: u64, got: &[u8]) -> Result<(), String> {
        if got.len() != self.base.len() {
            return Err(format!(
                "echo of {} bytes returned {} bytes",
                self.base.len(),
                got.len()
            ));
        }
        if got[..8] != seq.to_le_bytes() {
            return Err(format!(
                "echo for call {seq} returned another call's payload"
            ));
        }
        if got[8..] != self.base[8..] {
            return Err("echo returned corrupted bytes".to_owned());
        }
        Ok(())
    }
}

/// A client of the service as the driver sees it: one implementation per framework, each a thin
/// adapter over that framework's own generated client. Generic (not boxed) so the adapters
/// compile away. Errors are strings: they are only built when a call fails, and then printed.
pub trait Caller: Clone + Send + Sync + 'static {
    /// What `echo` takes.
    type Data: Send;
    /// A caller's state for building payloads (a buffer it reuses, where the API allows it).
    type Scratch: Default + Send;
    /// The payload of call `seq` (built before the call's timed span).
    fn data(payload: &Payload, seq: u64, scratch: &mut Self::Scratch) -> Self::Data;
    fn add(&self, a: i64, b: i64) -> impl Future<Output = Result<i64, String>> + Send;
    /// The echo comes back as whatever the framework hands out (a `ByteBuf`, or Stardust's
    /// `Bytes`, which may be a slice of the received frame), checked in place.
    fn echo(
        &self,
        data: Self::Data,
    ) -> impl Future<Output = Result<impl AsRef<[u8]> + Send, String>> + Send;
}
