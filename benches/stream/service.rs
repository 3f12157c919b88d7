//! The benchmarked streaming service, independent of any framework.
//!
//! Two server-streaming methods, implemented alike by every contender:
//! - `items(n) -> stream of u64`: the numbers `0..n`, the smallest useful item, so per-item
//!   overhead dominates;
//! - `chunks(n, size) -> stream of bytes`: `n` items of `size` bytes (`n = u64::MAX`: without
//!   end, for the slow reader). Chunks are `serde_bytes::ByteBuf`, so they travel as one
//!   MessagePack `bin`.
//!
//! Every implementation encodes items with the same rmp-serde (Stardust's own encoding, a
//! MessagePack codec on tonic, and the raw baseline's frames), so the rows compare the
//! transports, not the serializers. Every item is checked on arrival: item number `i` carries
//! `i`, so a lost, repeated or reordered item fails the run, and the item count must be exact.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_bytes::ByteBuf;

/// Chunks produced by this process so far, counted by [`Chunk::make`] (the slow-reader row
/// reports how far a producer ran ahead of its consumer).
static PRODUCED: AtomicU64 = AtomicU64::new(0);

pub fn produced() -> u64 {
    PRODUCED.load(Ordering::Relaxed)
}

/// Checks item number `seq` of an `items` stream.
pub fn check_item(seq: u64, got: u64) -> Result<(), String> {
    if got == seq {
        Ok(())
    } else {
        Err(format!("item {seq} arrived as {got}"))
    }
}

/// The chunks of one stream: a fixed pattern whose first 8 bytes are overwritten with the
/// chunk's sequence number.
#[derive(Clone)]
pub struct Chunk {
    base: Vec<u8>,
}

impl Chunk {
    pub fn new(size: usize) -> Chunk {
        assert!(size >= 8, "chunks carry an 8-byte sequence number");
        Chunk {
            base: (0..size).map(|i| (i * 31 % 251) as u8).collect(),
        }
    }

    /// Chunk number `seq`: a fresh buffer (what a producer reading a file or a socket has),
    /// counted as produced.
    pub fn make(&self, seq: u64) -> ByteBuf {
        PRODUCED.fetch_add(1, Ordering::Relaxed);
        let mut data = self.base.clone();
        data[..8].copy_from_slice(&seq.to_le_bytes());
        ByteBuf::from(data)
    }

    /// Checks chunk number `seq`: its length, its number, and a sample of its bytes (the whole
    /// comparison would cost the consumer as much as a copy).
    pub fn check(&self, seq: u64, got: &[u8]) -> Result<(), String> {
        if got.len() != self.base.len() {
            return Err(format!(
                "chunk {seq}: {} bytes instead of {}",
                got.len(),
                self.base.len()
            ));
        }
        if got[..8] != seq.to_le_bytes() {
            return Err(format!("chunk {seq} arrived out of order"));
        }
        let step = (got.len() / 16).max(1);
        if (8..got.len()).step_by(step).any(|i| got[i] != self.base[i]) {
            return Err(format!("chunk {seq}: corrupted bytes"));
        }
        Ok(())
    }
}

/// The receiving end of one stream, as the driver sees it: the next item, `None` at the end.
/// Errors are strings: they are only built when a stream fails, and then printed.
pub trait Source<T>: Send {
    fn next_item(&mut self) -> impl Future<Output = Option<Result<T, String>>> + Send;
}

/// A consumer's connection to the service: one implementation per contender, each a thin
/// adapter over its own client. Streams are opened one at a time; each borrows the connection
/// (the raw baseline reads its items straight off the socket).
pub trait Client: Send + 'static {
    type Items<'a>: Source<u64>
    where
        Self: 'a;
    type Chunks<'a>: Source<ByteBuf>
    where
        Self: 'a;

    fn items(&mut self, n: u64) -> impl Future<Output = Result<Self::Items<'_>, String>> + Send;

    fn chunks(
        &mut self,
        n: u64,
        size: u32,
    ) -> impl Future<Output = Result<Self::Chunks<'_>, String>> + Send;
}
