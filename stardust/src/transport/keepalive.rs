//! Keepalive: each side pings when it has heard nothing for `interval`, and gives up on a peer
//! that has been silent for `timeout`. Any frame counts as a sign of life, so a busy connection
//! never sends pings.
//!
//! While the server has stopped reading from a client that does not read its responses
//! ([`Liveness::hold`]), silence means nothing and keepalive waits; the write side's stall
//! timeout watches that peer instead.
//!
//! A connection that has heard nothing for an interval is also quiet enough to give its write
//! buffers back to the allocator ([`Outbound::release_buffers`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Outbound;
use super::body_pool::BodyPool;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, Kind};

/// Keepalive settings of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keepalive {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Keepalive {
        Keepalive {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// When the connection last received anything.
pub(crate) struct Liveness {
    start: Instant,
    last_rx_us: AtomicU64,
    /// When the last ping went out (0: none yet).
    ping_us: AtomicU64,
    /// Reading is paused: the peer cannot be heard, so its silence is not held against it.
    held: AtomicBool,
}

/// Keepalive's clock stands still while this lives (see [`Liveness::hold`]).
pub(crate) struct Hold<'a>(&'a Liveness);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        // Silence counts again from now, not from before the pause.
        self.0.touch();
        self.0.held.store(false, Ordering::Release);
    }
}

impl Liveness {
    pub(crate) fn new() -> Liveness {
        Liveness {
            start: Instant::now(),
            last_rx_us: AtomicU64::new(0),
            ping_us: AtomicU64::new(0),
            held: AtomicBool::new(false),
        }
    }

    /// Pauses keepalive while the connection deliberately does not read (backpressure on a peer
    /// that does not read what it is sent), until the guard is dropped.
    pub(crate) fn hold(&self) -> Hold<'_> {
        self.held.store(true, Ordering::Relaxed);
        Hold(self)
    }

    /// Records that bytes arrived.
    pub(crate) fn touch(&self) {
        let us = self.start.elapsed().as_micros() as u64;
        self.last_rx_us.store(us, Ordering::Relaxed);
    }

    /// How long the ping sent last has gone unanswered (nothing at all received since it went
    /// out); `None` when no ping is waiting.
    pub(crate) fn unanswered_ping(&self) -> Option<Duration> {
        let ping = self.ping_us.load(Ordering::Relaxed);
        if ping == 0 || self.last_rx_us.load(Ordering::Relaxed) >= ping {
            return None;
        }
        let now = self.start.elapsed().as_micros() as u64;
        Some(Duration::from_micros(now.saturating_sub(ping)))
    }

    fn silent_for(&self) -> Duration {
        let now = self.start.elapsed().as_micros() as u64;
        Duration::from_micros(now.saturating_sub(self.last_rx_us.load(Ordering::Relaxed)))
    }
}

impl Keepalive {
    /// Runs until the peer has been silent for `timeout`, then returns the error to close with.
    /// `bodies` is the read side's pool of large-body buffers, emptied with the write buffers.
    pub(crate) async fn watch<S>(
        self,
        live: Arc<Liveness>,
        out: Arc<Outbound<S>>,
        bodies: Arc<BodyPool>,
    ) -> Error {
        let tick = (self.interval / 2).max(Duration::from_millis(1));
        let mut nonce = 0u64;
        loop {
            tokio::time::sleep(tick).await;
            if live.held.load(Ordering::Acquire) {
                continue;
            }
            let silent = live.silent_for();
            if silent >= self.timeout {
                return Error::new(
                    ErrorKind::ConnectionClosed,
                    format!(
                        "keepalive: no answer from the peer for {} ms (timeout {} ms)",
                        silent.as_millis(),
                        self.timeout.as_millis()
                    ),
                );
            }
            if silent >= self.interval {
                // Nothing received for a whole interval: whatever the connection's buffers grew
                // to for past traffic can go back to the allocator meanwhile.
                out.release_buffers();
                bodies.release();
                nonce += 1;
                if live.unanswered_ping().is_none() {
                    let us = (live.start.elapsed().as_micros() as u64).max(1);
                    live.ping_us.store(us, Ordering::Relaxed);
                }
                let _ = out.push(|buf| {
                    frame::put_empty(buf, Kind::Ping, 0, nonce);
                    Ok(())
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_is_unanswered_until_anything_arrives() {
        let live = Liveness::new();
        assert_eq!(live.unanswered_ping(), None, "no ping sent yet");
        live.touch();
        std::thread::sleep(Duration::from_millis(2));
        live.ping_us.store(
            (live.start.elapsed().as_micros() as u64).max(1),
            Ordering::Relaxed,
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            live.unanswered_ping()
                .is_some_and(|d| d >= Duration::from_millis(1))
        );
        live.touch();
        assert_eq!(
            live.unanswered_ping(),
            None,
            "the pong (or any frame) answers it"
        );
    }
}
