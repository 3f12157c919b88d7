//! Connection plumbing shared by the client and the server: the write queue with its writer task,
//! the frame reader, and keepalive.
//!
//! Every connection has exactly one writer task that owns the socket's write half. Everyone else
//! (callers, handlers, the read loop) appends whole frames to a shared buffer under a short lock
//! and pokes the writer. The writer yields once before flushing, so all frames produced by tasks
//! that are runnable at that moment leave in one `write` syscall: batching under load, no added
//! latency when idle, and no thread hop (the writer is woken on the thread that queued the frame).
//! A read loop that expects bytes soon may keep its worker awake instead of sleeping
//! (`busy_poll`).

mod batch;
mod body_pool;
mod busy_poll;
mod keepalive;
mod notifier;
mod outbound;
mod reader;
mod stream;

pub(crate) use busy_poll::BusyPoll;
pub(crate) use keepalive::{Keepalive, Liveness};
pub use notifier::{EncodedNotification, Notifier};
pub(crate) use outbound::{Flush, Outbound, WriteLimits};
pub(crate) use reader::FrameReader;
pub(crate) use stream::{ReadHalf, Stream, WriteHalf};
