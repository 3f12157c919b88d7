//! Recycled buffers for the bodies of large incoming frames.
//!
//! A large body is handed to its reader as [`Bytes`] without a copy (the zero-copy path of
//! `bytes::Bytes` arguments and results). Carved out of the connection's read buffer, it would
//! cost a fresh allocation of the read buffer for every large frame; worse, the allocator hands
//! memory of that size back to the kernel when it is freed, so every large frame also paid a
//! page fault per 4 KiB touched (measured: ~2 µs of client CPU per 64 KiB echo, 8% of it).
//!
//! Instead a large frame's body is read into a buffer of its own, taken from this pool, and
//! the [`Bytes`] handed out owns it: dropping the last clone gives the buffer back. The pool
//! keeps at most [`KEEP_BYTES`] and is emptied when the connection goes quiet (keepalive), so
//! a connection that once carried a burst of large frames does not hold their memory.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// The most buffer capacity one connection's pool keeps for reuse.
const KEEP_BYTES: usize = 1024 * 1024;

/// A connection's spare body buffers (see the module docs).
#[derive(Default)]
pub(crate) struct BodyPool {
    free: Mutex<Spare>,
}

#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    /// The capacity of `buffers`, summed.
    bytes: usize,
}

impl BodyPool {
    /// An empty buffer: a spare one if there is any (the largest, which the next frame most
    /// likely fits), else a new one without capacity (the reader grows it as bytes arrive).
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut spare = self.free.lock();
        let Some(buf) = spare.buffers.pop() else {
            return Vec::new();
        };
        spare.bytes -= buf.capacity();
        buf
    }

    /// Keeps `buf` for a later frame, unless the pool is full.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        let capacity = buf.capacity();
        if capacity == 0 {
            return;
        }
        buf.clear();
        let mut spare = self.free.lock();
        if spare.bytes + capacity > KEEP_BYTES {
            return;
        }
        spare.bytes += capacity;
        // Sorted by capacity, largest last (what `take` pops): a handful of buffers at most.
        let at = spare.buffers.partition_point(|b| b.capacity() <= capacity);
        spare.buffers.insert(at, buf);
    }

    /// Gives every spare buffer back to the allocator (the connection went quiet).
    pub(crate) fn release(&self) {
        let buffers = std::mem::take(&mut *self.free.lock());
        drop(buffers);
    }

    /// `body` as [`Bytes`] that return its buffer here when the last clone is dropped.
    pub(crate) fn hand_out(self: &Arc<Self>, body: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf: body,
            pool: self.clone(),
        })
    }

    /// Capacity kept for reuse.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().bytes
    }
}

/// A body handed out as [`Bytes`]: gives its buffer back to the pool when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BodyPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_out_body_comes_back_when_its_last_clone_is_dropped() {
        let pool = Arc::new(BodyPool::default());
        let mut buf = pool.take();
        assert_eq!(
            buf.capacity(),
            0,
            "an empty pool gives a buffer without capacity"
        );
        buf.extend_from_slice(&[7u8; 70_000]);
        let capacity = buf.capacity();
        let body = pool.hand_out(buf);
        let part = body.slice(10..20);
        assert_eq!(&part[..], &[7u8; 10]);
        drop(body);
        assert_eq!(pool.kept(), 0, "a slice still holds it");
        drop(part);
        assert_eq!(pool.kept(), capacity);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.capacity(), capacity, "the same buffer, reused");
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn the_pool_keeps_a_bounded_amount_and_releases_it() {
        let pool = Arc::new(BodyPool::default());
        for _ in 0..64 {
            pool.give(Vec::with_capacity(100 * 1024));
        }
        assert!(pool.kept() <= KEEP_BYTES);
        assert!(pool.kept() >= KEEP_BYTES - 100 * 1024);
        pool.give(Vec::with_capacity(2 * KEEP_BYTES));
        assert!(
            pool.kept() <= KEEP_BYTES,
            "a buffer over the bound is not kept"
        );
        pool.release();
        assert_eq!(pool.kept(), 0);
        assert_eq!(pool.take().capacity(), 0);
    }

    #[test]
    fn take_prefers_the_largest_spare() {
        let pool = BodyPool::default();
        for kib in [64, 256, 128] {
            pool.give(Vec::with_capacity(kib * 1024));
        }
        assert!(pool.take().capacity() >= 256 * 1024);
        assert!(pool.take().capacity() >= 128 * 1024);
        assert!(pool.take().capacity() >= 64 * 1024);
    }
}
