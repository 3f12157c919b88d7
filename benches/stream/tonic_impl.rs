//! The service on gRPC: tonic 0.14 server streaming over HTTP/2 (hyper, h2) on plain TCP, with
//! TCP_NODELAY on both ends and tonic's default settings otherwise (HTTP/2 windows: 1 MiB per
//! stream on the server, 2 MiB on the client, as hyper sets them).
//!
//! Written by hand instead of generated from a .proto (no protoc, no build script), in the
//! shape tonic-build generates: a tower `Service` routing on the request path to
//! `tonic::server::Grpc::server_streaming`, and `tonic::client::Grpc::server_streaming` on the
//! client. Messages go through a MessagePack codec (rmp-serde, as Stardust and the raw baseline
//! encode items) instead of protobuf, so only the transports differ.

use std::any::Any;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::service::{self, Chunk};

const ITEMS: &str = "/bench.Streams/Items";
const CHUNKS: &str = "/bench.Streams/Chunks";

/// The request of both methods: `n` items (of `size` bytes, for chunks).
#[derive(serde::Serialize, serde::Deserialize)]
struct Args {
    n: u64,
    size: u32,
}

// ------------------------------------------------------------------------------------- codec

/// Encodes `E` and decodes `D` as MessagePack.
struct MsgPack<E, D>(PhantomData<fn(E) -> D>);

impl<E, D> Default for MsgPack<E, D> {
    fn default() -> Self {
        MsgPack(PhantomData)
    }
}

impl<E, D> Codec for MsgPack<E, D>
where
    E: Serialize + Send + 'static,
    D: DeserializeOwned + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = MsgPackEncoder<E>;
    type Decoder = MsgPackDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        MsgPackEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        MsgPackDecoder(PhantomData)
    }
}

struct MsgPackEncoder<E>(PhantomData<fn(E)>);

impl<E: Serialize> Encoder for MsgPackEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        rmp_serde::encode::write(&mut dst.writer(), &item)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

struct MsgPackDecoder<D>(PhantomData<fn() -> D>);

impl<D: DeserializeOwned> Decoder for MsgPackDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        // The buffer holds exactly one message, not necessarily contiguous.
        let body = src.copy_to_bytes(src.remaining());
        rmp_serde::from_slice(&body)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

// ------------------------------------------------------------------------------------ server

type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `Items`: the numbers `0..n`.
struct ItemsMethod;

impl tonic::server::ServerStreamingService<Args> for ItemsMethod {
    type Response = u64;
    type ResponseStream = ItemStream<u64>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Args>) -> Self::Future {
        let n = request.into_inner().n;
        let items: ItemStream<u64> = Box::pin(futures::stream::iter((0..n).map(Ok)));
        Box::pin(async move { Ok(Response::new(items)) })
    }
}

/// `Chunks`: `n` chunks of `size` bytes.
struct ChunksMethod;

impl tonic::server::ServerStreamingService<Args> for ChunksMethod {
    type Response = ByteBuf;
    type ResponseStream = ItemStream<ByteBuf>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Args>) -> Self::Future {
        let Args { n, size } = request.into_inner();
        let chunk = Chunk::new(size as usize);
        let items: ItemStream<ByteBuf> = Box::pin(futures::stream::iter(
            (0..n).map(move |seq| Ok(chunk.make(seq))),
        ));
        Box::pin(async move { Ok(Response::new(items)) })
    }
}

/// The service: routes a request to its method by path, as generated servers do.
#[derive(Clone)]
struct StreamsService;

impl Service<http::Request<tonic::body::Body>> for StreamsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        match request.uri().path() {
            ITEMS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(MsgPack::<u64, Args>::default());
                Ok(grpc.server_streaming(ItemsMethod, request).await)
            }),
            CHUNKS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(MsgPack::<ByteBuf, Args>::default());
                Ok(grpc.server_streaming(ChunksMethod, request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Starts the provider on an OS-chosen loopback port.
pub async fn serve() -> Result<(u16, Box<dyn Any>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .serve_with_incoming(StreamsService, incoming)
            .await
        {
            eprintln!("tonic server: {e}");
        }
    });
    Ok((port, Box::new(())))
}

// ------------------------------------------------------------------------------------ client

/// One channel, hence one HTTP/2 connection.
pub struct Client(tonic::client::Grpc<Channel>);

pub async fn connect(addr: SocketAddr) -> Result<Client, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(Client(tonic::client::Grpc::new(channel)))
}

impl Client {
    async fn open<T>(&mut self, path: &'static str, args: Args) -> Result<Items<T>, String>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.0.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .0
            .server_streaming(
                Request::new(args),
                PathAndQuery::from_static(path),
                MsgPack::<Args, T>::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Items(response.into_inner()))
    }
}

pub struct Items<T>(tonic::Streaming<T>);

impl<T: Send + 'static> service::Source<T> for Items<T> {
    async fn next_item(&mut self) -> Option<Result<T, String>> {
        self.0
            .message()
            .await
            .map_err(|e| e.to_string())
            .transpose()
    }
}

impl service::Client for Client {
    type Items<'a> = Items<u64>;
    type Chunks<'a> = Items<ByteBuf>;

    async fn items(&mut self, n: u64) -> Result<Items<u64>, String> {
        self.open(ITEMS, Args { n, size: 0 }).await
    }

    async fn chunks(&mut self, n: u64, size: u32) -> Result<Items<ByteBuf>, String> {
        self.open(CHUNKS, Args { n, size }).await
    }
}
