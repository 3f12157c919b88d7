//! A streaming service shared by the stream tests (tests/streaming.rs, tests/sidecar.rs):
//! every shape of streaming method, and handlers whose cancellation a test can observe.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stardust::{Stream, Streaming};
use tokio::sync::Notify;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub number: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NumberError {
    Unlucky(u64),
}

#[stardust::service]
pub trait Logs {
    /// `count` lines of `file`.
    async fn tail(&self, file: String, count: u64) -> Stream<Line>;
    /// The number of bytes uploaded.
    async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64;
    /// Each message echoed back, prefixed with the room; stops reading after `"bye"`.
    async fn chat(&self, room: String, input: Streaming<String>) -> Stream<String>;
    /// 0..n, with 13 as a typed error.
    async fn numbers(&self, n: u64) -> Stream<Result<u64, NumberError>>;
    /// Items of `size` bytes without end, counting what it produced.
    async fn flood(&self, size: usize) -> Stream<serde_bytes::ByteBuf>;
    /// One item, then nothing until cancelled.
    async fn hang(&self) -> Stream<u64>;
    /// Panics after `n` items.
    async fn fragile(&self, n: u64) -> Stream<u64>;
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Items `flood` has produced so far.
    async fn produced(&self) -> u64;
    /// The provider's name, then nothing until cancelled.
    async fn park(&self) -> Stream<String>;
}

#[derive(Default)]
pub struct State {
    /// Items `flood` produced.
    pub produced: AtomicU64,
    /// A `hang` stream was dropped (its call cancelled).
    pub hang_dropped: AtomicBool,
    pub dropped: Notify,
    /// `chat` stopped reading its input.
    pub chat_stopped: Notify,
    /// Prefixed to `tail`'s lines and sent by `park`: which provider answered.
    pub name: String,
}

#[derive(Clone, Default)]
pub struct LogsImpl(pub Arc<State>);

/// Sets its flag and notifies when dropped: how a test observes a cancelled handler.
struct OnDrop(Arc<State>);

impl LogsImpl {
    /// A provider whose `tail` lines and `park` item carry `name`.
    pub fn named(name: &str) -> LogsImpl {
        LogsImpl(Arc::new(State {
            name: name.to_owned(),
            ..State::default()
        }))
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.hang_dropped.store(true, Ordering::SeqCst);
        self.0.dropped.notify_waiters();
        self.0.dropped.notify_one();
    }
}

impl Logs for LogsImpl {
    async fn tail(&self, file: String, count: u64) -> Stream<Line> {
        let state = self.0.clone();
        Stream::iter((0..count).map(move |number| Line {
            number,
            text: format!("{}{file}:{number}", state.name),
        }))
    }

    async fn upload(&self, _name: String, mut chunks: Streaming<Vec<u8>>) -> u64 {
        let mut total = 0;
        while let Some(chunk) = chunks.next().await {
            total += chunk.expect("chunk").len() as u64;
        }
        total
    }

    async fn chat(&self, room: String, mut input: Streaming<String>) -> Stream<String> {
        let (tx, out) = Stream::channel(4);
        let state = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = input.next().await {
                let bye = msg == "bye";
                if tx.send(format!("{room}: {msg}")).await.is_err() || bye {
                    break;
                }
            }
            drop(input);
            state.chat_stopped.notify_one();
        });
        out
    }

    async fn numbers(&self, n: u64) -> Stream<Result<u64, NumberError>> {
        Stream::iter((0..n).map(|i| {
            if i == 13 {
                Err(NumberError::Unlucky(i))
            } else {
                Ok(i)
            }
        }))
    }

    async fn flood(&self, size: usize) -> Stream<serde_bytes::ByteBuf> {
        let state = self.0.clone();
        Stream::new(futures::stream::repeat_with(move || {
            state.produced.fetch_add(1, Ordering::SeqCst);
            serde_bytes::ByteBuf::from(vec![7u8; size])
        }))
    }

    async fn hang(&self) -> Stream<u64> {
        let guard = OnDrop(self.0.clone());
        Stream::new(
            futures::stream::once(async { 1 }).chain(futures::stream::poll_fn(move |_| {
                let _ = &guard;
                std::task::Poll::Pending
            })),
        )
    }

    async fn fragile(&self, n: u64) -> Stream<u64> {
        Stream::iter((0..).inspect(move |i| {
            assert!(*i < n, "fragile stream broke at item {i}");
        }))
    }

    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn produced(&self) -> u64 {
        self.0.produced.load(Ordering::SeqCst)
    }

    async fn park(&self) -> Stream<String> {
        let name = self.0.name.clone();
        Stream::new(futures::stream::once(async move { name }).chain(futures::stream::pending()))
    }
}
