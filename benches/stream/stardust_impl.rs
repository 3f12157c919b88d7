//! The service on Stardust, used the way the README shows: a trait with `#[stardust::service]`
//! whose methods return `stardust::Stream<T>`, a `Server` hosting `StreamsServer::new(..)`, and
//! the generated `StreamsClient`, whose methods return `stardust::Streaming<T>`. Default
//! settings on both ends (a 256 KiB stream window), except the client's deadline: the phase's
//! own bound instead of 30 s, so a slow debug build does not cut the 1 GiB stream short.

use std::any::Any;
use std::net::SocketAddr;
use std::time::Duration;

use serde_bytes::ByteBuf;
use stardust::{Stream, Streaming};

use crate::service::{self, Chunk};

#[stardust::service(name = "bench.Streams", version = "1.0.0")]
pub trait Streams {
    async fn items(&self, n: u64) -> Stream<u64>;
    async fn chunks(&self, n: u64, size: u32) -> Stream<ByteBuf>;
}

struct Provider;

impl Streams for Provider {
    async fn items(&self, n: u64) -> Stream<u64> {
        Stream::iter(0..n)
    }

    async fn chunks(&self, n: u64, size: u32) -> Stream<ByteBuf> {
        let chunk = Chunk::new(size as usize);
        Stream::iter((0..n).map(move |seq| chunk.make(seq)))
    }
}

/// Starts the provider on an OS-chosen loopback port; the returned guard keeps it running.
pub async fn serve() -> Result<(u16, Box<dyn Any>), String> {
    let server = stardust::Server::builder()
        .serve(StreamsServer::new(Provider))
        .allow_anonymous()
        .bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    Ok((server.local_addr().port(), Box::new(server)))
}

/// One client, hence one connection.
pub async fn connect(addr: SocketAddr, deadline: Duration) -> Result<Client, String> {
    let client = stardust::Client::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Client(StreamsClient::new(client.with_timeout(deadline))))
}

pub struct Client(StreamsClient);

pub struct Items<T>(Streaming<T>);

impl<T: serde::de::DeserializeOwned + Send> service::Source<T> for Items<T> {
    async fn next_item(&mut self) -> Option<Result<T, String>> {
        Some(self.0.next().await?.map_err(|e| e.to_string()))
    }
}

impl service::Client for Client {
    type Items<'a> = Items<u64>;
    type Chunks<'a> = Items<ByteBuf>;

    async fn items(&mut self, n: u64) -> Result<Items<u64>, String> {
        self.0.items(n).await.map(Items).map_err(|e| e.to_string())
    }

    async fn chunks(&mut self, n: u64, size: u32) -> Result<Items<ByteBuf>, String> {
        self.0
            .chunks(n, size)
            .await
            .map(Items)
            .map_err(|e| e.to_string())
    }
}
