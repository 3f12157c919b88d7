//! "raw": the streaming a competent person writes by hand in an afternoon, one stream at a time
//! on a plain TCP connection, with no flow control of its own (TCP's is the only one).
//!
//! DESIGN FROZEN. This is the baseline Stardust is measured against, so it must not get faster
//! as Stardust does: do not tune it, batch smarter, pool buffers or change its data structures.
//! Fix only bugs (a wrong item, a hang). Its naivety is the point:
//! - server: one task per connection; it reads a request, then for each item encodes it into a
//!   freshly allocated `Vec` with rmp-serde and writes its length and bytes into a 64 KiB
//!   `BufWriter` (which writes a large item straight through), and flushes after the end marker;
//! - client: reads frames through a 64 KiB `BufReader` into a fresh `Vec` per item and decodes
//!   it with rmp-serde, in the consumer's own task (no reader task, no channel).
//!
//! Wire format, big-endian: request `[u8 method][u64 n][u32 size]`; then one frame per item,
//! `[u32 len][msgpack item]`, and `[u32 END]` after the last one. Items are encoded with the
//! same rmp-serde as Stardust's, so chunks are MessagePack `bin`.

use std::any::Any;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::service::{self, Chunk};

const METHOD_ITEMS: u8 = 0;
const METHOD_CHUNKS: u8 = 1;
/// The length field that ends a stream.
const END: u32 = u32::MAX;
const MAX_ITEM: usize = 16 * 1024 * 1024;
const BUF: usize = 64 * 1024;

// ------------------------------------------------------------------------------------ server

/// Starts the provider on an OS-chosen loopback port.
pub async fn serve() -> Result<(u16, Box<dyn Any>), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // A consumer that hangs up mid-stream (the slow reader) ends it with an error.
                let _ = serve_conn(stream).await;
            });
        }
    });
    Ok((port, Box::new(())))
}

async fn serve_conn(stream: TcpStream) -> io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(BUF, rd);
    let mut wr = BufWriter::with_capacity(BUF, wr);
    loop {
        let method = match rd.read_u8().await {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let n = rd.read_u64().await?;
        let size = rd.read_u32().await?;
        match method {
            METHOD_ITEMS => {
                for seq in 0..n {
                    write_item(&mut wr, &seq).await?;
                }
            }
            METHOD_CHUNKS => {
                let chunk = Chunk::new(size as usize);
                for seq in 0..n {
                    write_item(&mut wr, &chunk.make(seq)).await?;
                }
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown method {other}"),
                ));
            }
        }
        wr.write_u32(END).await?;
        wr.flush().await?;
    }
}

async fn write_item<T: Serialize>(wr: &mut BufWriter<OwnedWriteHalf>, item: &T) -> io::Result<()> {
    let body = rmp_serde::to_vec(item).map_err(io::Error::other)?;
    wr.write_u32(body.len() as u32).await?;
    wr.write_all(&body).await
}

// ------------------------------------------------------------------------------------ client

pub struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

/// One connection.
pub async fn connect(addr: SocketAddr) -> Result<Client, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (rd, wr) = stream.into_split();
    Ok(Client {
        rd: BufReader::with_capacity(BUF, rd),
        wr,
    })
}

impl Client {
    async fn open(&mut self, method: u8, n: u64, size: u32) -> Result<(), String> {
        let mut request = Vec::with_capacity(13);
        request.push(method);
        request.extend_from_slice(&n.to_be_bytes());
        request.extend_from_slice(&size.to_be_bytes());
        self.wr.write_all(&request).await.map_err(|e| e.to_string())
    }
}

/// The items of the stream being read; the connection is reusable once it has ended.
pub struct Items<'a, T> {
    rd: &'a mut BufReader<OwnedReadHalf>,
    ended: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> Items<'_, T> {
    async fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        let len = self.rd.read_u32().await?;
        if len == END {
            return Ok(None);
        }
        if len as usize > MAX_ITEM {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "item too large"));
        }
        let mut body = vec![0; len as usize];
        self.rd.read_exact(&mut body).await?;
        Ok(Some(body))
    }
}

impl<T: DeserializeOwned> service::Source<T> for Items<'_, T> {
    async fn next_item(&mut self) -> Option<Result<T, String>> {
        if self.ended {
            return None;
        }
        match self.next_frame().await {
            Ok(Some(body)) => Some(rmp_serde::from_slice(&body).map_err(|e| e.to_string())),
            Ok(None) => {
                self.ended = true;
                None
            }
            Err(e) => {
                self.ended = true;
                Some(Err(e.to_string()))
            }
        }
    }
}

impl service::Client for Client {
    type Items<'a> = Items<'a, u64>;
    type Chunks<'a> = Items<'a, ByteBuf>;

    async fn items(&mut self, n: u64) -> Result<Items<'_, u64>, String> {
        self.open(METHOD_ITEMS, n, 0).await?;
        Ok(Items {
            rd: &mut self.rd,
            ended: false,
            _item: PhantomData,
        })
    }

    async fn chunks(&mut self, n: u64, size: u32) -> Result<Items<'_, ByteBuf>, String> {
        self.open(METHOD_CHUNKS, n, size).await?;
        Ok(Items {
            rd: &mut self.rd,
            ended: false,
            _item: PhantomData,
        })
    }
}
