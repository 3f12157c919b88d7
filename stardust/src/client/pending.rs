//! The table of calls waiting for their response on one connection.
//!
//! A slab of slots instead of a map of oneshot channels: registering a call reuses a free slot
//! (no allocation in steady state), and the request id encodes the slot index plus a generation
//! counter, so a late response to an abandoned call can never complete the slot's next tenant.

use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::error::Error;

pub(crate) type Reply = Result<Bytes, Error>;

enum State {
    Free,
    Waiting(Option<Waker>),
    Done(Reply),
}

struct Slot {
    generation: u32,
    state: State,
}

#[derive(Default)]
pub(crate) struct Pending {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Set when the connection died: every later registration fails with it.
    closed: Option<Error>,
}

fn split(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

impl Pending {
    /// Reserves a slot and returns the request id for it.
    pub(crate) fn register(&mut self) -> Result<u64, Error> {
        if let Some(e) = &self.closed {
            return Err(e.clone());
        }
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.slots.push(Slot {
                    // Generations start at 1 so that no request id is ever 0.
                    generation: 1,
                    state: State::Free,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.state = State::Waiting(None);
        Ok(((slot.generation as u64) << 32) | index as u64)
    }

    /// Completes the call `id`; returns its waker to wake outside the lock. Unknown or stale ids
    /// (a call that was cancelled or timed out) are ignored.
    pub(crate) fn complete(&mut self, id: u64, reply: Reply) -> Option<Waker> {
        let (index, generation) = split(id);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        match std::mem::replace(&mut slot.state, State::Done(reply)) {
            State::Waiting(waker) => waker,
            other => {
                slot.state = other;
                None
            }
        }
    }

    /// Polls the call `id` for its reply, freeing the slot when it is taken.
    pub(crate) fn poll(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Reply> {
        let (index, generation) = split(id);
        let Some(slot) = self
            .slots
            .get_mut(index)
            .filter(|s| s.generation == generation)
        else {
            return Poll::Ready(Err(Error::connection_closed("call slot vanished")));
        };
        match &mut slot.state {
            State::Waiting(waker) => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Done(_) => {
                let State::Done(reply) = std::mem::replace(&mut slot.state, State::Free) else {
                    unreachable!()
                };
                self.release(index);
                Poll::Ready(reply)
            }
            State::Free => Poll::Ready(Err(Error::connection_closed("call slot was freed"))),
        }
    }

    /// Abandons the call `id` (cancelled or timed out). Returns `true` if it was still waiting,
    /// i.e. the provider may still be working on it.
    pub(crate) fn abandon(&mut self, id: u64) -> bool {
        let (index, generation) = split(id);
        let Some(slot) = self
            .slots
            .get_mut(index)
            .filter(|s| s.generation == generation)
        else {
            return false;
        };
        let was_waiting = matches!(slot.state, State::Waiting(_));
        if !matches!(slot.state, State::Free) {
            slot.state = State::Free;
            self.release(index);
        }
        was_waiting
    }

    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(index as u32);
    }

    /// Fails every waiting call with `err` and refuses new ones. Returns the wakers to wake.
    pub(crate) fn close(&mut self, err: &Error) -> Vec<Waker> {
        if self.closed.is_none() {
            self.closed = Some(err.clone());
        }
        let mut wakers = Vec::new();
        for slot in &mut self.slots {
            if let State::Waiting(w) = &mut slot.state {
                if let Some(w) = w.take() {
                    wakers.push(w);
                }
                slot.state = State::Done(Err(err.clone()));
            }
        }
        wakers
    }

    /// The error the connection closed with, if it did.
    pub(crate) fn closed_error(&self) -> Option<&Error> {
        self.closed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn complete_then_poll() {
        let mut p = Pending::default();
        let id = p.register().unwrap();
        assert_ne!(id, 0);
        assert!(p.poll(id, &mut cx()).is_pending());
        p.complete(id, Ok(Bytes::from_static(b"x")));
        match p.poll(id, &mut cx()) {
            Poll::Ready(Ok(b)) => assert_eq!(&b[..], b"x"),
            _ => panic!("expected reply"),
        }
        // The slot is reused with a new generation; the old id is stale.
        let id2 = p.register().unwrap();
        assert_eq!(id2 & 0xffff_ffff, id & 0xffff_ffff);
        assert_ne!(id2, id);
        assert!(p.complete(id, Ok(Bytes::new())).is_none());
        assert!(p.poll(id2, &mut cx()).is_pending());
    }

    #[test]
    fn abandon_ignores_late_reply() {
        let mut p = Pending::default();
        let id = p.register().unwrap();
        assert!(p.abandon(id));
        assert!(p.complete(id, Ok(Bytes::new())).is_none());
        let id2 = p.register().unwrap();
        assert!(p.poll(id2, &mut cx()).is_pending());
    }

    #[test]
    fn close_fails_waiting_and_new_calls() {
        let mut p = Pending::default();
        let id = p.register().unwrap();
        p.close(&Error::connection_closed("gone"));
        match p.poll(id, &mut cx()) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionClosed),
            _ => panic!("expected error"),
        }
        assert!(p.register().is_err());
    }
}
