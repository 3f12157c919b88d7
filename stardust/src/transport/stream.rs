//! The byte stream under a connection: plain TCP, or TLS over TCP.
//!
//! Both halves are enums rather than trait objects so the plaintext path stays what it was: a
//! non-blocking `try_write` straight on the socket, no lock, no vtable. A TLS stream's halves
//! share one rustls session (encrypting and decrypting both touch it), so its write half sits
//! behind a lock; only the flusher of the moment takes it, so it is never contended.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
// The TLS variants exist with the `tls` feature only (no rustls without it).
#[cfg(feature = "tls")]
use {parking_lot::Mutex, std::future::poll_fn, std::task::Waker, tokio::io::AsyncWrite};

#[cfg(feature = "tls")]
type Tls = tokio_rustls::TlsStream<TcpStream>;

/// An established connection's stream, before it is split.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<Tls>),
}

impl Stream {
    /// Splits the stream into a read half (owned by the read loop) and a write half (shared by
    /// whoever flushes).
    pub(crate) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (rd, wr) = s.into_split();
                (ReadHalf::Tcp(rd), WriteHalf::Tcp(wr))
            }
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                let (rd, wr) = tokio::io::split(*s);
                (ReadHalf::Tls(rd), WriteHalf::Tls(Mutex::new(wr)))
            }
        }
    }
}

/// The read side of a [`Stream`].
pub(crate) enum ReadHalf {
    Tcp(OwnedReadHalf),
    #[cfg(feature = "tls")]
    Tls(tokio::io::ReadHalf<Tls>),
    /// Bytes from memory, for the fuzz targets (`crate::__fuzz`) and the reader's tests: the
    /// frame reader is driven without a socket.
    #[cfg(any(test, feature = "fuzzing"))]
    Mem(Box<dyn AsyncRead + Send + Sync + Unpin>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(rd) => Pin::new(rd).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            ReadHalf::Tls(rd) => Pin::new(rd).poll_read(cx, buf),
            #[cfg(any(test, feature = "fuzzing"))]
            ReadHalf::Mem(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

/// The write side of a [`Stream`], usable through `&self` by whoever owns the right to flush.
pub(crate) enum WriteHalf {
    Tcp(OwnedWriteHalf),
    #[cfg(feature = "tls")]
    Tls(Mutex<tokio::io::WriteHalf<Tls>>),
}

impl WriteHalf {
    /// Writes what the stream takes right now without waiting (`WouldBlock` if nothing).
    ///
    /// For TLS, bytes taken are in the session's buffer, not necessarily on the wire yet:
    /// [`WriteHalf::try_flush`] pushes them out.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(wr) => wr.try_write(buf),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(wr) => {
                // A waker that does nothing: if the socket is full, whoever takes over (the
                // writer task) polls again with a real one.
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *wr.lock()).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// [`try_write`](Self::try_write) of several buffers in one syscall (TLS: the first only;
    /// its session copies what it encrypts anyway).
    pub(crate) fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(wr) => wr.try_write_vectored(bufs),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(_) => self.try_write(bufs.first().map_or(&[], |b| &b[..])),
        }
    }

    /// [`write_some`](Self::write_some) of several buffers in one syscall (TLS: the first).
    pub(crate) async fn write_some_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(wr) => when_writable(wr, || wr.try_write_vectored(bufs)).await,
            #[cfg(feature = "tls")]
            WriteHalf::Tls(_) => self.write_some(bufs.first().map_or(&[], |b| &b[..])).await,
        }
    }

    /// Pushes bytes buffered inside the TLS session to the socket without waiting. `Ok(true)`
    /// once nothing is left (always, for plain TCP).
    pub(crate) fn try_flush(&self) -> io::Result<bool> {
        match self {
            WriteHalf::Tcp(_) => Ok(true),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(wr) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut *wr.lock()).poll_flush(&mut cx) {
                    Poll::Ready(r) => r.map(|()| true),
                    Poll::Pending => Ok(false),
                }
            }
        }
    }

    /// Writes some of `buf`, waiting until the stream takes at least one byte.
    pub(crate) async fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(wr) => when_writable(wr, || wr.try_write(buf)).await,
            #[cfg(feature = "tls")]
            WriteHalf::Tls(wr) => poll_fn(|cx| Pin::new(&mut *wr.lock()).poll_write(cx, buf)).await,
        }
    }

    /// Waits until bytes buffered inside the TLS session are on the socket (nothing to do for
    /// plain TCP).
    pub(crate) async fn flush(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(_) => Ok(()),
            #[cfg(feature = "tls")]
            WriteHalf::Tls(wr) => poll_fn(|cx| Pin::new(&mut *wr.lock()).poll_flush(cx)).await,
        }
    }

    /// Writes all of `buf` and flushes it to the socket, waiting for room as needed.
    pub(crate) async fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < buf.len() {
            match self.write_some(&buf[written..]).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n,
            }
        }
        self.flush().await
    }

    /// Ends the write direction: a TLS `close_notify`, then FIN. The read half stays open.
    pub(crate) async fn shutdown(&self) {
        match self {
            WriteHalf::Tcp(wr) => {
                let _ = socket2::SockRef::from(wr.as_ref()).shutdown(std::net::Shutdown::Write);
            }
            #[cfg(feature = "tls")]
            WriteHalf::Tls(wr) => {
                let _ = poll_fn(|cx| Pin::new(&mut *wr.lock()).poll_shutdown(cx)).await;
            }
        }
    }
}

/// Runs the non-blocking `write` until the socket takes something, waiting for it to become
/// writable whenever it takes nothing.
async fn when_writable(
    wr: &OwnedWriteHalf,
    mut write: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        match write() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wr.writable().await?,
            other => return other,
        }
    }
}
