//! The registry's own login counters, read from its `/metrics` (Prometheus text format) over a
//! plain HTTP/1.0 request: two families are all the bench needs, not an HTTP client crate.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long reading `/metrics` may take.
const BOUND: Duration = Duration::from_secs(5);

/// What the registry counted since it (re)started.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginCounters {
    /// `stardust_registry_resumes_total{outcome="resumed"}`.
    pub resumed: u64,
    /// `stardust_registry_resumes_total{outcome="refused"}`.
    pub resume_refused: u64,
    /// `stardust_registry_logins_total{outcome="succeeded"}`: logins with the secret.
    pub logins: u64,
}

/// Reads the counters from the monitoring server at `http`.
pub async fn login_counters(http: SocketAddr) -> Result<LoginCounters, String> {
    let body = tokio::time::timeout(BOUND, get(http, "/metrics"))
        .await
        .map_err(|_| format!("GET /metrics: no answer within {} s", BOUND.as_secs()))??;
    Ok(LoginCounters {
        resumed: sample(
            &body,
            r#"stardust_registry_resumes_total{outcome="resumed"}"#,
        )?,
        resume_refused: sample(
            &body,
            r#"stardust_registry_resumes_total{outcome="refused"}"#,
        )?,
        logins: sample(
            &body,
            r#"stardust_registry_logins_total{outcome="succeeded"}"#,
        )?,
    })
}

/// The body of `GET path`, which must answer 200. HTTP/1.0, so the answer is neither chunked
/// nor kept alive: it ends where the connection does.
async fn get(http: SocketAddr, path: &str) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("GET {path}: {e}");
    let mut conn = TcpStream::connect(http).await.map_err(fail)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.map_err(fail)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no end of headers in the answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("GET {path}: {status}"));
    }
    Ok(body.to_owned())
}

/// The value of the sample named `series` (name and labels, exactly as the registry writes
/// them).
fn sample(body: &str, series: &str) -> Result<u64, String> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .ok_or_else(|| format!("/metrics has no {series}"))
}
