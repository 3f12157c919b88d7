//! Admin logins to the console, and the only requests that change anything: `POST
//! /console/login`, `/console/call` and `/console/logout` (everything else stays GET/HEAD,
//! read-only and unauthenticated).
//!
//! - A login checks the app's secret exactly like a registry login ([`RegistryState::check_secret`]:
//!   the same throttle and limits, argon2 on the blocking pool behind the same hash permits),
//!   and then admits only apps with the admin role. A throttled login answers `429` with
//!   `Retry-After`. Secrets are never logged.
//! - A session is a random 128-bit id in a cookie (`HttpOnly; SameSite=Strict; Path=/`), kept in
//!   a bounded table ([`MAX_SESSIONS`], the oldest goes first) for at most [`SESSION_TTL`].
//!   Each session has its own random CSRF token, given to the page in the login answer (and by
//!   `GET /console/session`); every state-changing request must send it in `X-CSRF-Token`
//!   (compared in constant time): without it, `403`.
//! - Request bodies are bounded ([`MAX_BODY`]: `413`), their content type checked (`415`), and a
//!   request whose `Origin` is not the server's own is refused.
//! - The config's `trace_url` (or `STARDUST_TRACE_URL`), e.g.
//!   `https://jaeger.example/trace/{trace_id}`, is the template the console applies where it
//!   shows a trace id (given to the page by `GET /console/session` as `trace_url`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use parking_lot::Mutex;
use stardust::discovery::api::RegistryError;

use super::{Ctx, Reply, error, json, percent_decode};

/// Console sessions kept at once (over every registry node of the process); beyond, the oldest
/// is dropped.
pub(crate) const MAX_SESSIONS: usize = 64;
/// A session lasts this long after its login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// The largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// The session cookie's name.
pub(crate) const COOKIE: &str = "stardust_console";
/// The header carrying the session's CSRF token.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// One admin logged in to the console.
#[derive(Clone)]
pub(super) struct Session {
    /// The node it logged in to (the table is per process; a session is only valid there).
    node: String,
    pub(super) app: String,
    csrf: String,
    expires: Instant,
}

static SESSIONS: LazyLock<Mutex<HashMap<String, Session>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// 128 random bits, as hex.
fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS has randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal, in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session named by the request's cookie, if it is live and this node's.
pub(super) fn session_of(ctx: &Ctx, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())?;
    let mut table = SESSIONS.lock();
    let now = Instant::now();
    table.retain(|_, s| s.expires > now);
    let s = table.get(&id)?;
    (s.node == ctx.inner.node).then(|| (id.clone(), s.clone()))
}

/// `GET /console/session`: who is logged in (and the CSRF token), or `admin: null`.
pub(super) fn session_info(ctx: &Ctx, headers: &HeaderMap) -> Reply {
    let trace_url = ctx.inner.trace_url.as_deref();
    match session_of(ctx, headers) {
        Some((_, s)) => json(
            StatusCode::OK,
            &serde_json::json!({"admin": s.app, "csrf": s.csrf, "trace_url": trace_url}),
        ),
        None => json(
            StatusCode::OK,
            &serde_json::json!({"admin": null, "trace_url": trace_url}),
        ),
    }
}

/// Refuses a POST the console's page could not have sent: another origin, or a wrong type.
pub(super) fn check_origin_and_type(headers: &HeaderMap, content_type: &str) -> Option<Reply> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://").or(o.strip_prefix("https://")));
        if host.is_none() || origin_host != host {
            return Some(error(
                StatusCode::FORBIDDEN,
                "cross-origin requests are refused",
            ));
        }
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if given.as_deref() != Some(content_type) {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("the body must be {content_type}"),
        ));
    }
    None
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is limited to {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "cannot read the body")),
    }
}

/// The session of a state-changing request with its CSRF token, or the refusal (`403` without
/// or with a wrong token, `401` without a session).
// The refusal is the reply itself, built once per refused request: no need to box it.
#[allow(clippy::result_large_err)]
pub(super) fn authorized(ctx: &Ctx, headers: &HeaderMap) -> Result<(String, Session), Reply> {
    let Some(token) = headers.get(CSRF_HEADER) else {
        return Err(error(StatusCode::FORBIDDEN, "missing X-CSRF-Token header"));
    };
    let Some((id, session)) = session_of(ctx, headers) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "log in to the console first (admin apps only)",
        ));
    };
    if !constant_time_eq(token.as_bytes(), session.csrf.as_bytes()) {
        return Err(error(StatusCode::FORBIDDEN, "wrong X-CSRF-Token"));
    }
    Ok((id, session))
}

/// Decodes an `application/x-www-form-urlencoded` field.
fn form_field(body: &str, key: &str) -> Option<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| percent_decode(&v.replace('+', " ")))
}

/// `POST /console/login` (form fields `app`, `secret`).
pub(super) async fn login(ctx: &Ctx, req: Request<Incoming>, peer: SocketAddr) -> Reply {
    if let Some(refused) = check_origin_and_type(req.headers(), "application/x-www-form-urlencoded")
    {
        return refused;
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let body = String::from_utf8_lossy(&body);
    let (Some(app), Some(secret)) = (form_field(&body, "app"), form_field(&body, "secret")) else {
        return error(StatusCode::BAD_REQUEST, "the form needs app and secret");
    };
    let registry = &ctx.inner.registry;
    match registry.check_secret(app.clone(), secret, peer).await {
        Ok(()) => {}
        Err(RegistryError::Throttled {
            message,
            retry_after_ms,
        }) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, &message);
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Err(RegistryError::Unauthorized(m)) => {
            // The name is the peer's: bounded in the log, like registry logins'.
            let shown = if app.len() <= 64 {
                app.as_str()
            } else {
                "<oversized>"
            };
            tracing::info!(app = ?shown, %peer, "console login refused: wrong credentials");
            return error(StatusCode::UNAUTHORIZED, &m);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
    if !registry.is_admin(&app) {
        tracing::info!(app = ?app, %peer, "console login refused: not an admin app");
        return error(
            StatusCode::FORBIDDEN,
            "only apps with the admin role may log in to the console",
        );
    }
    let (id, csrf) = (random_id(), random_id());
    {
        let mut table = SESSIONS.lock();
        let now = Instant::now();
        table.retain(|_, s| s.expires > now);
        while table.len() >= MAX_SESSIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => table.remove(&k),
                None => break,
            };
        }
        table.insert(
            id.clone(),
            Session {
                node: ctx.inner.node.clone(),
                app: app.clone(),
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
    }
    tracing::info!(app = ?app, %peer, "console: admin logged in");
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({"admin": app, "csrf": csrf, "expires_in_ms": SESSION_TTL.as_millis() as u64}),
    );
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /console/logout`.
pub(super) fn logout(ctx: &Ctx, headers: &HeaderMap) -> Reply {
    if let Some(refused) = check_origin_and_type_any(headers) {
        return refused;
    }
    let (id, session) = match authorized(ctx, headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    SESSIONS.lock().remove(&id);
    tracing::info!(app = ?session.app, "console: admin logged out");
    let mut r = json(StatusCode::OK, &serde_json::json!({"admin": null}));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("stardust_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// The origin check alone (a logout has no body to type).
fn check_origin_and_type_any(headers: &HeaderMap) -> Option<Reply> {
    let mut h = headers.clone();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    check_origin_and_type(&h, "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
        assert_eq!(
            form_field("app=ops&secret=a+b%26c", "secret").as_deref(),
            Some("a b&c")
        );
        assert_eq!(form_field("app=ops", "secret"), None);
    }
}
