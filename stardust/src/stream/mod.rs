//! Streaming calls: the item streams a method sends ([`Stream`]) and receives ([`Streaming`]).
//!
//! A service method streams by naming these types in its signature:
//!
//! ```
//! use stardust::{Stream, Streaming};
//!
//! #[stardust::service]
//! pub trait Logs {
//!     /// Server streaming: the handler returns the lines, the consumer receives them.
//!     async fn tail(&self, file: String) -> Stream<String>;
//!     /// Client streaming: the consumer sends the chunks, the handler receives them.
//!     async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64;
//!     /// Both ways at once.
//!     async fn chat(&self, room: String, input: Streaming<String>) -> Stream<String>;
//! }
//! ```
//!
//! Each side *sends* a [`Stream`] and *receives* a [`Streaming`]: the handler returns a
//! `Stream` and reads its input from a `Streaming`; the generated client's methods take the
//! input as a `Stream` and return the output as a `Streaming`. A `Stream` is built from any
//! [`futures::Stream`] ([`Stream::new`], [`Stream::iter`]) or fed through a [`StreamSender`]
//! ([`Stream::channel`]); a `Streaming` is a [`futures::Stream`] of `Result<T, Error>`.
//!
//! # What a stream guarantees
//!
//! - **Flow control**: each direction of each stream has a credit window (256 KiB by default,
//!   [`ServerBuilder::stream_window`](crate::ServerBuilder::stream_window),
//!   [`ClientBuilder::stream_window`](crate::ClientBuilder::stream_window)). A sender stops when
//!   the receiver's application has not taken what it was sent, so a slow reader bounds what
//!   its producer buffers, and one stream never holds up the others or the unary calls on the
//!   same connection.
//! - **Ending**: the output ends after the handler's `Stream` ends; the call then completes
//!   like any other (a client-streaming method returns its value). A framework failure
//!   (deadline, provider lost, `Overloaded`, ...) ends the consumer's `Streaming` with one
//!   `Err` item. Dropping the consumer's `Streaming` (or the future of a client-streaming call)
//!   cancels the call: the handler is dropped at its next suspension point. A handler that
//!   drops its input `Streaming` early tells the consumer, whose input is no longer read.
//! - **Deadlines**: the call's timeout ([`Client::with_timeout`](crate::Client::with_timeout),
//!   default 30 s) bounds the whole stream, as it bounds a call; a stream meant to stay open
//!   longer (a watch, a tail) is opened from a handle with
//!   [`Client::without_timeout`](crate::Client::without_timeout). Without a deadline a stream
//!   lasts until either end ends it or the connection is lost; keepalive finds a silent peer.
//! - **Limits**: a connection carries at most 1,024 open streams by default
//!   ([`ServerBuilder::max_streams`](crate::ServerBuilder::max_streams)); one more is refused
//!   with `Overloaded`. An item is one frame: over the peer's frame limit it fails with
//!   `FrameTooLarge`.

pub(crate) mod flow;

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

/// A stream of items a method sends: what a streaming handler returns, and what a consumer
/// passes for a method's `Streaming` input.
///
/// ```
/// use stardust::Stream;
///
/// let numbers: Stream<u64> = Stream::iter(0..10);
/// let (sender, lines) = Stream::<String>::channel(16);
/// # drop((numbers, sender, lines));
/// ```
#[must_use = "a stream does nothing unless it is returned or passed to a call"]
pub struct Stream<T> {
    inner: BoxStream<'static, T>,
}

impl<T: Send + 'static> Stream<T> {
    /// A stream of what `stream` yields.
    pub fn new(stream: impl futures::Stream<Item = T> + Send + 'static) -> Stream<T> {
        Stream {
            inner: Box::pin(stream),
        }
    }

    /// A stream of the items of `items`, e.g. a `Vec` or a range.
    pub fn iter<I>(items: I) -> Stream<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Stream::new(futures::stream::iter(items))
    }

    /// A stream without items.
    pub fn empty() -> Stream<T> {
        Stream::new(futures::stream::empty())
    }

    /// A stream fed through the returned [`StreamSender`]: items sent there come out here, in
    /// order. At most `capacity` items wait in between (the sender waits for room), so a
    /// producer task never runs ahead of the stream's flow control by more than that. The
    /// stream ends when every sender is dropped.
    pub fn channel(capacity: usize) -> (StreamSender<T>, Stream<T>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (StreamSender { tx }, Stream::new(stream))
    }
}

impl<T> futures::Stream for Stream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Stream(..)")
    }
}

impl<T: Send + 'static> From<Vec<T>> for Stream<T> {
    fn from(items: Vec<T>) -> Stream<T> {
        Stream::iter(items)
    }
}

/// Feeds a [`Stream`] made by [`Stream::channel`]. Cheap to clone; the stream ends when every
/// clone is dropped.
pub struct StreamSender<T> {
    tx: tokio::sync::mpsc::Sender<T>,
}

impl<T> StreamSender<T> {
    /// Sends `item`, waiting while the channel is full (the stream's reader, or its flow
    /// control, is behind). Fails with `Cancelled` once nobody reads the stream any more: the
    /// call ended or was cancelled, so the producer should stop.
    pub async fn send(&self, item: T) -> Result<(), Error> {
        self.tx.send(item).await.map_err(|_| closed())
    }

    /// Whether the stream's reading end is gone (sending would fail).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the stream's reading end is gone: for a producer that waits on something
    /// else and must notice the consumer left.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

fn closed() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "the stream is no longer read: its call ended or was cancelled",
    )
}

impl<T> Clone for StreamSender<T> {
    fn clone(&self) -> Self {
        StreamSender {
            tx: self.tx.clone(),
        }
    }
}

impl<T> fmt::Debug for StreamSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Where a [`Streaming`] gets its items: a stream's receiving end on a client or a server
/// connection, each encoded as MessagePack.
pub(crate) trait RawSource: Send + 'static {
    /// The next item's body, `None` at the end, or an `Err` that ends the stream.
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>>;
}

/// A stream of items a method receives: a handler's input, or the output a consumer gets from
/// a streaming method. Yields `Ok(item)` for each item, then ends; a failure of the call
/// (deadline, lost connection, an item that does not decode, ...) is one last `Err`.
///
/// Dropping it stops the flow: a consumer dropping a method's output cancels the call; a
/// handler dropping its input tells the consumer to stop sending.
#[must_use = "a streaming call's items arrive only while its `Streaming` is read"]
pub struct Streaming<T> {
    source: Option<Box<dyn RawSource>>,
    _item: PhantomData<fn() -> T>,
}

impl<T> Streaming<T> {
    pub(crate) fn from_source(source: Box<dyn RawSource>) -> Streaming<T> {
        Streaming {
            source: Some(source),
            _item: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Streaming<T> {
    /// The next item: `Some(Ok(item))`, `Some(Err(e))` once if the stream failed, `None` at
    /// its end. The same as `futures::StreamExt::next`, without the import.
    pub async fn next(&mut self) -> Option<Result<T, Error>> {
        std::future::poll_fn(|cx| futures::Stream::poll_next(Pin::new(&mut *self), cx)).await
    }
}

impl<T: DeserializeOwned> futures::Stream for Streaming<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(source) = self.source.as_mut() else {
            return Poll::Ready(None);
        };
        let next = match source.poll_raw(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        match next {
            Some(Ok(body)) => match decode_item::<T>(&body) {
                Ok(item) => Poll::Ready(Some(Ok(item))),
                // The stream cannot go on past an item it cannot read: drop the source (which
                // ends the flow, cancelling a consumer's call) and report it.
                Err(e) => {
                    self.source = None;
                    Poll::Ready(Some(Err(e)))
                }
            },
            Some(Err(e)) => {
                self.source = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.source = None;
                Poll::Ready(None)
            }
        }
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("ended", &self.source.is_none())
            .finish()
    }
}

fn decode_item<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(body).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!(
                "stream item does not match the expected type {}: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

thread_local! {
    /// The input stream of the streaming call being started on this thread: set by the server
    /// around `Service::call`, taken by the generated dispatch code (`__private::input`).
    static INPUT: std::cell::RefCell<Option<Box<dyn RawSource>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a service's `call`) with `input` as the call's input stream.
pub(crate) fn with_input<R>(input: Option<Box<dyn RawSource>>, f: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            INPUT.with(|i| i.borrow_mut().take());
        }
    }
    INPUT.with(|i| *i.borrow_mut() = input);
    let _clear = Clear;
    f()
}

/// The input stream of the call being started (what generated dispatch code calls for a
/// method's `Streaming` argument).
pub(crate) fn take_input<T>() -> Result<Streaming<T>, Error> {
    match INPUT.with(|i| i.borrow_mut().take()) {
        Some(source) => Ok(Streaming::from_source(source)),
        None => Err(Error::new(
            ErrorKind::Protocol,
            "this method takes a stream of items, but the request did not open a streaming \
             call (flag STREAM, feature `call.stream`)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    struct Items(Vec<Result<Bytes, Error>>);

    impl RawSource for Items {
        fn poll_raw(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
            Poll::Ready(if self.0.is_empty() {
                None
            } else {
                Some(self.0.remove(0))
            })
        }
    }

    fn encoded<T: serde::Serialize>(v: T) -> Bytes {
        Bytes::from(rmp_serde::to_vec(&v).unwrap())
    }

    #[tokio::test]
    async fn streaming_decodes_items_and_stops_after_an_error() {
        let source = Items(vec![
            Ok(encoded(1u32)),
            Ok(encoded("not a number")),
            Ok(encoded(3u32)),
        ]);
        let mut s = Streaming::<u32>::from_source(Box::new(source));
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert!(s.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test]
    async fn channel_streams_end_with_their_senders_and_tell_senders_when_unread() {
        let (tx, stream) = Stream::channel(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        drop(tx);
        assert_eq!(stream.collect::<Vec<u8>>().await, vec![1, 2]);

        let (tx, stream) = Stream::<u8>::channel(2);
        drop(stream);
        assert!(tx.is_closed());
        assert_eq!(tx.send(1).await.unwrap_err().kind(), ErrorKind::Cancelled);
    }

    #[test]
    fn input_is_taken_once_inside_with_input() {
        let got = with_input(Some(Box::new(Items(Vec::new()))), || {
            (take_input::<u8>().is_ok(), take_input::<u8>().is_err())
        });
        assert_eq!(got, (true, true));
        assert!(take_input::<u8>().is_err(), "cleared afterwards");
    }
}
