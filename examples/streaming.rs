//! Streaming calls, all three shapes, provider and consumer in one process on localhost:
//!
//! ```text
//! cargo run --example streaming
//! ```
//!
//! - `tail` streams lines from the provider (server streaming);
//! - `upload` streams chunks to the provider and gets a total back (client streaming);
//! - `chat` streams both ways at once.
//!
//! The provider accepts anonymous callers to keep the example short; with a registry, the same
//! methods are called through `Stardust::client` exactly as unary ones are.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stardust::{Server, Stream, Streaming};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub number: u64,
    pub text: String,
}

#[stardust::service]
pub trait Logs {
    /// The last `count` lines of `file`, one item each.
    async fn tail(&self, file: String, count: u64) -> Stream<Line>;
    /// Stores the chunks; returns how many bytes arrived.
    async fn upload(&self, name: String, chunks: Streaming<Vec<u8>>) -> u64;
    /// Echoes every message to the room, until the consumer stops sending.
    async fn chat(&self, room: String, input: Streaming<String>) -> Stream<String>;
}

struct LogsImpl;

impl Logs for LogsImpl {
    async fn tail(&self, file: String, count: u64) -> Stream<Line> {
        // Any `futures::Stream` will do; the provider sends items as the consumer's credit
        // allows, so a slow consumer never makes this side buffer more than its window.
        Stream::iter((1..=count).map(move |number| Line {
            number,
            text: format!("{file}: line {number}"),
        }))
    }

    async fn upload(&self, name: String, mut chunks: Streaming<Vec<u8>>) -> u64 {
        let mut total = 0;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(bytes) => total += bytes.len() as u64,
                // The consumer went away or the deadline passed: stop here.
                Err(e) => {
                    eprintln!("upload of {name} ended early: {e}");
                    break;
                }
            }
        }
        total
    }

    async fn chat(&self, room: String, mut input: Streaming<String>) -> Stream<String> {
        // A sender handle: items sent on it go out on the call's output stream.
        let (tx, output) = Stream::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(message)) = input.next().await {
                if tx.send(format!("[{room}] {message}")).await.is_err() {
                    break; // the consumer dropped its stream: the call is over
                }
            }
        });
        output
    }
}

#[tokio::main]
async fn main() -> Result<(), stardust::Error> {
    let server = Server::builder()
        .allow_anonymous()
        .serve(LogsServer::new(LogsImpl))
        .bind("127.0.0.1:0")
        .await?;
    let logs = LogsClient::connect(server.local_addr()).await?;

    // Server streaming: the consumer gets a `futures::Stream` of `Result<Line, Error>`.
    let mut lines = logs.tail("app.log".into(), 3).await?;
    while let Some(line) = lines.next().await {
        let line = line?;
        println!("tail   {:>2}: {}", line.number, line.text);
    }

    // Client streaming: any `Stream` of items as the input, the method's value back.
    let chunks = Stream::iter((0..64).map(|_| vec![0u8; 16 * 1024]));
    let total = logs.upload("backup.tar".into(), chunks).await?;
    println!("upload : {total} bytes arrived");

    // Both ways: feed the input through a sender while reading the output.
    let (tx, input) = Stream::channel(16);
    let mut replies = logs.chat("lobby".into(), input).await?;
    for message in ["hello", "anyone here?"] {
        tx.send(message.to_owned()).await?;
        if let Some(reply) = replies.next().await {
            println!("chat   : {}", reply?);
        }
    }
    drop(tx); // ends the input; the handler's loop ends, and so does the output
    let rest: Vec<_> = replies.collect().await;
    assert!(rest.is_empty());

    // A stream's deadline is the call's timeout: this one gets 1 s for its whole life.
    let quick = LogsClient::new(logs.client().with_timeout(Duration::from_secs(1)));
    let n = quick.tail("short.log".into(), 10).await?.count().await;
    println!("tail   : {n} items within the deadline");
    server.shutdown().await;
    Ok(())
}
