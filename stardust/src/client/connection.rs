//! One client connection: handshake, sending requests, and the read loop that completes them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use super::ClientConfig;
use super::notifications::Notification;
use super::pending::Pending;
use crate::error::{Error, ErrorKind};
use crate::protocol::frame::{self, Kind};
use crate::protocol::message::{
    self, Hello, HelloAck, PROTOCOL_NAME, PROTOCOL_VERSION, RequestHead,
};
use crate::transport::{FrameReader, Liveness, Outbound};

pub(crate) struct ClientConn {
    out: Arc<Outbound>,
    pending: Mutex<Pending>,
    /// The server sent `GoAway`: finish what is in flight, start nothing new here.
    draining: AtomicBool,
    closed: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    pub(crate) peer: SocketAddr,
}

impl ClientConn {
    /// Connects to the first address that accepts and performs the handshake.
    pub(crate) async fn connect(
        addrs: &[SocketAddr],
        config: &ClientConfig,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        let mut last_err = None;
        for addr in addrs {
            match tokio::time::timeout(
                config.connect_timeout,
                Self::connect_one(*addr, config, notify_tx.clone()),
            )
            .await
            {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(Error::new(
                        ErrorKind::Connect,
                        format!(
                            "connecting to {addr} took longer than {} ms",
                            config.connect_timeout.as_millis()
                        ),
                    ))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::new(ErrorKind::Connect, "no address to connect to")))
    }

    async fn connect_one(
        addr: SocketAddr,
        config: &ClientConfig,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        let stream = TcpStream::connect(addr).await.map_err(|e| {
            Error::new(ErrorKind::Connect, format!("cannot connect to {addr}: {e}")).with_source(e)
        })?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, config.max_frame);

        // The handshake is the only exchange done without the writer task: one frame each way.
        let hello = Hello {
            protocol: PROTOCOL_NAME.to_owned(),
            version: PROTOCOL_VERSION,
            agent: concat!("stardust-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_frame: Some(config.max_frame),
            meta: config.hello_meta.clone(),
        };
        let mut buf = bytes::BytesMut::new();
        message::put_serde(&mut buf, Kind::Hello, &hello)?;
        let handshake_err = |e: std::io::Error| {
            Error::new(
                ErrorKind::Connect,
                format!("handshake with {addr} failed: {e}"),
            )
            .with_source(e)
        };
        let mut wr = wr;
        tokio::io::AsyncWriteExt::write_all(&mut wr, &buf)
            .await
            .map_err(handshake_err)?;
        let ack = read_ack(&mut reader, addr).await?;
        if ack.version < 1 || ack.version > PROTOCOL_VERSION {
            return Err(Error::protocol(format!(
                "server {addr} answered with protocol version {}, this client speaks {PROTOCOL_VERSION}",
                ack.version
            )));
        }

        let out = Outbound::new(ack.max_frame.max(frame::MIN_MAX_FRAME));
        let conn = Arc::new(ClientConn {
            out: out.clone(),
            pending: Mutex::new(Pending::default()),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            peer: addr,
        });
        let writer = tokio::spawn(out.clone().run_writer(wr));
        let live = Arc::new(Liveness::new());
        let keepalive = config.keepalive.watch(live.clone(), out.clone());
        let reader_conn = conn.clone();
        let read_task = tokio::spawn(async move {
            let result = tokio::select! {
                biased;
                r = reader_conn.read_loop(&mut reader, &live, &notify_tx) => r,
                e = keepalive => Err(e),
                _ = out.closed() => Err(Error::connection_closed(format!("writing to {addr} failed"))),
            };
            let err = match result {
                Ok(()) => {
                    Error::connection_closed(format!("the server at {addr} closed the connection"))
                }
                Err(e) if e.kind() == ErrorKind::ConnectionClosed => e,
                Err(e) => Error::connection_closed(format!("connection to {addr} failed: {e}")),
            };
            tracing::debug!(%addr, error = %err, "client connection closed");
            reader_conn.teardown(&err);
        });
        conn.tasks
            .lock()
            .extend([writer.abort_handle(), read_task.abort_handle()]);
        Ok(conn)
    }

    async fn read_loop(
        &self,
        reader: &mut FrameReader,
        live: &Liveness,
        notify_tx: &broadcast::Sender<Notification>,
    ) -> Result<(), Error> {
        loop {
            loop {
                let h = match reader.next_frame() {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err((_, e)) => return Err(e),
                };
                match Kind::from_u8(h.kind) {
                    Some(Kind::Response) => {
                        let body = reader.take_body(&h);
                        self.complete(h.id, Ok(body));
                    }
                    Some(Kind::Error) => {
                        let err = message::parse_error(reader.body(&h));
                        reader.consume(&h);
                        self.complete(h.id, Err(err));
                    }
                    Some(Kind::Notify) => {
                        let body = reader.take_body(&h);
                        match message::parse_notify(&body) {
                            Ok((topic, payload)) => {
                                let offset = body.len() - payload.len();
                                let n = Notification::new(topic.to_owned(), body.slice(offset..));
                                // No subscriber is not an error: notifications are best effort.
                                let _ = notify_tx.send(n);
                            }
                            Err(e) => {
                                tracing::warn!(peer = %self.peer, error = %e, "dropping malformed notification")
                            }
                        }
                    }
                    Some(Kind::Ping) => {
                        reader.consume(&h);
                        let _ = self.out.push(|buf| {
                            frame::put_empty(buf, Kind::Pong, 0, h.id);
                            Ok(())
                        });
                    }
                    Some(Kind::Pong) => reader.consume(&h),
                    Some(Kind::GoAway) => {
                        let reason = message::parse_error(reader.body(&h));
                        reader.consume(&h);
                        tracing::debug!(peer = %self.peer, %reason, "server sent GoAway");
                        self.draining.store(true, Ordering::SeqCst);
                        if reason.kind() != ErrorKind::ShuttingDown {
                            // Not a graceful drain: the server is closing because of an error;
                            // every call in flight fails with its reason.
                            return Err(reason);
                        }
                    }
                    other => {
                        return Err(Error::protocol(format!(
                            "unexpected frame kind {} ({other:?}) from the server",
                            h.kind
                        )));
                    }
                }
            }
            if !reader.fill().await? {
                return Ok(());
            }
            live.touch();
        }
    }

    fn complete(&self, id: u64, reply: super::pending::Reply) {
        let waker = self.pending.lock().complete(id, reply);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Queues a request and registers its slot; returns the request id.
    pub(crate) fn send_request<A: Serialize + ?Sized>(
        &self,
        head: RequestHead<'_>,
        args: &A,
    ) -> Result<u64, Error> {
        let id = self.pending.lock().register()?;
        let head = RequestHead { id, ..head };
        let max = self.out.peer_max_frame;
        match self
            .out
            .push(|buf| message::put_request(buf, &head, args, max))
        {
            Ok(()) => Ok(id),
            Err(e) => {
                self.pending.lock().abandon(id);
                Err(match e.kind() {
                    ErrorKind::FrameTooLarge => Error::new(
                        ErrorKind::FrameTooLarge,
                        format!(
                            "request to {}.{} not sent: {}",
                            head.service,
                            head.method,
                            e.message()
                        ),
                    ),
                    _ => e,
                })
            }
        }
    }

    /// Queues a one-way request (no response slot).
    pub(crate) fn send_one_way<A: Serialize + ?Sized>(
        &self,
        head: RequestHead<'_>,
        args: &A,
    ) -> Result<(), Error> {
        if let Some(e) = self.pending.lock().closed_error() {
            return Err(e.clone());
        }
        let max = self.out.peer_max_frame;
        self.out
            .push(|buf| message::put_request(buf, &head, args, max))
    }

    pub(crate) fn poll_reply(
        &self,
        id: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<super::pending::Reply> {
        self.pending.lock().poll(id, cx)
    }

    /// Gives up on call `id`, telling the server to stop working on it.
    pub(crate) fn cancel(&self, id: u64) {
        if self.pending.lock().abandon(id) {
            let _ = self.out.push(|buf| {
                frame::put_empty(buf, Kind::Cancel, 0, id);
                Ok(())
            });
        }
    }

    /// Whether new calls may start on this connection.
    pub(crate) fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    fn teardown(&self, err: &Error) {
        self.closed.store(true, Ordering::SeqCst);
        let wakers = self.pending.lock().close(err);
        for w in wakers {
            w.wake();
        }
        self.out.close();
    }

    /// Closes the connection at once (the client was dropped).
    pub(crate) fn shutdown(&self) {
        self.teardown(&Error::connection_closed("the client was dropped"));
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

async fn read_ack(reader: &mut FrameReader, addr: SocketAddr) -> Result<HelloAck, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                let body = reader.body(&h);
                let result = match Kind::from_u8(h.kind) {
                    Some(Kind::HelloAck) => rmp_serde::from_slice::<HelloAck>(body).map_err(|e| {
                        Error::protocol(format!("malformed HelloAck from {addr}: {e}"))
                    }),
                    // The server refused the connection and said why.
                    Some(Kind::GoAway) => Err(message::parse_error(body)),
                    _ => Err(Error::protocol(format!(
                        "{addr} did not answer the handshake with HelloAck (got frame kind {})",
                        h.kind
                    ))),
                };
                reader.consume(&h);
                return result;
            }
            Ok(None) => {
                if !reader.fill().await? {
                    return Err(Error::new(
                        ErrorKind::Connect,
                        format!("{addr} closed the connection during the handshake"),
                    ));
                }
            }
            Err((_, e)) => return Err(e),
        }
    }
}
