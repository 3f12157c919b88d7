//! Opening a connection: TCP (and TLS), the handshake with its token (and, when the server
//! challenges, the proof of possession), and the tasks that then run it (writer, reader,
//! deadline sweeper, keepalive).

use super::renewal::{Token, fetch_token};
use super::*;
use crate::auth::{ProofKey, proof};
use crate::protocol::stream::{DEFAULT_STREAM_WINDOW, FEATURE_STREAM};

/// The server's first answer to the `Hello`.
enum Answer {
    Ack(HelloAck),
    /// Prove possession of the key first (`Challenge` frame), with this nonce.
    Challenge([u8; proof::NONCE_LEN]),
}

impl ClientConn {
    /// Connects to the first address that accepts and performs the handshake.
    pub(crate) async fn connect(
        addrs: &[SocketAddr],
        config: &ClientConfig,
        secure: Option<Secure<'_>>,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        // One fresh token per connection attempt: a reconnect never presents a stale one.
        let token = match &config.credentials {
            Some(credentials) => Some(fetch_token(credentials, config.connect_timeout).await?),
            None => None,
        };
        #[cfg(feature = "registry")]
        let key = config.proof_key.clone().or_else(|| {
            config
                .credentials
                .as_ref()
                .and_then(|credentials| credentials.0.proof_key())
        });
        // No proof of possession without the `registry` feature (no Ed25519).
        #[cfg(not(feature = "registry"))]
        let key = config.proof_key.clone();
        let mut last_err = None;
        for addr in addrs {
            let attempt = Self::connect_one(
                *addr,
                config,
                secure,
                token.as_ref(),
                key.as_ref(),
                notify_tx.clone(),
            );
            match tokio::time::timeout(config.connect_timeout, attempt).await {
                Ok(Ok(conn)) => {
                    if let (Some(credentials), Some(expires_at)) = (
                        &config.credentials,
                        token.as_ref().and_then(|t| t.expires_at),
                    ) {
                        conn.start_renewal(credentials.clone(), expires_at);
                    }
                    return Ok(conn);
                }
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
        secure: Option<Secure<'_>>,
        token: Option<&Token>,
        key: Option<&ProofKey>,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Result<Arc<ClientConn>, Error> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            Error::new(ErrorKind::Connect, format!("cannot connect to {addr}: {e}")).with_source(e)
        })?;
        let _ = tcp.set_nodelay(true);
        let stream = match secure {
            None => Stream::Tcp(tcp),
            Some(s) => s.tls.connect(tcp, s.host, addr).await?,
        };
        let (rd, wr) = stream.split();
        let mut reader = FrameReader::new(rd, config.max_frame);

        // The handshake is the only exchange done without the writer task: one frame each way,
        // or two when the server asks for a proof of possession.
        let mut meta = config.hello_meta.clone();
        let mut features = config.features.clone();
        crate::protocol::handshake::announce(&mut features, [FEATURE_STREAM]);
        if let Some(token) = token {
            meta.insert(TOKEN_KEY, token.text.as_str());
        }
        // The token presented (from the credentials, or put in the metadata by hand): what a
        // proof covers.
        let presented = meta.get(TOKEN_KEY).map(str::to_owned);
        if let Some(key) = key {
            crate::protocol::handshake::announce(&mut features, [proof::FEATURE_PROOF]);
            if presented.is_none() {
                // No token to carry the key: announce it, to be proven (a registry binds the
                // tokens it issues on this connection to it).
                meta.insert(proof::PROOF_KEY_META, proof::encode_key(&key.public_key()));
            }
        }
        let hello = Hello {
            protocol: PROTOCOL_NAME.to_owned(),
            version: PROTOCOL_VERSION,
            agent: concat!("stardust-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_frame: Some(config.max_frame),
            meta,
            features,
            stream_window: (config.stream_window != DEFAULT_STREAM_WINDOW)
                .then_some(config.stream_window),
        };
        let mut buf = bytes::BytesMut::new();
        message::put_serde(&mut buf, Kind::Hello, &hello)?;
        let handshake_failed = |e: std::io::Error| {
            Error::new(
                ErrorKind::Connect,
                format!("handshake with {addr} failed: {e}"),
            )
            .with_source(e)
        };
        wr.write_all(&buf).await.map_err(handshake_failed)?;
        let ack = match read_answer(&mut reader, addr).await? {
            Answer::Ack(ack) => ack,
            Answer::Challenge(nonce) => {
                let Some(key) = key else {
                    return Err(Error::new(
                        ErrorKind::Unauthorized,
                        format!(
                            "{addr} asks for a proof of possession and this client has no proof \
                             key (its credentials supply none)"
                        ),
                    ));
                };
                // Signed for the address dialed: worthless to anyone relaying the challenge.
                let target = proof::target_of(addr);
                let sig = key.sign_proof(&nonce, &target, presented.as_deref().unwrap_or(""));
                buf.clear();
                let start = frame::begin(&mut buf, Kind::Proof, 0, 0);
                message::put_proof(&mut buf, &target, &sig);
                frame::finish(&mut buf, start, u32::MAX)?;
                wr.write_all(&buf).await.map_err(handshake_failed)?;
                match read_answer(&mut reader, addr).await? {
                    Answer::Ack(ack) => ack,
                    Answer::Challenge(_) => {
                        return Err(Error::protocol(format!(
                            "{addr} sent a second Challenge instead of HelloAck"
                        )));
                    }
                }
            }
        };
        if ack.version < 1 || ack.version > PROTOCOL_VERSION {
            return Err(Error::protocol(format!(
                "server {addr} answered with protocol version {}, this client speaks {PROTOCOL_VERSION}",
                ack.version
            )));
        }
        let peer_stream_window = match ack.stream_window {
            None => DEFAULT_STREAM_WINDOW,
            Some(w) => crate::protocol::handshake::check_stream_window(w.into())
                .map_err(|e| Error::protocol(format!("server {addr} sent a bad HelloAck: {e}")))?,
        };

        let out = Outbound::new(
            wr,
            ack.max_frame.max(frame::MIN_MAX_FRAME),
            // Requests come from many caller tasks: gather them into one write.
            Flush::Coalesce,
            Pending::default(),
            WriteLimits {
                // Callers wait for their own responses; the queue needs no bound of its own.
                max_queued: usize::MAX,
                stall_timeout: Some(config.write_stall_timeout),
            },
        );
        let live = Arc::new(Liveness::new());
        let conn = Arc::new(ClientConn {
            live: live.clone(),
            out: out.clone(),
            deadline_changed: Notify::new(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            idle: Notify::new(),
            tasks: Mutex::new(Vec::new()),
            background: Mutex::new(Vec::new()),
            peer: addr,
            features: ack.features.into(),
            stream_window: config.stream_window,
            peer_stream_window,
            max_frame: config.max_frame,
            busy_poll: config.busy_poll,
            arrived_ns: AtomicU64::new(0),
        });
        let writer = tokio::spawn(out.clone().run_writer());
        let sweeper = tokio::spawn(conn.clone().sweep_deadlines());
        let keepalive = config
            .keepalive
            .watch(live.clone(), out.clone(), reader.bodies());
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
        conn.tasks.lock().extend([
            writer.abort_handle(),
            sweeper.abort_handle(),
            read_task.abort_handle(),
        ]);
        conn.background.lock().push(sweeper.abort_handle());
        if conn.closed.load(Ordering::SeqCst) {
            // Closed before the sweeper was registered: stop it now.
            sweeper.abort();
        }
        Ok(conn)
    }
}

async fn read_answer(reader: &mut FrameReader, addr: SocketAddr) -> Result<Answer, Error> {
    let answer = read_frame_answer(reader, addr).await;
    match answer {
        Err(e) if reader.looks_like_tls() => Err(Error::new(
            ErrorKind::Connect,
            format!(
                "{addr} speaks TLS and this client connected in plaintext: configure TLS for it \
                 (ClientBuilder::tls with a ClientTls, or StardustBuilder::tls)"
            ),
        )
        .with_source(e)),
        other => other,
    }
}

async fn read_frame_answer(reader: &mut FrameReader, addr: SocketAddr) -> Result<Answer, Error> {
    loop {
        match reader.next_frame() {
            Ok(Some(h)) => {
                let body = reader.body(&h);
                let result = match Kind::from_u8(h.kind) {
                    Some(Kind::HelloAck) => rmp_serde::from_slice::<HelloAck>(body)
                        .map(Answer::Ack)
                        .map_err(|e| {
                            Error::protocol(format!("malformed HelloAck from {addr}: {e}"))
                        }),
                    Some(Kind::Challenge) => message::parse_challenge(body).map(Answer::Challenge),
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
