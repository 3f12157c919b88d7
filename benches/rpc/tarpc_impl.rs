//! The service on tarpc 0.38: its serde transport (tokio-util length-delimited frames) with the
//! bincode codec, over TCP with TCP_NODELAY on both ends.
//!
//! The server follows tarpc's own recommendation: every connection is a `BaseChannel`, and
//! `execute(..).for_each(spawn)` runs each request as a task of its own. The transport is built
//! by hand from an accepted/connected `TcpStream` rather than with `serde_transport::tcp::*`,
//! only because those helpers do not expose the socket to set TCP_NODELAY (Stardust and the raw
//! implementation set it; Nagle's delay would otherwise dominate tarpc's latency).

use std::any::Any;
use std::net::SocketAddr;

use futures::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tarpc::{client, context, serde_transport};
use tokio::net::{TcpListener, TcpStream};

use crate::service;

#[tarpc::service]
pub trait TarpcBench {
    async fn add(a: i64, b: i64) -> i64;
    async fn echo(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct Provider;

impl TarpcBench for Provider {
    async fn add(self, _: context::Context, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(self, _: context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// Length-delimited framing with room for the 64 KiB payloads (the default limit is 8 MiB; set
/// explicitly to match Stardust's 16 MiB).
fn framed(stream: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    LengthDelimitedCodec::builder()
        .max_frame_length(16 * 1024 * 1024)
        .new_framed(stream)
}

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
            let transport = serde_transport::new(framed(stream), Bincode::default());
            let requests = BaseChannel::with_defaults(transport).execute(Provider.serve());
            tokio::spawn(requests.for_each(|request| async move {
                tokio::spawn(request);
            }));
        }
    });
    Ok((port, Box::new(())))
}

#[derive(Clone)]
pub struct Caller(TarpcBenchClient);

/// One client (its dispatch task owns one connection).
pub async fn connect(addr: SocketAddr) -> Result<Caller, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let transport = serde_transport::new(framed(stream), Bincode::default());
    Ok(Caller(
        TarpcBenchClient::new(client::Config::default(), transport).spawn(),
    ))
}

impl service::Caller for Caller {
    type Data = ByteBuf;
    type Scratch = ();

    /// A fresh buffer per call: the proxy takes the `Vec` by value.
    fn data(payload: &service::Payload, seq: u64, _: &mut ()) -> ByteBuf {
        payload.for_call(seq)
    }

    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        self.0
            .add(context::current(), a, b)
            .await
            .map_err(|e| e.to_string())
    }

    // Names its own echo type; the driver sees only `AsRef<[u8]>`.

    #[allow(refining_impl_trait)]
    async fn echo(&self, data: ByteBuf) -> Result<ByteBuf, String> {
        self.0
            .echo(context::current(), data)
            .await
            .map_err(|e| e.to_string())
    }
}
