//! Renewing a connection's access token before it expires: fetched from the client's
//! credentials and presented with the built-in `authenticate` call on the live connection.

use super::*;

/// How long renewing a token (fetching it, and the `authenticate` call) may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest wait before retrying a failed renewal.
const RENEW_RETRY_MIN: Duration = Duration::from_millis(250);
const RENEW_RETRY_MAX: Duration = Duration::from_secs(30);

const NO_NEWER_TOKEN: &str = "the credentials offered no token newer than the current one";

/// A token from the client's credentials and its expiry. The text is a secret: it goes into the
/// handshake or an `authenticate` request and nowhere else (no logs, no errors, no `Debug`).
pub(super) struct Token {
    pub(super) text: String,
    pub(super) expires_at: Option<SystemTime>,
}

/// Asks `credentials` for the current token, within `bound`.
pub(super) async fn fetch_token(
    credentials: &SharedCredentials,
    bound: Duration,
) -> Result<Token, Error> {
    match tokio::time::timeout(bound, credentials.0.token()).await {
        Ok(Ok((text, expires_at))) => Ok(Token { text, expires_at }),
        Ok(Err(e)) => {
            // Not being able to prove who we are is `Unauthorized` when the credentials say so;
            // anything else (the registry is unreachable, ...) means no connection was made.
            let kind = match e.kind() {
                ErrorKind::Unauthorized | ErrorKind::PermissionDenied => e.kind(),
                _ => ErrorKind::Connect,
            };
            Err(Error::new(
                kind,
                format!("cannot get an access token: {}", e.message()),
            ))
        }
        Err(_) => Err(Error::new(
            ErrorKind::Connect,
            format!(
                "getting an access token took longer than {} ms",
                bound.as_millis()
            ),
        )),
    }
}

impl ClientConn {
    /// Starts the task that renews the connection's token before `expires_at`.
    pub(super) fn start_renewal(
        self: &Arc<Self>,
        credentials: SharedCredentials,
        expires_at: SystemTime,
    ) {
        let conn = self.clone();
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = conn.out.closed() => {}
                _ = conn.renew_tokens(&credentials, expires_at) => {}
            }
        });
        self.tasks.lock().push(task.abort_handle());
        self.background.lock().push(task.abort_handle());
    }

    /// Renews the token at about two thirds of its remaining lifetime, again and again. Failures
    /// are retried with backoff until the token expires; then the connection is retired (new
    /// calls go to a new connection, which presents a fresh token).
    async fn renew_tokens(
        self: &Arc<Self>,
        credentials: &SharedCredentials,
        mut expires_at: SystemTime,
    ) {
        loop {
            let left = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left * 2 / 3).await;
            let mut retry = RENEW_RETRY_MIN;
            loop {
                match self.renew_once(credentials, expires_at).await {
                    Ok(Some(next)) => {
                        tracing::debug!(peer = %self.peer, "access token renewed");
                        expires_at = next;
                        break;
                    }
                    // A token that does not expire needs no more renewals.
                    Ok(None) => return,
                    Err(e)
                        if e.kind() == ErrorKind::Unauthorized
                            && e.message() == auth::NO_AUTHENTICATOR =>
                    {
                        tracing::debug!(
                            peer = %self.peer,
                            "the server does not verify tokens; not renewing on this connection"
                        );
                        return;
                    }
                    Err(e) => {
                        let left = expires_at
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        if left.is_zero() {
                            tracing::warn!(
                                peer = %self.peer,
                                error = %e,
                                "the access token expired before it could be renewed; new calls \
                                 will use a new connection"
                            );
                            self.retire(Error::connection_closed(
                                "the connection's access token expired and could not be renewed",
                            ))
                            .await;
                            return;
                        }
                        let wait = retry.min(left);
                        if e.message() == NO_NEWER_TOKEN {
                            // Usual while the credentials' own source has not renewed yet.
                            tracing::debug!(
                                peer = %self.peer,
                                retry_in_ms = wait.as_millis() as u64,
                                "no newer access token yet; retrying"
                            );
                        } else {
                            tracing::warn!(
                                peer = %self.peer,
                                error = %e,
                                retry_in_ms = wait.as_millis() as u64,
                                "renewing the access token failed; retrying"
                            );
                        }
                        tokio::time::sleep(wait).await;
                        retry = (retry * 2).min(RENEW_RETRY_MAX);
                    }
                }
            }
        }
    }

    /// Fetches a new token and presents it on this connection (`stardust.Connection/
    /// authenticate`). Returns its expiry.
    async fn renew_once(
        self: &Arc<Self>,
        credentials: &SharedCredentials,
        current: SystemTime,
    ) -> Result<Option<SystemTime>, Error> {
        let token = fetch_token(credentials, RENEW_TIMEOUT).await?;
        if token.expires_at.is_some_and(|at| at <= current) {
            return Err(Error::new(ErrorKind::Unauthorized, NO_NEWER_TOKEN));
        }
        let head = RequestHead {
            id: 0,
            flags: FLAG_IDEMPOTENT,
            service: CONNECTION_SERVICE,
            method: AUTHENTICATE_METHOD,
            timeout_us: RENEW_TIMEOUT.as_micros() as u64,
            trace_id: 0,
            meta: &NO_METADATA,
        };
        let info = CallInfo {
            name: CallName::Static {
                service: CONNECTION_SERVICE,
                method: AUTHENTICATE_METHOD,
            },
            deadline: Some(Instant::now() + RENEW_TIMEOUT),
            budget: RENEW_TIMEOUT,
            hedge_at: None,
        };
        match self
            .clone()
            .exchange(head, &(token.text.as_str(),), info)
            .await
        {
            Ok(_) => Ok(token.expires_at),
            Err(CallError::Reconnect(e) | CallError::Failed(e)) => {
                Err(auth::redact(e, &token.text))
            }
        }
    }
}
