//! The state one end of a streaming call keeps: the items received and not yet taken (with the
//! credit owed back for them), and the credit left for sending items.
//!
//! Both ends, client and server, keep one [`Flow`] per stream, behind one small lock: the
//! connection's read loop adds what arrives (items, the end, credit), the application's side
//! takes items and spends credit. Every method that may make the other side runnable returns
//! the waker to wake instead of waking it, so the read loop wakes each task once per batch of
//! frames, after its locks are released.
//!
//! The lock is taken per batch, never per item: the read loop adds a run of items at once, a
//! [`Reader`] moves every item waiting into a queue of its own in one go (and gives credit back
//! from there), and a sender spends credit once per run of items it wrote.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, ErrorKind};
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::stream::{MAX_CREDIT, item_cost};

/// One received item or the end of what is received.
pub(crate) enum Recv {
    /// An item's MessagePack body; `grant` is credit to give back to the sender now (the
    /// application has taken half a window since the last grant).
    Item { body: Bytes, grant: Option<u32> },
    /// The incoming side ended: `Ok` with the final body (the client's `Response`; empty for
    /// the server's view of an `End`), or how it failed.
    End(Result<Bytes, Error>),
}

pub(crate) struct Flow {
    st: Mutex<State>,
}

/// What [`Flow::poll_drain`] found.
enum Drained {
    /// Items were moved to the reader's queue.
    Items,
    /// The incoming side ended (every item before it was taken).
    End(Result<Bytes, Error>),
}

/// The application's end of a flow's incoming items: a queue of its own, filled from the flow
/// once per batch, and the credit it owes the sender for items taken from it.
pub(crate) struct Reader {
    local: VecDeque<Bytes>,
    /// Cost of the items taken since credit was last given back.
    unacked: usize,
    window: usize,
}

impl Reader {
    /// A reader granting `window` bytes (the flow's receive window).
    pub(crate) fn new(window: u32) -> Reader {
        Reader {
            local: VecDeque::new(),
            unacked: 0,
            window: window as usize,
        }
    }

    /// The next item of `flow`, or its end once every item before it was taken. An item's
    /// `grant` is credit to give back now: half a window taken since the last grant, so the
    /// sender never runs dry while the application keeps up (a grant per item would cost a
    /// frame per item).
    pub(crate) fn poll_next(&mut self, flow: &Flow, cx: &mut Context<'_>) -> Poll<Recv> {
        loop {
            if let Some(body) = self.local.pop_front() {
                self.unacked += item_cost(body.len());
                let grant = (self.unacked >= self.window / 2).then(|| {
                    let n = self.unacked.min(MAX_CREDIT as usize);
                    self.unacked -= n;
                    n as u32
                });
                return Poll::Ready(Recv::Item {
                    body,
                    grant: grant.filter(|n| *n > 0),
                });
            }
            match flow.poll_drain(cx, &mut self.local) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Drained::Items) => continue,
                Poll::Ready(Drained::End(end)) => return Poll::Ready(Recv::End(end)),
            }
        }
    }
}

struct State {
    items: VecDeque<Bytes>,
    /// What the items in `items` cost the sender's window.
    held: usize,
    /// The window this end grants the sender (its initial credit).
    window: usize,
    /// How the incoming side ended, once it has (kept until every item before it was taken).
    end: Option<Result<Bytes, Error>>,
    /// The end was handed to the application.
    end_taken: bool,
    recv_waker: Option<Waker>,
    /// Items received so far.
    received: u64,
    /// Credit left for sending: may go below zero by at most one item (an item is sent while
    /// any credit is left, however large it is).
    credit: i64,
    send_waker: Option<Waker>,
    /// Why nothing more may be sent, once that is so.
    send_closed: Option<Error>,
    /// Items sent so far.
    sent: u64,
    /// Whether items may arrive at all (a server's flow for a method without an input stream
    /// takes none).
    takes_items: bool,
}

impl Flow {
    /// A flow granting the peer `recv_window` bytes of items, and allowed `send_window` bytes
    /// of its own until the peer grants more.
    pub(crate) fn new(recv_window: u32, send_window: u32) -> Flow {
        Flow {
            st: Mutex::new(State {
                items: VecDeque::new(),
                held: 0,
                window: recv_window as usize,
                end: None,
                end_taken: false,
                recv_waker: None,
                received: 0,
                credit: send_window as i64,
                send_waker: None,
                send_closed: None,
                sent: 0,
                takes_items: true,
            }),
        }
    }

    /// A flow on which no item may arrive: one arriving breaks the protocol.
    pub(crate) fn without_input(self) -> Flow {
        self.st.lock().takes_items = false;
        self
    }

    /// Adds a received item; see [`Flow::push_items`].
    #[cfg(test)]
    pub(crate) fn push_item(&self, body: Bytes, max_frame: u32) -> Result<Option<Waker>, Error> {
        self.push_items(&mut vec![body], max_frame)
    }

    /// Adds a run of received items (taking them out of `bodies`), under one lock. Fails when
    /// the sender has overrun the window it was granted by more than one frame of `max_frame`
    /// (it ignores flow control: a protocol violation, which the caller answers by closing the
    /// connection), or sends items to a call that takes none. Items after the end are dropped.
    pub(crate) fn push_items(
        &self,
        bodies: &mut Vec<Bytes>,
        max_frame: u32,
    ) -> Result<Option<Waker>, Error> {
        let mut st = self.st.lock();
        if st.end.is_some() {
            bodies.clear();
            return Ok(None);
        }
        if !st.takes_items {
            bodies.clear();
            return Err(Error::protocol(
                "the peer sent stream items to a call that takes no input stream",
            ));
        }
        let bound = st.window + HEADER_LEN + max_frame as usize;
        for body in bodies.drain(..) {
            st.held += item_cost(body.len());
            if st.held > bound {
                return Err(Error::protocol(format!(
                    "the peer sent stream items beyond the credit it was granted ({} bytes \
                     held unread, the window is {} bytes)",
                    st.held, st.window
                )));
            }
            st.items.push_back(body);
            st.received += 1;
        }
        Ok(st.recv_waker.take())
    }

    /// Ends the incoming side (first end wins). Also closes the sending side when the end is
    /// the whole call's (`closes_send`: the client receiving the server's final answer).
    pub(crate) fn finish(
        &self,
        end: Result<Bytes, Error>,
        closes_send: bool,
        wakers: &mut Vec<Waker>,
    ) {
        let mut st = self.st.lock();
        if closes_send && st.send_closed.is_none() {
            st.send_closed = Some(match &end {
                Err(e) => e.clone(),
                Ok(_) => Error::new(ErrorKind::Cancelled, "the call has ended"),
            });
            wakers.extend(st.send_waker.take());
        }
        if st.end.is_none() {
            st.end = Some(end);
            wakers.extend(st.recv_waker.take());
        }
    }

    /// Whether the incoming side has ended (its end may still wait behind items).
    pub(crate) fn is_finished(&self) -> bool {
        self.st.lock().end.is_some()
    }

    /// Moves every item received into `into` (a [`Reader`]'s own, empty, queue) in one go;
    /// once none is left, the end (once).
    fn poll_drain(&self, cx: &mut Context<'_>, into: &mut VecDeque<Bytes>) -> Poll<Drained> {
        let mut st = self.st.lock();
        if !st.items.is_empty() {
            std::mem::swap(&mut st.items, into);
            st.held = 0;
            return Poll::Ready(Drained::Items);
        }
        match st.end.clone() {
            Some(end) if !st.end_taken => {
                st.end_taken = true;
                Poll::Ready(Drained::End(end))
            }
            Some(_) => Poll::Ready(Drained::End(Err(Error::new(
                ErrorKind::Internal,
                "stream polled after its end",
            )))),
            None => {
                if !st
                    .recv_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    st.recv_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Items received so far.
    pub(crate) fn received(&self) -> u64 {
        self.st.lock().received
    }

    /// Adds credit the peer granted; returns the sender's waker if it waited for it.
    pub(crate) fn add_credit(&self, bytes: u32) -> Option<Waker> {
        let mut st = self.st.lock();
        st.credit += bytes as i64;
        if st.credit > 0 {
            st.send_waker.take()
        } else {
            None
        }
    }

    /// Ready with the credit left when an item may be sent (some is left), or with the reason
    /// nothing may be sent any more.
    pub(crate) fn poll_credit(&self, cx: &mut Context<'_>) -> Poll<Result<usize, Error>> {
        let mut st = self.st.lock();
        if let Some(e) = &st.send_closed {
            return Poll::Ready(Err(e.clone()));
        }
        if st.credit > 0 {
            return Poll::Ready(Ok(st.credit as usize));
        }
        if !st
            .send_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            st.send_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Registers `cx`'s waker to be woken when sending is closed (or credit arrives), for a
    /// sender that waits on something else (its next item) and must still notice that nothing
    /// more may be sent.
    pub(crate) fn watch_send(&self, cx: &mut Context<'_>) {
        let mut st = self.st.lock();
        if !st
            .send_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            st.send_waker = Some(cx.waker().clone());
        }
    }

    /// Counts an item of `cost` bytes (its whole frame) as sent.
    pub(crate) fn spend(&self, cost: usize) {
        self.spend_many(cost, 1);
    }

    /// Counts `items` items of `cost` bytes in all as sent.
    pub(crate) fn spend_many(&self, cost: usize, items: u64) {
        let mut st = self.st.lock();
        st.credit -= cost as i64;
        st.sent += items;
    }

    /// Items sent so far.
    pub(crate) fn sent(&self) -> u64 {
        self.st.lock().sent
    }

    /// Nothing more may be sent (the peer stopped reading, or the call ended); returns the
    /// sender's waker.
    pub(crate) fn close_send(&self, why: Error) -> Option<Waker> {
        let mut st = self.st.lock();
        if st.send_closed.is_none() {
            st.send_closed = Some(why);
        }
        st.send_waker.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn item(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn items_come_out_in_order_then_the_end() {
        let flow = Flow::new(1000, 1000);
        flow.push_item(item(1), 1024).unwrap();
        flow.push_item(item(2), 1024).unwrap();
        let mut wakers = Vec::new();
        flow.finish(Ok(Bytes::from_static(b"\xc0")), true, &mut wakers);
        let mut reader = Reader::new(1000);
        for n in [1, 2] {
            match reader.poll_next(&flow, &mut cx()) {
                Poll::Ready(Recv::Item { body, .. }) => assert_eq!(body.len(), n),
                _ => panic!("expected item {n}"),
            }
        }
        match reader.poll_next(&flow, &mut cx()) {
            Poll::Ready(Recv::End(Ok(body))) => assert_eq!(&body[..], b"\xc0"),
            _ => panic!("expected the end"),
        }
        assert_eq!(flow.received(), 2);
        // The whole call ended: nothing more may be sent.
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Err(_))));
    }

    #[test]
    fn credit_is_given_back_per_half_window() {
        let flow = Flow::new(100, 0);
        let mut reader = Reader::new(100);
        let mut grants = Vec::new();
        // Each item costs 14 + 6 = 20 bytes; they arrive in two runs.
        flow.push_items(&mut vec![item(6); 4], 1024).unwrap();
        for round in 0..3 {
            while let Poll::Ready(Recv::Item { grant, .. }) = reader.poll_next(&flow, &mut cx()) {
                grants.extend(grant);
            }
            if round < 2 {
                flow.push_items(&mut vec![item(6); 3], 1024).unwrap();
            }
        }
        // Half the window (50 bytes) taken after 3 items (60 bytes): granted then, and again
        // after the next three; the last item's 20 bytes wait for more.
        assert_eq!(grants, vec![60, 60, 60]);
    }

    #[test]
    fn a_sender_that_ignores_credit_is_caught() {
        let flow = Flow::new(100, 0);
        // The window plus one whole frame of the limit is tolerated...
        flow.push_item(item(86), 1024).unwrap();
        flow.push_item(item(1024), 1024).unwrap();
        // ...one byte more is not.
        let err = flow.push_item(item(1), 1024).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.message().contains("beyond the credit"), "{err}");
    }

    #[test]
    fn sending_waits_for_credit_and_may_overshoot_by_one_item() {
        let flow = Flow::new(0, 10);
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Ok(_))));
        flow.spend(500);
        assert!(flow.poll_credit(&mut cx()).is_pending());
        assert!(
            flow.add_credit(400).is_none(),
            "still below zero: not woken"
        );
        assert!(flow.poll_credit(&mut cx()).is_pending());
        assert!(flow.add_credit(91).is_some(), "the waiting sender is woken");
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Ok(_))));
        flow.close_send(Error::new(ErrorKind::Cancelled, "stop"));
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Err(_))));
        assert_eq!(flow.sent(), 1);
    }
}
