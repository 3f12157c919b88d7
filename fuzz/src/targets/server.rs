//! A whole provider connection, as a stranger on the network gets one: any bytes sent to a real
//! `stardust::Server` (anonymous callers allowed, hosting the echo service) over loopback, then
//! the client's side closed. This runs the server's own handshake read (`read_hello`), its read
//! loop (requests, cancels, pings, `GoAway`s), argument decoding and its writer, with nothing
//! repeated in the target.
//!
//! Slower than the other targets (a TCP connection per input), so it complements rather than
//! replaces them.
//!
//! Input: the bytes a client sends. Checks: the server answers with whole frames of the kinds a
//! server sends (with streaming calls: items, credit, and `Cancel` for an input no longer
//! read), the first a `HelloAck` or a `GoAway`; nothing after a `GoAway` but what calls
//! already running send.

use std::net::SocketAddr;

use stardust::Server;
use stardust::__wire::frame::{self, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::echo::{EchoServer, Mirror};

/// A provider on loopback and the runtime it runs on (between inputs nothing runs).
struct Provider {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    _server: Server,
}

impl Provider {
    fn start() -> Provider {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let server = runtime
            .block_on(
                Server::builder()
                    .serve(EchoServer::new(Mirror))
                    .allow_anonymous()
                    .bind("127.0.0.1:0"),
            )
            .expect("a loopback port");
        Provider {
            runtime,
            addr: server.local_addr(),
            _server: server,
        }
    }

    /// Sends `input`, half-closes, and returns what the server sent until it closed (`None` if
    /// the connection was reset: the server may close with unread input, and the kernel then
    /// discards what was in flight).
    fn exchange(&self, input: &[u8]) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            let mut stream = TcpStream::connect(self.addr).await.expect("connect");
            let (mut rd, mut wr) = stream.split();
            let send = async {
                // The server may stop reading (it refused the handshake): not an error here.
                let _ = wr.write_all(input).await;
                let _ = wr.shutdown().await;
            };
            let mut answer = Vec::new();
            let (_, received) = tokio::join!(send, rd.read_to_end(&mut answer));
            received.ok().map(|_| answer)
        })
    }
}

thread_local! {
    static PROVIDER: Provider = Provider::start();
}

/// Sends `input` to the provider on a new connection, half-closes it, and returns what the
/// server sent until it closed (`None` if the connection was reset).
pub fn exchange(input: &[u8]) -> Option<Vec<u8>> {
    PROVIDER.with(|p| p.exchange(input))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some(answer) = exchange(data) else {
        return;
    };
    let mut rest = &answer[..];
    let mut first = true;
    let mut gone_away = false;
    while !rest.is_empty() {
        let h = frame::parse_header(rest, u32::MAX)
            .expect("the server sends valid headers")
            .expect("the server sends whole frames");
        assert!(
            h.frame_len() <= rest.len(),
            "the server sent part of a frame"
        );
        let kind = Kind::from_u8(h.kind).expect("a known kind");
        if first {
            assert!(
                matches!(kind, Kind::HelloAck | Kind::GoAway),
                "first frame {kind:?}"
            );
            first = false;
        } else {
            assert!(
                matches!(
                    kind,
                    Kind::Response
                        | Kind::Error
                        | Kind::Pong
                        | Kind::Ping
                        | Kind::GoAway
                        | Kind::Item
                        | Kind::Credit
                        | Kind::Cancel
                ),
                "a server sent {kind:?}"
            );
        }
        if gone_away {
            assert!(
                matches!(
                    kind,
                    Kind::Response
                        | Kind::Error
                        | Kind::GoAway
                        | Kind::Item
                        | Kind::Credit
                        | Kind::Cancel
                ),
                "{kind:?} after GoAway"
            );
        }
        gone_away |= kind == Kind::GoAway;
        rest = &rest[h.frame_len()..];
    }
}
