//! The monitoring server's connection slots: idle connections never hold every one.
//!
//! The server keeps at most a fixed number of connections. A connection is *idle* while it
//! waits for a request: just accepted and still sending its request header (or nothing), or
//! kept alive after a response. A connection arriving when every slot is taken takes the slot
//! of the connection idle the longest, which is closed at once; only when every connection is
//! in the middle of a request is the newcomer turned away. So sockets left open, by a crowd of
//! forgotten clients or by someone hostile, cannot lock the server out: a new GET's connection
//! is the newest of all, and before it can be evicted, every connection idle before it goes.
//! (A per-address cap would not help here: on loopback, where the server listens by default,
//! every client has the same address.)

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The slots of one server.
pub(super) struct Slots {
    cap: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
}

struct Entry {
    /// Requests being answered (hyper answers one at a time; counted, not assumed).
    active: u32,
    /// Since when it has been waiting for a request (meaningless while `active > 0`).
    idle_since: Instant,
    /// Fired (or dropped) when the connection is evicted.
    evict: oneshot::Sender<()>,
}

/// A connection admitted by [`Slots::admit`].
pub(super) struct Admitted {
    /// Its slot, held while the connection lives.
    pub slot: Arc<Slot>,
    /// Resolves when the connection is evicted: close it then.
    pub evicted: oneshot::Receiver<()>,
    /// Whether another connection was evicted to make room.
    pub evicted_other: bool,
}

impl Slots {
    pub(super) fn new(cap: usize) -> Arc<Slots> {
        Arc::new(Slots {
            cap,
            table: Mutex::new(Table::default()),
        })
    }

    /// A slot for a connection accepted now: a free one, or the one of the connection idle the
    /// longest (evicted); `None` when every connection is answering a request.
    pub(super) fn admit(self: &Arc<Self>, now: Instant) -> Option<Admitted> {
        let mut table = self.table.lock();
        let mut evicted_other = false;
        if table.conns.len() >= self.cap {
            // Linear in the cap (64): only a full server pays it, once per accepted connection.
            let victim = table
                .conns
                .iter()
                .filter(|(_, e)| e.active == 0)
                .min_by_key(|(_, e)| e.idle_since)
                .map(|(id, _)| *id)?;
            let entry = table.conns.remove(&victim).expect("found above");
            let _ = entry.evict.send(());
            evicted_other = true;
        }
        let id = table.next_id;
        table.next_id += 1;
        let (evict, evicted) = oneshot::channel();
        table.conns.insert(
            id,
            Entry {
                active: 0,
                idle_since: now,
                evict,
            },
        );
        Some(Admitted {
            slot: Arc::new(Slot {
                slots: self.clone(),
                id,
            }),
            evicted,
            evicted_other,
        })
    }
}

/// One connection's slot; dropping it frees the slot (unless the connection was evicted).
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
}

impl Slot {
    /// A request is being answered: the connection is not idle until the returned guard (held
    /// by the response body, see [`Tracked`]) is dropped.
    pub(super) fn request(self: &Arc<Self>) -> Answering {
        if let Some(e) = self.slots.table.lock().conns.get_mut(&self.id) {
            e.active += 1;
        }
        Answering { slot: self.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table.lock().conns.remove(&self.id);
    }
}

/// A request being answered on a connection (see [`Slot::request`]).
pub(super) struct Answering {
    slot: Arc<Slot>,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let slot = &self.slot;
        if let Some(e) = slot.slots.table.lock().conns.get_mut(&slot.id) {
            e.active -= 1;
            e.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its connection marked busy until hyper has taken all of it.
pub(super) struct Tracked<B> {
    body: B,
    _answering: Answering,
}

impl<B> Tracked<B> {
    pub(super) fn new(body: B, answering: Answering) -> Tracked<B> {
        Tracked {
            body,
            _answering: answering,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_server_evicts_the_connection_idle_the_longest() {
        let slots = Slots::new(2);
        // Accept times in the past: a request answered "now" ends after all of them.
        let t0 = Instant::now() - Duration::from_secs(10);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut first = slots.admit(at(0)).unwrap();
        let mut second = slots.admit(at(1)).unwrap();
        assert!(!second.evicted_other);

        // The first one answers a request: the second is the only idle one, and goes.
        let answering = first.slot.request();
        let mut third = slots.admit(at(2)).unwrap();
        assert!(third.evicted_other);
        assert!(second.evicted.try_recv().is_ok(), "the idle one goes");
        assert!(first.evicted.try_recv().is_err(), "the busy one stays");

        // Both connections busy: a newcomer is turned away.
        let busy = third.slot.request();
        assert!(slots.admit(at(3)).is_none());

        // Done answering, the first is idle (since now) and goes for the next newcomer; the
        // third, still answering, stays.
        drop(answering);
        let mut fourth = slots.admit(at(4)).unwrap();
        assert!(fourth.evicted_other);
        assert!(first.evicted.try_recv().is_ok());
        assert!(third.evicted.try_recv().is_err());

        // Of two idle connections, the one idle the longest goes: the fourth (accepted at 4 ms)
        // before the third (idle since its answer, now).
        drop(busy);
        let fifth = slots.admit(at(5)).unwrap();
        assert!(fifth.evicted_other);
        assert!(fourth.evicted.try_recv().is_ok());
        assert!(third.evicted.try_recv().is_err());

        // A closed connection frees its slot: no eviction needed.
        drop(third);
        assert!(!slots.admit(at(6)).unwrap().evicted_other);
        drop((first, fifth));
    }
}
