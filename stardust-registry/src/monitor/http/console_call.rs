//! `POST /console/call`: an admin logged in to the console calls any method of a live service
//! with JSON arguments.
//!
//! The registry mints a short-lived token ([`CALL_TOKEN_TTL`]) for the admin's app, bound to a
//! fresh proof key (a captured token is useless without it), connects straight to a live
//! instance of the service (or the endpoint asked for, if it is one of them) and makes a
//! dynamic call under a new sampled W3C trace. The answer is `{ok: true, result, latency_ms,
//! endpoint, trace_id}`, or `{ok: false, error: {kind, message}}` (with `latency_ms`, `endpoint`
//! and `trace_id` once the call was made); a method's typed error (`Err(e)` of a
//! `Result<T, E>`) is `kind: "application"` with `e` as JSON in `error.value`. Arguments are
//! never logged.

use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json as j};
use stardust::auth::{ProofKey, StaticToken};

use super::console_login::{authorized, check_origin_and_type, read_body};
use super::{Ctx, Reply, error, json};
use crate::json::{BytesOut, args_to_msgpack, from_msgpack};

/// How long the token minted for one console call is valid.
pub(crate) const CALL_TOKEN_TTL: Duration = Duration::from_secs(60);
/// The connection and the call each must finish within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct CallRequest {
    service: String,
    method: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    endpoint: Option<String>,
}

/// `POST /console/call` (JSON body: `service`, `method`, `args`, optional `endpoint`).
pub(super) async fn call(ctx: &Ctx, req: Request<Incoming>) -> Reply {
    if let Some(refused) = check_origin_and_type(req.headers(), "application/json") {
        return refused;
    }
    let (_, session) = match authorized(ctx, req.headers()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let asked: CallRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("malformed call: {e}")),
    };
    let args = match &asked.args {
        Value::Null => Value::Array(Vec::new()),
        a => a.clone(),
    };
    let body = match args_to_msgpack(&args) {
        Ok(b) => b,
        Err(e) => return failed("arguments", &format!("args: {e}")),
    };
    // A live instance: the one asked for, if it is one.
    let instances: Vec<(String, String, bool)> = {
        let snap = ctx.inner.registry.monitor().snapshot(false);
        snap.services
            .get(&asked.service)
            .map(|e| {
                e.instances
                    .values()
                    .map(|s| {
                        let i = &s.instance;
                        (i.endpoint.clone(), i.version.clone(), i.tls)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let chosen = match &asked.endpoint {
        Some(ep) if !ep.is_empty() => instances.iter().find(|(e, _, _)| e == ep),
        _ => instances
            .iter()
            .find(|(_, _, tls)| !tls)
            .or(instances.first()),
    };
    let Some((endpoint, version, tls)) = chosen.cloned() else {
        return failed(
            "no_instance",
            &match &asked.endpoint {
                Some(ep) if !ep.is_empty() => {
                    format!("{ep} is not a live instance of {}", asked.service)
                }
                _ => format!("{} has no live instance", asked.service),
            },
        );
    };
    if tls {
        return failed(
            "unsupported",
            "instances serving TLS cannot be called from the console yet",
        );
    }
    // What the description says of the method: idempotent, and whether it returns a Result.
    let described = ctx
        .inner
        .registry
        .describe(&asked.service)
        .into_iter()
        .filter(|v| v.version == version)
        .chain(ctx.inner.registry.describe(&asked.service))
        .filter_map(|v| v.description)
        .find_map(|d| d.methods.into_iter().find(|m| m.name == asked.method));
    let idempotent = described.as_ref().is_some_and(|m| m.idempotent);
    let returns_result = described.as_ref().is_some_and(|m| is_result(&m.returns));

    let key = match ProofKey::generate() {
        Ok(k) => k,
        Err(e) => return failed("internal", &e.to_string()),
    };
    let token = ctx
        .inner
        .registry
        .mint_bound(&session.app, key.public_key(), CALL_TOKEN_TTL);
    tracing::info!(app = ?session.app, service = ?asked.service, method = ?asked.method,
        endpoint = ?endpoint, "console: admin call");
    let connect = stardust::Client::builder()
        .credentials(StaticToken(token))
        .proof_key(key)
        .timeout(CALL_TIMEOUT)
        .connect(endpoint.as_str());
    let client = match tokio::time::timeout(CALL_TIMEOUT, connect).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return failed(&format!("{:?}", e.kind()), &e.to_string()),
        Err(_) => return failed("timeout", &format!("cannot connect to {endpoint}")),
    };
    // The call starts a sampled trace of its own, shown with the answer so the operator can
    // follow it into the trace UI (the provider continues it).
    let (trace_id, traceparent) = new_trace();
    let client = client.with_metadata("traceparent", traceparent);
    let start = Instant::now();
    let reply = tokio::time::timeout(
        CALL_TIMEOUT,
        client.call_dynamic(&asked.service, &asked.method, &body, idempotent),
    )
    .await;
    let latency_ms = (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let reply = match reply {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return json(
                StatusCode::OK,
                &j!({"ok": false, "error": {"kind": format!("{:?}", e.kind()), "message": e.to_string()},
                     "latency_ms": latency_ms, "endpoint": endpoint, "trace_id": trace_id}),
            );
        }
        Err(_) => return failed("timeout", "the call did not finish in time"),
    };
    let value = match from_msgpack(&reply, BytesOut::Base64) {
        Ok(v) => v,
        Err(e) => return failed("reply", &format!("the reply cannot be shown as JSON: {e}")),
    };
    match unwrap_result(value, returns_result) {
        Ok(result) => json(
            StatusCode::OK,
            &j!({"ok": true, "result": result, "latency_ms": latency_ms, "endpoint": endpoint,
                 "trace_id": trace_id}),
        ),
        Err(e) => json(
            StatusCode::OK,
            &j!({"ok": false, "error": {"kind": "application", "message": e.to_string(), "value": e},
                 "latency_ms": latency_ms, "endpoint": endpoint, "trace_id": trace_id}),
        ),
    }
}

/// A new sampled W3C trace: its id (32 hex digits) and the `traceparent` that starts it.
fn new_trace() -> (String, String) {
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        // Not secret, only unique enough: the clock will do.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..].copy_from_slice(&(t as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    // Neither id may be all zeros.
    bytes[0] |= 1;
    bytes[16] |= 1;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (trace, span) = hex.split_at(32);
    (trace.to_owned(), format!("00-{trace}-{span}-01"))
}

/// A call that could not be made or failed in the framework.
fn failed(kind: &str, message: &str) -> Reply {
    json(
        StatusCode::OK,
        &j!({"ok": false, "error": {"kind": kind, "message": message}}),
    )
}

/// The type as written is a `Result<..>` (also spelt with its path, `std::result::Result<..>`).
fn is_result(ty: &str) -> bool {
    let head = ty.split('<').next().unwrap_or("").trim();
    head.rsplit("::")
        .next()
        .is_some_and(|last| last.trim() == "Result")
        && ty.contains('<')
}

/// `{"Ok": v}` / `{"Err": e}` of a method returning a `Result`.
fn unwrap_result(value: Value, is_result: bool) -> Result<Value, Value> {
    if !is_result {
        return Ok(value);
    }
    match value {
        Value::Object(mut map) if map.len() == 1 => {
            if let Some(v) = map.remove("Ok") {
                Ok(v)
            } else if let Some(e) = map.remove("Err") {
                Err(e)
            } else {
                Ok(Value::Object(map))
            }
        }
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_recognised_and_unwrapped() {
        assert!(is_result("Result<i64, DivError>"));
        assert!(is_result("std::result::Result<(), E>"));
        assert!(!is_result("i64"));
        assert!(!is_result("MyResult<i64>"));
        assert_eq!(unwrap_result(j!({"Ok": 5}), true), Ok(j!(5)));
        assert_eq!(
            unwrap_result(j!({"Err": "DivideByZero"}), true),
            Err(j!("DivideByZero"))
        );
        assert_eq!(unwrap_result(j!({"Ok": 5}), false), Ok(j!({"Ok": 5})));
    }
}
