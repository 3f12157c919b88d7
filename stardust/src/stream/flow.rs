//! The state one end of a streaming call keeps: the items received and not yet taken (with the
//! credit owed back for them), and the credit left for sending items.
//!
//! Both ends, client and server, keep one [`Flow`] per stream, behind one small lock: the
//! connection's read loop adds what arrives (items, the end, credit), the application's side
//! takes items and spends credit. Every method that may make the other side runnable returns
//! the waker to wake instead of waking it, so the read loop wakes each task once per batch of
//! frames, after its locks are released.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, ErrorKind};
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::stream::item_cost;

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

struct State {
    items: VecDeque<Bytes>,
    /// What the items in `items` cost the sender's window.
    held: usize,
    /// Cost of items taken since credit was last given back.
    unacked: usize,
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
                unacked: 0,
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

    /// Adds a received item. Fails when the sender has overrun the window it was granted by more
    /// than one frame of `max_frame` (it ignores flow control: a protocol violation, which the
    /// caller answers by closing the connection). Items after the end are dropped.
    pub(crate) fn push_item(&self, body: Bytes, max_frame: u32) -> Result<Option<Waker>, Error> {
        let mut st = self.st.lock();
        if st.end.is_some() {
            return Ok(None);
        }
        if !st.takes_items {
            return Err(Error::protocol(
                "the peer sent stream items to a call that takes no input stream",
            ));
        }
        st.held += item_cost(body.len());
        let bound = st.window + HEADER_LEN + max_frame as usize;
        if st.held > bound {
            return Err(Error::protocol(format!(
                "the peer sent stream items beyond the credit it was granted ({} bytes held \
                 unread, the window is {} bytes)",
                st.held, st.window
            )));
        }
        st.items.push_back(body);
        st.received += 1;
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

    /// Takes the next item, or the end once every item before it was taken.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Recv> {
        let mut st = self.st.lock();
        if let Some(body) = st.items.pop_front() {
            let cost = item_cost(body.len());
            st.held -= cost;
            st.unacked += cost;
            // Half a window taken: give it back now, so the sender never runs dry while the
            // application keeps up (a grant per item would cost a frame per item).
            let grant = if st.unacked >= st.window / 2 && st.end.is_none() {
                let n = st.unacked.min(crate::protocol::stream::MAX_CREDIT as usize) as u32;
                st.unacked -= n as usize;
                (n > 0).then_some(n)
            } else {
                None
            };
            return Poll::Ready(Recv::Item { body, grant });
        }
        match st.end.clone() {
            Some(end) if !st.end_taken => {
                st.end_taken = true;
                Poll::Ready(Recv::End(end))
            }
            Some(_) => Poll::Ready(Recv::End(Err(Error::new(
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

    /// Ready when an item may be sent (credit left), or with the reason nothing may be sent
    /// any more.
    pub(crate) fn poll_credit(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut st = self.st.lock();
        if let Some(e) = &st.send_closed {
            return Poll::Ready(Err(e.clone()));
        }
        if st.credit > 0 {
            return Poll::Ready(Ok(()));
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
        let mut st = self.st.lock();
        st.credit -= cost as i64;
        st.sent += 1;
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
        for n in [1, 2] {
            match flow.poll_recv(&mut cx()) {
                Poll::Ready(Recv::Item { body, .. }) => assert_eq!(body.len(), n),
                _ => panic!("expected item {n}"),
            }
        }
        match flow.poll_recv(&mut cx()) {
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
        let mut grants = Vec::new();
        for _ in 0..10 {
            // Each item costs 14 + 6 = 20 bytes.
            flow.push_item(item(6), 1024).unwrap();
        }
        while let Poll::Ready(Recv::Item { grant, .. }) = flow.poll_recv(&mut cx()) {
            grants.extend(grant);
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
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Ok(()))));
        flow.spend(500);
        assert!(flow.poll_credit(&mut cx()).is_pending());
        assert!(
            flow.add_credit(400).is_none(),
            "still below zero: not woken"
        );
        assert!(flow.poll_credit(&mut cx()).is_pending());
        assert!(flow.add_credit(91).is_some(), "the waiting sender is woken");
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Ok(()))));
        flow.close_send(Error::new(ErrorKind::Cancelled, "stop"));
        assert!(matches!(flow.poll_credit(&mut cx()), Poll::Ready(Err(_))));
        assert_eq!(flow.sent(), 1);
    }
}
