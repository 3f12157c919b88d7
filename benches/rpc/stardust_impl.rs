//! The service on Stardust, used the way the README shows: a trait with `#[stardust::service]`,
//! a `Server` hosting `BenchServer::new(..)`, and the generated `BenchClient` over a `Client`
//! built with default settings (so calls carry the default 30 s deadline, as users' calls do).

use std::any::Any;
use std::net::SocketAddr;

use serde_bytes::ByteBuf;

use crate::service;

#[stardust::service(name = "bench.Bench", version = "1.0.0")]
pub trait Bench {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn echo(&self, data: ByteBuf) -> ByteBuf;
}

struct Provider;

impl Bench for Provider {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// Starts the provider on an OS-chosen loopback port; the returned guard keeps it running.
pub async fn serve() -> Result<(u16, Box<dyn Any>), String> {
    let server = stardust::Server::builder()
        .serve(BenchServer::new(Provider))
        .allow_anonymous()
        .bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    Ok((server.local_addr().port(), Box::new(server)))
}

#[derive(Clone)]
pub struct Caller(BenchClient);

/// One client, hence one connection.
pub async fn connect(addr: SocketAddr) -> Result<Caller, String> {
    let client = stardust::Client::builder()
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Caller(BenchClient::new(client)))
}

impl service::Caller for Caller {
    async fn add(&self, a: i64, b: i64) -> Result<i64, String> {
        self.0.add(a, b).await.map_err(|e| e.to_string())
    }

    async fn echo(&self, data: ByteBuf) -> Result<ByteBuf, String> {
        self.0.echo(data).await.map_err(|e| e.to_string())
    }
}
