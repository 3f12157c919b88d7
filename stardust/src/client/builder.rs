//! [`ClientBuilder`]: a client's settings, and the connection (or the balanced endpoints) it
//! starts with.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::ToSocketAddrs;
use tokio::sync::broadcast;

use super::*;

#[derive(Debug, Clone)]
pub(crate) struct ClientConfig {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_frame: u32,
    /// The credit each stream grants the server for output items.
    pub(crate) stream_window: u32,
    pub(crate) keepalive: Keepalive,
    pub(crate) write_stall_timeout: Duration,
    pub(crate) hello_meta: Metadata,
    /// Where connections get the token they present (and renew).
    pub(crate) credentials: Option<SharedCredentials>,
    /// TLS for connections that use it (all of a direct client's; providers that advertise it
    /// for a pool).
    pub(crate) tls: Option<ClientTls>,
    /// Optional protocol capabilities announced in the `Hello`.
    pub(crate) features: Vec<String>,
    /// The key this client proves it holds when a server challenges (proof of possession);
    /// without one, the credentials' key.
    pub(crate) proof_key: Option<ProofKey>,
    /// How long a connection's read loop may keep its worker awake for replies that are due.
    pub(crate) busy_poll: Duration,
}

/// The default of [`ClientBuilder::busy_poll`]: longer than a loopback or same-rack round trip
/// with a sleeping server (~30–40 µs on a VM), short enough that a miss costs little.
pub(crate) const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            timeout: Some(DEFAULT_TIMEOUT),
            max_frame: DEFAULT_MAX_FRAME,
            stream_window: crate::protocol::stream::DEFAULT_STREAM_WINDOW,
            keepalive: Keepalive::default(),
            write_stall_timeout: Duration::from_secs(30),
            hello_meta: Metadata::new(),
            credentials: None,
            tls: None,
            features: Vec::new(),
            proof_key: None,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

/// Builds a [`Client`].
#[must_use = "a builder does nothing until `connect` is awaited"]
pub struct ClientBuilder {
    pub(super) config: ClientConfig,
    pub(super) interceptors: Vec<Arc<dyn ClientInterceptor>>,
}

impl ClientBuilder {
    /// Default deadline of every call (30 s unless set); a call can override it with
    /// [`Client::with_timeout`].
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.config.timeout = Some(timeout);
        self
    }

    /// Calls without a deadline (not recommended: a lost provider is then only noticed by
    /// keepalive).
    pub fn no_timeout(mut self) -> ClientBuilder {
        self.config.timeout = None;
        self
    }

    /// How long establishing a connection (TCP and handshake) may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.config.connect_timeout = timeout;
        self
    }

    /// The credit, in bytes, each streaming call grants its provider for output items (default
    /// 256 KiB): what one stream's unread output may cost this process. The provider stops
    /// sending when it has sent that much more than the consumer has read (one item may
    /// overshoot it). A larger window helps a fast stream over a long link.
    pub fn stream_window(mut self, bytes: u32) -> ClientBuilder {
        self.config.stream_window = bytes.clamp(1, crate::protocol::stream::MAX_CREDIT);
        self
    }

    /// Largest response frame accepted, in bytes (default 16 MiB); the server is told, and
    /// answers an over-limit response with a `FrameTooLarge` error instead.
    pub fn max_frame_size(mut self, bytes: u32) -> ClientBuilder {
        self.config.max_frame = bytes.max(crate::protocol::frame::MIN_MAX_FRAME);
        self
    }

    /// Ping a silent server after `interval`; consider the connection dead after `timeout`
    /// without any frame, failing its calls (defaults 10 s and 30 s).
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> ClientBuilder {
        self.config.keepalive = Keepalive { interval, timeout };
        self
    }

    /// How long a connection may keep its worker thread awake waiting for replies that are due
    /// (default 50 µs; `Duration::ZERO` turns it off).
    ///
    /// Waking a sleeping thread costs more than a small call's whole round trip on loopback or
    /// within a rack (tens of µs against a few), so while calls are in flight the connection's
    /// read loop yields to the scheduler instead of letting the worker sleep, for up to this
    /// long per wait. Other tasks keep running meanwhile; the price is CPU time spent polling.
    /// It adapts: a wait that ends without a reply makes the next ones sleep at once, twice as
    /// many after each miss in a row (up to 1023), so a slow server costs about nothing; one
    /// reply caught in time resets it.
    pub fn busy_poll(mut self, budget: Duration) -> ClientBuilder {
        self.config.busy_poll = budget;
        self
    }

    /// How long requests may wait to be sent while the server takes none of them (default
    /// 30 s): then the server stopped reading, and the connection is closed, failing its calls
    /// with `ConnectionClosed` (the next call connects again). The clock runs only while the
    /// socket is full; any progress restarts it.
    pub fn write_stall_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.config.write_stall_timeout = timeout;
        self
    }

    /// Connection metadata sent in the handshake.
    pub fn handshake_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> ClientBuilder {
        self.config.hello_meta.insert(key, value);
        self
    }

    /// Announces optional protocol capabilities in the handshake's `Hello` (see
    /// [`Features`](crate::Features)); the server's own are in [`Client::peer_features`].
    pub fn features<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> ClientBuilder {
        crate::protocol::handshake::announce(&mut self.config.features, names);
        self
    }

    /// Presents a token from `credentials` on every connection: fetched when connecting (so a
    /// reconnect presents a fresh one) and, when it expires, renewed on the live connection at
    /// about two thirds of its remaining lifetime. A server that refuses the token fails the
    /// connect (and the calls waiting for it) with `Unauthorized` and the server's reason.
    pub fn credentials(self, credentials: impl Credentials) -> ClientBuilder {
        self.credentials_arc(Arc::new(credentials))
    }

    /// [`credentials`](ClientBuilder::credentials) with already shared credentials.
    pub fn credentials_arc(mut self, credentials: Arc<dyn Credentials>) -> ClientBuilder {
        self.config.credentials = Some(SharedCredentials(credentials));
        self
    }

    /// Proves possession of `key` when a server challenges: the key a token from
    /// [`credentials`](ClientBuilder::credentials) is bound to (when the credentials do not
    /// supply it themselves, see [`Credentials::proof_key`]), or, on a connection without a
    /// token, a key the client announces so that the server (a registry) can bind the tokens
    /// it issues to it. See [`auth::proof`](crate::auth::proof).
    #[cfg(feature = "registry")]
    pub fn proof_key(mut self, key: ProofKey) -> ClientBuilder {
        self.config.proof_key = Some(key);
        self
    }

    /// Connects over TLS, verifying the server's certificate with `tls`'s CA bundle against the
    /// IP address dialled (or [`ClientTls::server_name`]). A certificate that does not verify
    /// fails the connect with a `Connect` error naming the problem.
    #[cfg(feature = "tls")]
    pub fn tls(self, tls: ClientTls) -> ClientBuilder {
        self.tls_config(Some(tls))
    }

    /// TLS, or plaintext with `None` (what discovery's settings hold, in a build with or
    /// without the `tls` feature).
    pub(crate) fn tls_config(mut self, tls: Option<ClientTls>) -> ClientBuilder {
        self.config.tls = tls;
        self
    }

    /// Adds an interceptor; interceptors run in the order added.
    pub fn interceptor(mut self, interceptor: impl ClientInterceptor) -> ClientBuilder {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Resolves `addr`, connects and performs the handshake. The connection is re-established
    /// automatically on the next call after it drops.
    pub async fn connect(self, addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Connect, format!("cannot resolve address: {e}"))
                    .with_source(e)
            })?
            .collect();
        let (notify_tx, _) = broadcast::channel(1024);
        let secure = self
            .config
            .tls
            .as_ref()
            .map(|tls| Secure { tls, host: None });
        let conn = ClientConn::connect(&addrs, &self.config, secure, notify_tx.clone()).await?;
        Ok(self.build(Endpoints::Fixed(addrs), Some(conn), notify_tx))
    }

    /// A client with no provider to connect to, for a proxy that calls its service in-process
    /// (`XxxClient::in_process`, [`crate::local`]): calls that would need the network (a
    /// streaming method's) fail with `Connect`. Its timeout and interceptors apply to the
    /// in-process calls.
    pub fn in_process(self) -> Client {
        let (notify_tx, _) = broadcast::channel(1);
        self.build(Endpoints::Fixed(Vec::new()), None, notify_tx)
    }

    /// A client whose calls go to the providers `source` lists at the time, one chosen per call
    /// by `balancer`, over `pool`'s connections (opened lazily, on first use).
    pub(crate) fn balanced(
        self,
        source: Arc<dyn EndpointSource>,
        pool: Arc<Pool>,
        balancer: Arc<dyn Balancer>,
        methods: usize,
    ) -> Client {
        let notify_tx = pool.notify_sender();
        self.build(
            Endpoints::Balanced(Balanced {
                source,
                pool,
                balancer,
                latencies: MethodLatencies::with_methods(methods),
            }),
            None,
            notify_tx,
        )
    }

    fn build(
        self,
        endpoints: Endpoints,
        conn: Option<Arc<ClientConn>>,
        notify_tx: broadcast::Sender<Notification>,
    ) -> Client {
        Client {
            timeout: self.config.timeout,
            metadata: None,
            hash_key: None,
            retry_lost: false,
            hedging: None,
            inner: Arc::new(ClientInner {
                endpoints,
                config: self.config,
                interceptors: self.interceptors,
                conn: Mutex::new(conn),
                connecting: tokio::sync::Mutex::new(()),
                notify_tx,
            }),
        }
    }
}
