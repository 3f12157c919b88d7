//! Tokens for `tests/auth.rs`: signing keys, tokens minted with them and bound to the test's
//! proof key, and connecting with a token to a server that requires one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use stardust::auth::token::{self, Claims, KeySet};
use stardust::auth::{ProofKey, StaticToken, TokenVerifier};
use stardust::{Client, Error, ErrorKind, Server};

use crate::common::*;

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The key this test's clients prove, and its tokens are bound to.
pub fn proof_key() -> ProofKey {
    ProofKey::from_seed([42; 32])
}

/// A client builder that proves [`proof_key`].
pub fn client() -> stardust::ClientBuilder {
    Client::builder().proof_key(proof_key())
}

pub fn keys(entries: &[(&str, &SigningKey)]) -> KeySet {
    entries
        .iter()
        .map(|(kid, k)| ((*kid).to_owned(), k.verifying_key()))
        .collect()
}

/// `at`, cut to the millisecond precision tokens carry.
pub fn whole_ms(at: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(token::unix_ms(at))
}

pub fn mint(kid: &str, key: &SigningKey, app: &str, expires_at: SystemTime) -> String {
    mint_for(kid, key, app, expires_at, None)
}

pub fn mint_for(
    kid: &str,
    key: &SigningKey,
    app: &str,
    expires_at: SystemTime,
    consume: Option<&[&str]>,
) -> String {
    let claims = Claims {
        kid: kid.to_owned(),
        app: app.to_owned(),
        iat_ms: token::unix_ms(SystemTime::now()),
        exp_ms: token::unix_ms(expires_at),
        consume: consume.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
        cnf: Some(proof_key().public_key()),
    };
    token::encode(&claims, |m| key.sign(m).to_bytes())
}

pub fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

/// A server trusting key 1 under key id `k1`, with no anonymous access.
pub async fn token_server() -> (Server, Control) {
    start_server_with(Server::builder().authenticator(TokenVerifier::new(keys(&[("k1", &key(1))]))))
        .await
}

pub async fn connect_with(server: &Server, token: &str) -> Result<CalcClient, Error> {
    let client = client()
        .credentials(StaticToken(token.to_owned()))
        .connect(server.local_addr())
        .await?;
    Ok(CalcClient::new(client))
}

/// Connecting with `token` fails; returns why, after checking the error never quotes it.
pub async fn refused(server: &Server, token: &str) -> Error {
    let err = within("a refused connect", connect_with(server, token))
        .await
        .expect_err("the server must refuse the token");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(
        !err.to_string().contains(token),
        "the error quotes the token"
    );
    assert!(
        !format!("{err:?}").contains(token),
        "Debug quotes the token"
    );
    err
}
