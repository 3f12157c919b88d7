//! Authentication: tokens in the handshake, per-call checks, renewal on a live connection.
//!
//! Tokens are minted here with a local Ed25519 key and `stardust::auth::token::encode` (the
//! registry's half of the format), bound to this test's proof key (what a registry does for a
//! current client); servers verify them with a `TokenVerifier`. Proof of possession itself is
//! tested in `tests/proof.rs`. Loopback only,
//! every wait bounded; where time must pass, the test waits until a known instant.

mod common;
#[path = "auth/tokens.rs"]
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use ed25519_dalek::SigningKey;
use parking_lot::Mutex;
use stardust::__wire::frame::{self, Kind};
use stardust::__wire::message::{self, Hello, RequestHead};
use stardust::auth::token::{self, KeySet};
use stardust::auth::{
    BoxFuture, Credentials, Identity, KeyFetcher, NO_AUTHENTICATOR, StaticToken, TOKEN_KEY,
    TOKEN_REQUIRED, TokenVerifier,
};
use stardust::{Error, ErrorKind, Metadata, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use tokens::*;

/// The built-in connection service, as a consumer can declare it to call it by hand.
mod connection_api {
    #![allow(dead_code)]

    #[stardust::service(name = "stardust.Connection")]
    pub trait Connection {
        async fn authenticate(&self, token: String);
    }
}
use connection_api::ConnectionClient;

/// A service nobody hosts.
mod hidden_api {
    #![allow(dead_code)]

    #[stardust::service(name = "test.Hidden")]
    pub trait Hidden {
        async fn peek(&self) -> u32;
    }
}
use hidden_api::HiddenClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_identifies_the_caller() {
    let (server, _control) = token_server().await;
    let token = mint("k1", &key(1), "web", in_an_hour());
    let calc = connect_with(&server, &token).await.unwrap();
    let info = calc.context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some("web"));
    assert!(!info.token_visible, "the token must not reach handlers");
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_token_is_refused() {
    let (server, _control) = token_server().await;
    let err = within("connect", CalcClient::connect(server.local_addr()))
        .await
        .expect_err("no token, no connection");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert_eq!(err.message(), TOKEN_REQUIRED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_after_a_hello_without_token_never_runs() {
    let (server, mut control) = token_server().await;
    let mut out = BytesMut::new();
    let hello = Hello {
        features: Vec::new(),
        protocol: "stardust".into(),
        version: 1,
        agent: "raw".into(),
        max_frame: None,
        meta: Metadata::new(),
        stream_window: None,
    };
    message::put_serde(&mut out, Kind::Hello, &hello).unwrap();
    let meta = Metadata::new();
    let head = RequestHead {
        id: 1,
        flags: 0,
        service: "test.Calc",
        method: "record",
        timeout_us: 0,
        trace_id: 1,
        meta: &meta,
    };
    message::put_request(&mut out, &head, &(42u64,), frame::DEFAULT_MAX_FRAME).unwrap();

    let mut stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    stream.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    within(
        "the server to answer and close",
        stream.read_to_end(&mut got),
    )
    .await
    .expect("a clean close after the GoAway");

    let h = frame::parse_header(&got, frame::DEFAULT_MAX_FRAME)
        .unwrap()
        .expect("a whole frame");
    assert_eq!(h.kind, Kind::GoAway as u8);
    assert_eq!(
        h.frame_len(),
        got.len(),
        "the GoAway is all the server sends"
    );
    let reason = message::parse_error(&got[frame::HEADER_LEN..]);
    assert_eq!(reason.kind(), ErrorKind::Unauthorized);
    assert_eq!(reason.message(), TOKEN_REQUIRED);
    // The connection is closed and its handshake never completed: nothing ran.
    assert!(control.events.try_recv().is_err(), "the request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_expired_and_garbage_tokens_are_refused() {
    let (server, _control) = token_server().await;

    // Forged: signed with another key under the trusted key id.
    let forged = mint("k1", &key(2), "web", in_an_hour());
    let e = refused(&server, &forged).await;
    assert!(e.message().contains("signature is invalid"), "{e}");

    // Tampered: a genuine token whose claims were swapped for the admin's.
    let genuine = mint("k1", &key(1), "web", in_an_hour());
    let admin = mint("k1", &key(1), "admin", in_an_hour());
    let sig = genuine.rsplit('.').next().unwrap();
    let admin_claims = admin.split('.').nth(1).unwrap();
    let tampered = format!("sd1.{admin_claims}.{sig}");
    let e = refused(&server, &tampered).await;
    assert!(e.message().contains("signature is invalid"), "{e}");

    // Expired: minted already expired.
    let expired = mint(
        "k1",
        &key(1),
        "web",
        SystemTime::now() - Duration::from_secs(5),
    );
    let e = refused(&server, &expired).await;
    assert!(e.message().contains("expired"), "{e}");

    // Not a token at all.
    let e = refused(&server, "Bearer hunter2").await;
    assert!(e.message().contains("malformed"), "{e}");

    // A refused handshake leaves no connection behind, and a good token still works.
    let calc = connect_with(&server, &genuine).await.unwrap();
    assert_eq!(calc.add(2, 2).await.unwrap(), 4);
}

/// Serves the registry's keys after a rotation, counting how often it is asked.
struct RotatedKeys {
    keys: KeySet,
    fetched: AtomicUsize,
}

impl KeyFetcher for RotatedKeys {
    fn fetch(&self) -> BoxFuture<'_, Result<KeySet, Error>> {
        self.fetched.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(self.keys.clone()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_id_makes_the_verifier_fetch_the_registrys_keys() {
    let fetcher = Arc::new(RotatedKeys {
        keys: keys(&[("k1", &key(1)), ("k2", &key(2))]),
        fetched: AtomicUsize::new(0),
    });
    let verifier = TokenVerifier::new(keys(&[("k1", &key(1))])).with_fetcher(fetcher.clone());
    let (server, _control) = start_server_with(Server::builder().authenticator(verifier)).await;

    // Signed with the registry's new key, which the provider has not seen yet.
    let token = mint("k2", &key(2), "web", in_an_hour());
    let calc = connect_with(&server, &token).await.unwrap();
    assert_eq!(calc.context().await.unwrap().caller.as_deref(), Some("web"));
    assert_eq!(fetcher.fetched.load(Ordering::SeqCst), 1);

    // Now known: no second fetch.
    let again = connect_with(&server, &mint("k2", &key(2), "api", in_an_hour()))
        .await
        .unwrap();
    assert_eq!(
        again.context().await.unwrap().caller.as_deref(),
        Some("api")
    );
    assert_eq!(fetcher.fetched.load(Ordering::SeqCst), 1);

    // A key id the registry does not have either stays refused.
    let e = refused(&server, &mint("k9", &key(9), "web", in_an_hour())).await;
    assert!(e.message().contains("unknown key id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consume_list_limits_the_services_a_caller_may_call() {
    let (server, _control) = token_server().await;
    let token = mint_for("k1", &key(1), "web", in_an_hour(), Some(&["test.Calc"]));
    let calc = connect_with(&server, &token).await.unwrap();
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);

    let greeter = GreeterClient::new(calc.client().clone());
    let e = greeter.greet("web".into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().contains("test.Greeter"), "{e}");
    // The refusal is per call: the connection keeps serving what is allowed.
    assert_eq!(calc.add(3, 4).await.unwrap(), 7);
    assert_eq!(server.connection_count(), 1);

    // A service the server does not host is refused the same way: nothing is revealed.
    let e = HiddenClient::new(calc.client().clone())
        .peek()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
}

/// Verifies tokens as of a fixed instant instead of now (the clock `token::verify` takes), so a
/// token that has already expired is accepted as if presented while it was still valid.
struct VerifierAt(KeySet, SystemTime);

impl stardust::auth::Authenticator for VerifierAt {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Identity, Error>> {
        let verified = token::verify(token, &self.0, self.1);
        Box::pin(async move { verified.map(|claims| Identity::from_claims(&claims)) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_on_a_live_connection_fails_the_next_call_until_renewed() {
    // No waiting for an expiry: the token was minted expired a second ago, and the server's
    // verifier looks at it as of a minute ago, when it was still valid. Per-call checks use the
    // real clock, so the connection is established with a token that has expired since.
    let a_minute_ago = SystemTime::now() - Duration::from_secs(60);
    let verifier = VerifierAt(keys(&[("k1", &key(1))]), a_minute_ago);
    let (server, _control) = start_server_with(Server::builder().authenticator(verifier)).await;
    let expired = mint(
        "k1",
        &key(1),
        "web",
        SystemTime::now() - Duration::from_secs(1),
    );
    // Presented by hand, so no renewal runs: the server's per-call check is what is tested.
    let client = client()
        .handshake_metadata(TOKEN_KEY, expired)
        .connect(server.local_addr())
        .await
        .expect("valid when presented, as the verifier's clock says");
    let calc = CalcClient::new(client.clone());

    let e = calc.add(1, 2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.message().contains("expired"), "{e}");
    assert_eq!(server.connection_count(), 1, "the connection stays open");

    // A renewal on the same connection fixes it.
    let renewed = mint("k1", &key(1), "web", in_an_hour());
    ConnectionClient::new(client)
        .authenticate(renewed)
        .await
        .expect("renewal accepted");
    let after = calc.context().await.expect("calls work again");
    assert_eq!(after.caller.as_deref(), Some("web"));
    assert_eq!(server.connection_count(), 1, "on the same connection");
}

/// Credentials that mint short-lived tokens, counting how often they are asked. They tell the
/// client each token expires after `told`, sooner than it really does (`lifetime`): the client
/// renews on that schedule, well ahead of the real expiry however loaded the machine.
struct Minter {
    key: SigningKey,
    lifetime: Duration,
    told: Duration,
    expiries: Mutex<Vec<SystemTime>>,
}

impl Minter {
    fn asked(&self) -> usize {
        self.expiries.lock().len()
    }
}

struct MinterCredentials(Arc<Minter>);

impl Credentials for MinterCredentials {
    fn token(&self) -> BoxFuture<'_, Result<(String, Option<SystemTime>), Error>> {
        let now = SystemTime::now();
        let expires_at = whole_ms(now + self.0.lifetime);
        let token = mint("k1", &self.0.key, "web", expires_at);
        self.0.expiries.lock().push(expires_at);
        Box::pin(async move { Ok((token, Some(now + self.0.told))) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_one_connection_working_past_the_first_tokens_expiry() {
    let (server, _control) = token_server().await;
    let minter = Arc::new(Minter {
        key: key(1),
        lifetime: Duration::from_millis(1500),
        told: Duration::from_millis(300),
        expiries: Mutex::new(Vec::new()),
    });
    let client = client()
        .credentials(MinterCredentials(minter.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    let calc = CalcClient::new(client);
    let first = calc.context().await.unwrap();
    assert_eq!(first.caller.as_deref(), Some("web"));
    assert_eq!(minter.asked(), 1, "one token for the handshake");
    let first_expiry = minter.expiries.lock()[0];

    // Renewals come every ~200 ms; the first token expires at 1.5 s. Keep calling until the
    // credentials were asked twice more and the first token is past its expiry.
    within("two renewals past the first token's expiry", async {
        loop {
            let done = minter.asked() >= 3 && SystemTime::now() > first_expiry;
            let info = calc.context().await.expect("calls keep working");
            assert_eq!(info.peer, first.peer, "still the first connection");
            assert_eq!(info.caller.as_deref(), Some("web"));
            assert_eq!(server.connection_count(), 1);
            if done {
                return;
            }
            // Pacing between calls, not synchronisation: the loop ends on the conditions above.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_for_another_app_is_refused() {
    let (server, _control) = token_server().await;
    let client = client()
        .credentials(StaticToken(mint("k1", &key(1), "web", in_an_hour())))
        .connect(server.local_addr())
        .await
        .unwrap();
    let admin = mint("k1", &key(1), "admin", in_an_hour());
    let e = ConnectionClient::new(client.clone())
        .authenticate(admin.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.message().contains("belongs to app `web`"), "{e}");
    assert!(!e.message().contains(&admin));

    // A bad token is refused too, and neither changes who the connection is.
    let forged = mint("k1", &key(2), "web", in_an_hour());
    let e = ConnectionClient::new(client.clone())
        .authenticate(forged)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    let info = CalcClient::new(client).context().await.unwrap();
    assert_eq!(info.caller.as_deref(), Some("web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_servers_accept_anyone_and_ignore_tokens() {
    let (server, _control) = start_server().await;
    let calc = CalcClient::connect(server.local_addr()).await.unwrap();
    let info = calc.context().await.unwrap();
    assert_eq!(info.caller, None);

    // A client with credentials connects too; its token is not looked at (and not shown).
    let token = mint("k1", &key(1), "web", in_an_hour());
    let with_token = connect_with(&server, &token).await.unwrap();
    let info = with_token.context().await.unwrap();
    assert_eq!(info.caller, None);
    assert!(!info.token_visible);

    // Renewal is answered with a refusal that tells the client to stop trying.
    let e = ConnectionClient::new(with_token.client().clone())
        .authenticate(token)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized);
    assert_eq!(e.message(), NO_AUTHENTICATOR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_tokens_together_verify_the_tokens_presented() {
    let builder = Server::builder()
        .authenticator(TokenVerifier::new(keys(&[("k1", &key(1))])))
        .allow_anonymous();
    let (server, _control) = start_server_with(builder).await;

    let anonymous = CalcClient::connect(server.local_addr()).await.unwrap();
    assert_eq!(anonymous.context().await.unwrap().caller, None);

    let token = mint("k1", &key(1), "web", in_an_hour());
    let known = connect_with(&server, &token).await.unwrap();
    assert_eq!(
        known.context().await.unwrap().caller.as_deref(),
        Some("web")
    );

    refused(&server, &mint("k1", &key(2), "web", in_an_hour())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_authentication_settings_does_not_start() {
    let (calc, _control) = CalcImpl::new();
    let e = Server::builder()
        .serve(CalcServer::new(calc.clone()))
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(
        e.message().starts_with("no authentication configured"),
        "{e}"
    );
    assert!(e.message().contains(".authenticator(..)"), "{e}");
    assert!(e.message().contains(".allow_anonymous()"), "{e}");
    // A configuration mistake, said on one clean line (no stray backslash or indentation).
    assert_eq!(e.kind(), stardust::ErrorKind::InvalidConfig);
    assert!(
        !e.message().contains('\\') && !e.message().contains("  "),
        "{e:?}"
    );
    assert!(!e.message().contains('\n'), "{e:?}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = Server::builder()
        .serve(CalcServer::new(calc))
        .listen(listener)
        .unwrap_err();
    assert!(
        e.message().starts_with("no authentication configured"),
        "{e}"
    );
}

/// Credentials whose source can fail, reporting when they are asked.
struct Flaky {
    key: SigningKey,
    lifetime: Duration,
    failing: std::sync::atomic::AtomicBool,
    asked: tokio::sync::mpsc::UnboundedSender<SystemTime>,
}

struct FlakyCredentials(Arc<Flaky>);

impl Credentials for FlakyCredentials {
    fn token(&self) -> BoxFuture<'_, Result<(String, Option<SystemTime>), Error>> {
        let now = SystemTime::now();
        let _ = self.0.asked.send(now);
        let result = if self.0.failing.load(Ordering::SeqCst) {
            Err(Error::new(
                ErrorKind::Connect,
                "the registry is unreachable",
            ))
        } else {
            let expires_at = whole_ms(now + self.0.lifetime);
            Ok((mint("k1", &self.0.key, "web", expires_at), Some(expires_at)))
        };
        Box::pin(async move { result })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_cannot_be_renewed_retires_its_connection_after_its_calls() {
    let (server, mut control) = token_server().await;
    let (asked_tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let flaky = Arc::new(Flaky {
        key: key(1),
        // Long enough for the calls below to start well before it expires on a loaded machine.
        lifetime: Duration::from_secs(3),
        failing: false.into(),
        asked: asked_tx,
    });
    let client = client()
        .credentials(FlakyCredentials(flaky.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    let first_token_at = asked.recv().await.unwrap();
    let expires_at = whole_ms(first_token_at + flaky.lifetime);
    flaky.failing.store(true, Ordering::SeqCst);

    let calc = CalcClient::new(client);
    let first = calc.context().await.unwrap();
    calc.subscribe("t".into()).await.unwrap();
    let notifier = control.notifiers.lock()[0].clone();
    // A call in flight across the expiry: retiring the connection must let it finish.
    let gate = tokio::spawn({
        let calc = calc.clone();
        async move { calc.gate(7).await }
    });
    control.expect(Event::Entered(7)).await;

    // Renewals fail (at ~2 s, then backing off) until the token expires.
    within("a renewal attempt after the expiry", async {
        while asked.recv().await.expect("credentials dropped") < expires_at {}
    })
    .await;
    assert!(!notifier.is_closed(), "closed with a call in flight");
    control.release(7);
    assert_eq!(within("the gated call", gate).await.unwrap().unwrap(), 7);
    within(
        "the client to close the retired connection",
        notifier.closed(),
    )
    .await;

    // The next call opens a new connection with a fresh token.
    flaky.failing.store(false, Ordering::SeqCst);
    let info = calc.context().await.expect("a new connection");
    assert_ne!(info.peer, first.peer);
    assert_eq!(info.caller.as_deref(), Some("web"));
}
