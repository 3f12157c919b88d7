//! "raw": the multiplexed client and server a competent person writes by hand in an afternoon.
//!
//! DESIGN FROZEN. This is the baseline Stardust is measured against, so it must not get faster
//! as Stardust does: do not tune it, batch smarter, pool buffers or change its data structures.
//! Fix only bugs (a wrong reply, a hang). Its naivety is the point:
//! - client: a request id from an atomic counter; a `std::sync::Mutex<HashMap<id, oneshot>>` of
//!   waiting callers; every request is a freshly allocated frame sent through an unbounded mpsc
//!   channel to one writer task, which writes into a `BufWriter` and flushes when the channel is
//!   empty; one reader task reads frames into fresh `Vec`s and completes the oneshots;
//! - server: one task per connection that reads a frame, handles it inline (decode, compute,
//!   encode), writes the response into a `BufWriter`, and flushes whenever its `BufReader` holds
//!   no further bytes (i.e. before it would block on the socket).
//!
//! Wire format (shared with the ceiling): request `[u32 len][u64 id][u8 method][msgpack args]`,
//! response `[u32 len][u64 id][u8 status][msgpack result or error string]`, big-endian, `len`
//! counting everything after itself. Arguments are a MessagePack array like Stardust's, encoded
//! with the same rmp-serde, so payloads are `bin`.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::service;

pub const METHOD_ADD: u8 = 0;
pub const METHOD_ECHO: u8 = 1;
pub const STATUS_OK: u8 = 0;
pub const STATUS_ERR: u8 = 1;
/// Bytes after the length field before the body: id (8) + method or status (1).
pub const HEAD: usize = 9;
const MAX_FRAME: usize = 16 * 1024 * 1024;
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
                if let Err(e) = serve_conn(stream).await {
                    eprintln!("raw server: connection failed: {e}");
                }
            });
        }
    });
    Ok((port, Box::new(())))
}

async fn serve_conn(stream: TcpStream) -> io::Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(BUF, rd);
    let mut wr = BufWriter::with_capacity(BUF, wr);
    let mut frame = Vec::new();
    let mut result = Vec::new();
    loop {
        let len = match rd.read_u32().await {
            Ok(len) => len as usize,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if !(HEAD..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad frame length",
            ));
        }
        frame.resize(len, 0);
        rd.read_exact(&mut frame).await?;
        let id = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
        result.clear();
        let status = match handle(frame[8], &frame[HEAD..], &mut result) {
            Ok(()) => STATUS_OK,
            Err(msg) => {
                result.clear();
                rmp_serde::encode::write(&mut result, &msg).expect("vec write");
                STATUS_ERR
            }
        };
        wr.write_u32((HEAD + result.len()) as u32).await?;
        wr.write_u64(id).await?;
        wr.write_u8(status).await?;
        wr.write_all(&result).await?;
        if rd.buffer().is_empty() {
            wr.flush().await?;
        }
    }
}

fn handle(method: u8, args: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    match method {
        METHOD_ADD => {
            let (a, b): (i64, i64) = rmp_serde::from_slice(args).map_err(|e| e.to_string())?;
            rmp_serde::encode::write(out, &(a + b)).map_err(|e| e.to_string())
        }
        METHOD_ECHO => {
            let (data,): (ByteBuf,) = rmp_serde::from_slice(args).map_err(|e| e.to_string())?;
            rmp_serde::encode::write(out, &data).map_err(|e| e.to_string())
        }
        other => Err(format!("unknown method {other}")),
    }
}

// ------------------------------------------------------------------------------------ client

type Reply = Result<Vec<u8>, String>;

#[derive(Default)]
struct Waiting {
    callers: HashMap<u64, oneshot::Sender<Reply>>,
    /// The connection is gone: fail new calls instead of parking them forever.
    closed: bool,
}

struct Inner {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
}

#[derive(Clone)]
pub struct Caller(Arc<Inner>);

/// One client, one connection, with its writer and reader tasks.
pub async fn connect(addr: SocketAddr) -> Result<Caller, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (rd, wr) = stream.into_split();
    let (frames, rx) = mpsc::unbounded_channel();
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    tokio::spawn(write_loop(rx, wr));
    tokio::spawn(read_loop(rd, waiting.clone()));
    Ok(Caller(Arc::new(Inner {
        frames,
        waiting,
        next_id: AtomicU64::new(1),
    })))
}

async fn write_loop(mut rx: mpsc::UnboundedReceiver<Vec<u8>>, wr: OwnedWriteHalf) {
    let mut wr = BufWriter::with_capacity(BUF, wr);
    // Ends when every Caller is dropped (the channel closes) or the socket fails.
    while let Some(frame) = rx.recv().await {
        if wr.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
}

async fn read_loop(rd: OwnedReadHalf, waiting: Arc<Mutex<Waiting>>) {
    let mut rd = BufReader::with_capacity(BUF, rd);
    loop {
        let frame = match read_frame(&mut rd).await {
            Ok(frame) => frame,
            Err(_) => break,
        };
        let id = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
        let reply = if frame[8] == STATUS_OK {
            Ok(frame)
        } else {
            Err(rmp_serde::from_slice::<String>(&frame[HEAD..])
                .unwrap_or_else(|e| format!("undecodable error: {e}")))
        };
        let caller = waiting.lock().unwrap().callers.remove(&id);
        if let Some(caller) = caller {
            let _ = caller.send(reply);
        }
    }
    // Dropping the senders fails every waiting call.
    let mut w = waiting.lock().unwrap();
    w.closed = true;
    w.callers.clear();
}

async fn read_frame(rd: &mut BufReader<OwnedReadHalf>) -> io::Result<Vec<u8>> {
    let len = rd.read_u32().await? as usize;
    if !(HEAD..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    let mut frame = vec![0; len];
    rd.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Encodes a request frame (shared with the ceiling so both send byte-identical requests).
pub fn encode_request(out: &mut Vec<u8>, id: u64, method: u8, args: &impl Serialize) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_be_bytes());
    out.push(method);
    rmp_serde::encode::write(out, args).expect("vec write");
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

impl Caller {
    async fn call<R: DeserializeOwned>(
        &self,
        method: u8,
        args: &impl Serialize,
    ) -> Result<R, String> {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_request(&mut frame, id, method, args);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.0.waiting.lock().unwrap();
            if w.closed {
                return Err("connection closed".to_owned());
            }
            w.callers.insert(id, tx);
        }
        self.0
            .frames
            .send(frame)
            .map_err(|_| "connection closed".to_owned())?;
        let frame = rx.await.map_err(|_| "connection closed".to_owned())??;
        rmp_serde::from_slice(&frame[HEAD..]).map_err(|e| e.to_string())
    }
}

impl service::Caller for Caller {
    type Data = ByteBuf;
    type Scratch = ();

    /// A fresh buffer per call: the proxy takes the `Vec` by value.
    fn data(payload: &service::Payload, seq: u64, _: &mut ()) -> ByteBuf {
        payload.for_call(seq)
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        self.call(METHOD_ADD, &(a, b)).await
    }

    // Names its own echo type; the driver sees only `AsRef<[u8]>`.

    #[allow(refining_impl_trait)]
    async fn echo(&self, data: ByteBuf) -> Result<ByteBuf, String> {
        self.call(METHOD_ECHO, &(data,)).await
    }
}
