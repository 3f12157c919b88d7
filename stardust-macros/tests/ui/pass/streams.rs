//! Streaming methods: a `Stream` return, a `Streaming` last argument, and both, with the paths a
//! user may write them with and items that carry the user's error type.

use serde::{Deserialize, Serialize};
use stardust::{MethodDescriptor, Service, Stream, Streaming};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub text: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum TailError {
    NoSuchFile,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Chunk(pub Vec<u8>);

/// A type of the user's own named `Stream`, written with a path the macro does not take for a
/// stream: it travels as a plain value.
pub mod other {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct Stream<T>(pub Vec<T>);
}

#[stardust::service(name = "test.Logs")]
pub trait Logs {
    /// The handler streams; items carry the user's error type.
    async fn tail(&self, file: String) -> stardust::Stream<Result<Line, TailError>>;

    /// The consumer streams, and the method returns one value.
    #[stardust(idempotent)]
    async fn upload(
        &self,
        name: String,
        chunks: ::stardust::Streaming<Chunk>,
    ) -> Result<u64, TailError>;

    /// Both stream; the input stream is the only argument.
    async fn chat(&self, input: Streaming<Line>) -> Stream<Result<Line, TailError>>;

    /// Both, with bare names and a value argument first.
    async fn echo(&self, room: String, input: Streaming<u32>) -> ::stardust::Stream<u32>;

    /// Not a stream: a plain value of a type that happens to be called `Stream`.
    async fn batch(&self, size: u32) -> other::Stream<u32>;

    /// A unary method next to the streaming ones.
    async fn count(&self) -> u64;
}

struct MyLogs;

impl Logs for MyLogs {
    async fn tail(&self, file: String) -> stardust::Stream<Result<Line, TailError>> {
        if file.is_empty() {
            return Stream::iter([Err(TailError::NoSuchFile)]);
        }
        Stream::from(vec![Ok(Line { text: file })])
    }

    async fn upload(
        &self,
        _name: String,
        mut chunks: ::stardust::Streaming<Chunk>,
    ) -> Result<u64, TailError> {
        let mut total = 0;
        while let Some(Ok(chunk)) = chunks.next().await {
            total += chunk.0.len() as u64;
        }
        Ok(total)
    }

    async fn chat(&self, mut input: Streaming<Line>) -> Stream<Result<Line, TailError>> {
        let (sender, output) = Stream::channel(4);
        // A real handler would spawn this; here it only has to type-check.
        let _forward = async move {
            while let Some(Ok(line)) = input.next().await {
                if sender.send(Ok(line)).await.is_err() {
                    break;
                }
            }
        };
        output
    }

    async fn echo(&self, _room: String, _input: Streaming<u32>) -> ::stardust::Stream<u32> {
        Stream::empty()
    }

    async fn batch(&self, size: u32) -> other::Stream<u32> {
        other::Stream((0..size).collect())
    }

    async fn count(&self) -> u64 {
        0
    }
}

fn assert_send<F: Send>(future: F) -> F {
    future
}

/// The client mirrors the handler: it sends an input stream as `stardust::Stream<Item>` and
/// receives an output stream as `stardust::Streaming<Item>`, after the call has opened; its
/// futures are `Send`.
#[allow(dead_code)]
async fn use_client(client: LogsClient) -> Result<(), stardust::Error> {
    let tail: Result<stardust::Streaming<Result<Line, TailError>>, stardust::Error> =
        assert_send(client.tail("app.log".to_owned())).await;
    let mut lines = tail?;
    let _: Option<Result<Result<Line, TailError>, stardust::Error>> = lines.next().await;

    let chunks: stardust::Stream<Chunk> = Stream::iter(vec![Chunk(vec![1, 2, 3])]);
    let uploaded: Result<Result<u64, TailError>, stardust::Error> =
        assert_send(client.upload("file".to_owned(), chunks)).await;
    let _ = uploaded?;

    let (sender, input) = Stream::<Line>::channel(8);
    let replies: Result<stardust::Streaming<Result<Line, TailError>>, stardust::Error> =
        assert_send(client.chat(input)).await;
    sender
        .send(Line {
            text: "hi".to_owned(),
        })
        .await?;
    let _ = replies?;

    let echoed: Result<stardust::Streaming<u32>, stardust::Error> = client
        .echo("room".to_owned(), Stream::from(vec![1u32, 2]))
        .await;
    let _ = echoed?;

    let batch: Result<other::Stream<u32>, stardust::Error> = client.batch(3).await;
    let _ = batch?;
    let _: u64 = client.count().await?;
    Ok(())
}

/// The handler's side, through the rewritten trait: what a method takes and returns.
#[allow(dead_code)]
async fn use_handler(logs: &MyLogs, input: Streaming<Line>) {
    let _: stardust::Stream<Result<Line, TailError>> = logs.tail(String::new()).await;
    let _: stardust::Stream<Result<Line, TailError>> = Logs::chat(logs, input).await;
}

fn main() {
    let server = LogsServer::new(MyLogs);
    let descriptor = server.descriptor();
    assert_eq!(descriptor, LogsClient::DESCRIPTOR);
    assert_eq!(descriptor.name, "test.Logs");
    let method = |name, idempotent, input_stream, output_stream| {
        (name, idempotent, input_stream, output_stream)
    };
    let flags: Vec<_> = descriptor
        .methods
        .iter()
        .map(|m: &MethodDescriptor| (m.name, m.idempotent, m.input_stream, m.output_stream))
        .collect();
    assert_eq!(
        flags,
        [
            method("tail", false, false, true),
            method("upload", true, true, false),
            method("chat", false, true, true),
            method("echo", false, true, true),
            method("batch", false, false, false),
            method("count", false, false, false),
        ]
    );
}
