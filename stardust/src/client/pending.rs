//! The table of calls waiting for their response on one connection, and their deadlines.
//!
//! A slab of slots instead of a map of oneshot channels: registering a call reuses a free slot
//! (no allocation in steady state), and the request id encodes the slot index plus a generation
//! counter, so a late response to an abandoned call can never complete the slot's next tenant.
//!
//! Deadlines live here too, instead of a timer per call: one sweeper task per connection sleeps
//! until the earliest deadline it knows of ([`Pending::next_wake`]), then expires what is due.
//! Registering a call only touches the timer when its deadline is earlier than every other, which
//! with a uniform timeout is almost never.

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use std::sync::Arc;

use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, Kind};
pub(crate) use crate::service::CallName;
use crate::stream::flow::Flow;

pub(crate) type Reply = Result<Bytes, Error>;

enum State {
    Free,
    Waiting(Waker),
    Done(Reply),
    /// A streaming call: what arrives for it goes to its flow, until its consumer lets it go.
    Stream(Arc<Flow>),
}

/// What completing a call produced: a caller to wake, or a stream's final answer to hand to
/// its flow (outside the table's lock).
pub(crate) enum Completion {
    Wake(Waker),
    Stream(Arc<Flow>, Reply),
}

/// What a waiting call is, for its deadline error message.
#[derive(Clone)]
pub(crate) struct CallInfo {
    pub(crate) name: CallName,
    pub(crate) deadline: Option<Instant>,
    /// The time budget the caller gave, for the message.
    pub(crate) budget: Duration,
    /// When the call should get a hedge (another try elsewhere) if it is still waiting; the
    /// pool's watchdog looks for such calls ([`Pending::due_hedges`]).
    pub(crate) hedge_at: Option<Instant>,
}

struct Slot {
    generation: u32,
    state: State,
    info: Option<CallInfo>,
    hedge: Hedge,
}

/// Where a waiting call is with its hedge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hedge {
    NotYet,
    /// The watchdog found it due and woke the caller.
    Due,
    /// The caller was told.
    Told,
}

#[derive(Default)]
pub(crate) struct Pending {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Set when the connection died: every later registration fails with it.
    closed: Option<Error>,
    /// When the deadline sweeper will next look; `None` while it sleeps without a deadline.
    next_wake: Option<Instant>,
}

fn split(id: u64) -> (usize, u32) {
    ((id & 0xffff_ffff) as usize, (id >> 32) as u32)
}

impl Pending {
    /// Reserves a slot for a call that will be woken through `waker`. Returns the request id and
    /// whether the deadline sweeper must be told about an earlier deadline.
    pub(crate) fn register(&mut self, waker: &Waker, info: CallInfo) -> Result<(u64, bool), Error> {
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
                    info: None,
                    hedge: Hedge::NotYet,
                });
                self.slots.len() - 1
            }
        };
        let deadline = info.deadline;
        let slot = &mut self.slots[index];
        slot.state = State::Waiting(waker.clone());
        slot.info = Some(info);
        slot.hedge = Hedge::NotYet;
        let rearm = match (deadline, self.next_wake) {
            (Some(d), Some(next)) if d < next => true,
            (Some(_), None) => true,
            _ => false,
        };
        if rearm {
            self.next_wake = deadline;
        }
        Ok((((slot.generation as u64) << 32) | index as u64, rearm))
    }

    /// Reserves a slot for a streaming call whose frames go to `flow`.
    pub(crate) fn register_stream(
        &mut self,
        flow: Arc<Flow>,
        info: CallInfo,
    ) -> Result<(u64, bool), Error> {
        let (id, rearm) = self.register(Waker::noop(), info)?;
        let (index, _) = split(id);
        self.slots[index].state = State::Stream(flow);
        Ok((id, rearm))
    }

    /// The flow of streaming call `id`, while its slot is held.
    pub(crate) fn stream(&self, id: u64) -> Option<Arc<Flow>> {
        let (index, generation) = split(id);
        match self.slots.get(index) {
            Some(Slot {
                generation: g,
                state: State::Stream(flow),
                ..
            }) if *g == generation => Some(flow.clone()),
            _ => None,
        }
    }

    /// Completes the call `id`: its waker to wake, or its stream's flow to finish, outside the
    /// lock. Unknown or stale ids (a call that was cancelled or timed out) are ignored.
    pub(crate) fn complete(&mut self, id: u64, reply: Reply) -> Option<Completion> {
        let (index, generation) = split(id);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        match &slot.state {
            State::Waiting(_) => {}
            State::Stream(flow) => return Some(Completion::Stream(flow.clone(), reply)),
            _ => return None,
        }
        match std::mem::replace(&mut slot.state, State::Done(reply)) {
            State::Waiting(waker) => Some(Completion::Wake(waker)),
            _ => None,
        }
    }

    /// Polls the call `id` for its reply, freeing the slot when it is taken. While it waits,
    /// also says (once) that its hedge is due.
    pub(crate) fn poll_hedged(&mut self, id: u64, cx: &mut Context<'_>) -> (Poll<Reply>, bool) {
        let (index, generation) = split(id);
        let due = match self
            .slots
            .get_mut(index)
            .filter(|s| s.generation == generation)
        {
            Some(slot) if slot.hedge == Hedge::Due => {
                slot.hedge = Hedge::Told;
                true
            }
            _ => false,
        };
        let poll = self.poll(id, cx);
        let due = due && poll.is_pending();
        (poll, due)
    }

    /// Marks every waiting call whose hedge time is at or before `now` as due, pushing its waker
    /// into `wakers`.
    pub(crate) fn due_hedges(&mut self, now: Instant, wakers: &mut Vec<Waker>) {
        for slot in &mut self.slots {
            if slot.hedge != Hedge::NotYet {
                continue;
            }
            let (State::Waiting(waker), Some(info)) = (&slot.state, &slot.info) else {
                continue;
            };
            if info.hedge_at.is_some_and(|at| at <= now) {
                slot.hedge = Hedge::Due;
                wakers.push(waker.clone());
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
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
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
            State::Stream(_) => Poll::Ready(Err(Error::new(
                ErrorKind::Internal,
                "a streaming call's slot polled as a call",
            ))),
        }
    }

    /// Abandons the call `id` (its future was dropped). Returns `true` if it was still waiting,
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
        let was_waiting = match &slot.state {
            State::Waiting(_) => true,
            State::Stream(flow) => !flow.is_finished(),
            _ => false,
        };
        if !matches!(slot.state, State::Free) {
            slot.state = State::Free;
            self.release(index);
        }
        was_waiting
    }

    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.info = None;
        self.free.push(index as u32);
    }

    /// Calls registered and not yet taken by their caller.
    pub(crate) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// When the deadline sweeper should look next.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.next_wake
    }

    /// Fails every waiting call whose deadline is at or before `now` with `DeadlineExceeded`,
    /// queueing a `Cancel` frame for each into `buf` (when `send_cancels`), and works out the
    /// next deadline. Returns the wakers of the expired calls.
    pub(crate) fn expire(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        send_cancels: bool,
    ) -> Vec<Waker> {
        let mut wakers = Vec::new();
        let mut next: Option<Instant> = None;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let stream = match (&slot.state, &slot.info) {
                (State::Waiting(_), Some(_)) => None,
                (State::Stream(flow), Some(_)) if !flow.is_finished() => Some(flow.clone()),
                _ => continue,
            };
            let Some(info) = &slot.info else {
                continue;
            };
            let Some(deadline) = info.deadline else {
                continue;
            };
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            let err = Error::new(
                ErrorKind::DeadlineExceeded,
                format!(
                    "{} did not complete within {} ms",
                    info.name,
                    info.budget.as_millis()
                ),
            );
            match stream {
                // A stream's deadline bounds the whole stream: it ends with the error.
                Some(flow) => flow.finish(Err(err), true, &mut wakers),
                None => {
                    if let State::Waiting(w) =
                        std::mem::replace(&mut slot.state, State::Done(Err(err)))
                    {
                        wakers.push(w);
                    }
                }
            }
            if send_cancels {
                let id = ((slot.generation as u64) << 32) | index as u64;
                frame::put_empty(buf, Kind::Cancel, 0, id);
            }
        }
        self.next_wake = next;
        wakers
    }

    /// Fails every waiting call with `err` and refuses new ones. Returns the wakers to wake.
    pub(crate) fn close(&mut self, err: &Error) -> Vec<Waker> {
        if self.closed.is_none() {
            self.closed = Some(err.clone());
        }
        let mut wakers = Vec::new();
        for slot in &mut self.slots {
            if let State::Stream(flow) = &slot.state {
                flow.finish(Err(err.clone()), true, &mut wakers);
            } else if matches!(slot.state, State::Waiting(_))
                && let State::Waiting(w) =
                    std::mem::replace(&mut slot.state, State::Done(Err(err.clone())))
            {
                wakers.push(w);
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

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn info(deadline: Option<Instant>) -> CallInfo {
        CallInfo {
            hedge_at: None,
            name: CallName::Static {
                service: "s",
                method: "m",
            },
            deadline,
            budget: Duration::from_millis(5),
        }
    }

    #[test]
    fn call_names_static_and_shared() {
        let shared = CallName::shared("calc.Calculator", "add");
        assert_eq!(shared.service(), "calc.Calculator");
        assert_eq!(shared.method(), "add");
        assert_eq!(shared.to_string(), "calc.Calculator.add");
        let fixed = CallName::Static {
            service: "calc.Calculator",
            method: "add",
        };
        assert_eq!(
            (fixed.service(), fixed.method()),
            (shared.service(), shared.method())
        );
        assert_eq!(fixed.to_string(), shared.to_string());
        let odd = CallName::shared("", "");
        assert_eq!(
            (odd.service(), odd.method(), odd.to_string().as_str()),
            ("", "", ".")
        );
    }

    #[test]
    fn complete_then_poll() {
        let mut p = Pending::default();
        let (id, _) = p.register(Waker::noop(), info(None)).unwrap();
        assert_ne!(id, 0);
        assert!(p.poll(id, &mut cx()).is_pending());
        p.complete(id, Ok(Bytes::from_static(b"x")));
        match p.poll(id, &mut cx()) {
            Poll::Ready(Ok(b)) => assert_eq!(&b[..], b"x"),
            _ => panic!("expected reply"),
        }
        // The slot is reused with a new generation; the old id is stale.
        let (id2, _) = p.register(Waker::noop(), info(None)).unwrap();
        assert_eq!(id2 & 0xffff_ffff, id & 0xffff_ffff);
        assert_ne!(id2, id);
        assert!(p.complete(id, Ok(Bytes::new())).is_none());
        assert!(p.poll(id2, &mut cx()).is_pending());
    }

    #[test]
    fn abandon_ignores_late_reply() {
        let mut p = Pending::default();
        let (id, _) = p.register(Waker::noop(), info(None)).unwrap();
        assert!(p.abandon(id));
        assert!(p.complete(id, Ok(Bytes::new())).is_none());
        let (id2, _) = p.register(Waker::noop(), info(None)).unwrap();
        assert!(p.poll(id2, &mut cx()).is_pending());
    }

    #[test]
    fn close_fails_waiting_and_new_calls() {
        let mut p = Pending::default();
        let (id, _) = p.register(Waker::noop(), info(None)).unwrap();
        p.close(&Error::connection_closed("gone"));
        match p.poll(id, &mut cx()) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionClosed),
            _ => panic!("expected error"),
        }
        assert!(p.register(Waker::noop(), info(None)).is_err());
    }

    #[test]
    fn deadlines_rearm_only_when_earlier_and_expire_with_cancel() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        let (late, rearm) = p
            .register(Waker::noop(), info(Some(t0 + Duration::from_secs(10))))
            .unwrap();
        assert!(rearm, "first deadline arms the sweeper");
        let (_, rearm) = p
            .register(Waker::noop(), info(Some(t0 + Duration::from_secs(20))))
            .unwrap();
        assert!(!rearm, "a later deadline does not");
        let (early, rearm) = p
            .register(Waker::noop(), info(Some(t0 + Duration::from_secs(1))))
            .unwrap();
        assert!(rearm, "an earlier one does");
        let (_, rearm) = p.register(Waker::noop(), info(None)).unwrap();
        assert!(!rearm);
        assert_eq!(p.next_wake(), Some(t0 + Duration::from_secs(1)));

        let mut buf = BytesMut::new();
        let woken = p.expire(t0 + Duration::from_secs(5), &mut buf, true);
        assert_eq!(woken.len(), 1);
        assert_eq!(p.next_wake(), Some(t0 + Duration::from_secs(10)));
        let h = frame::parse_header(&buf, u32::MAX).unwrap().unwrap();
        assert_eq!((h.kind, h.id), (Kind::Cancel as u8, early));
        match p.poll(early, &mut cx()) {
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
                assert_eq!(e.message(), "s.m did not complete within 5 ms");
            }
            _ => panic!("expected deadline error"),
        }
        assert!(p.poll(late, &mut cx()).is_pending());
    }

    #[test]
    fn a_due_hedge_is_told_once_and_only_while_waiting() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        let hedged = |at| CallInfo {
            hedge_at: Some(at),
            ..info(None)
        };
        let (a, _) = p
            .register(Waker::noop(), hedged(t0 + Duration::from_millis(5)))
            .unwrap();
        let (b, _) = p
            .register(Waker::noop(), hedged(t0 + Duration::from_millis(50)))
            .unwrap();
        let (c, _) = p.register(Waker::noop(), info(None)).unwrap();
        let mut wakers = Vec::new();
        p.due_hedges(t0, &mut wakers);
        assert!(wakers.is_empty());
        p.due_hedges(t0 + Duration::from_millis(10), &mut wakers);
        assert_eq!(wakers.len(), 1, "only the first is due");
        p.due_hedges(t0 + Duration::from_millis(20), &mut wakers);
        assert_eq!(wakers.len(), 1, "found due once");
        assert!(p.poll_hedged(a, &mut cx()).1);
        assert!(!p.poll_hedged(a, &mut cx()).1, "told once");
        assert!(!p.poll_hedged(b, &mut cx()).1);
        // An answered call is never reported due.
        assert!(p.complete(b, Ok(Bytes::new())).is_some());
        p.due_hedges(t0 + Duration::from_secs(1), &mut wakers);
        assert_eq!(wakers.len(), 1);
        assert!(p.poll_hedged(b, &mut cx()).0.is_ready());
        assert!(!p.poll_hedged(c, &mut cx()).1, "no hedge time, no hedge");
    }
}
