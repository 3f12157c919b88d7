//! The registry's monitoring HTTP server (`stardust-registry/src/monitor/http.rs`): any bytes
//! on a connection, through the server's own connection handler (hyper's HTTP/1 parser with the
//! server's limits, then routing: the console, `/metrics`, `/healthz`, `/api/...` with
//! percent-decoded service names and query parameters), against a registry that has services to
//! show.
//!
//! Input: the bytes a client sends on one connection. Checks: the server answers with an
//! HTTP/1.x response (or nothing), never with a 500.

use stardust_registry::__fuzz::MonitorHarness;

thread_local! {
    // One registry per process: building it is the costly part, serving a request is not.
    static HARNESS: MonitorHarness = MonitorHarness::new();
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let answer = HARNESS.with(|h| h.exchange(data));
    if answer.is_empty() {
        return;
    }
    assert!(
        answer.starts_with(b"HTTP/1."),
        "not an HTTP response: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
    );
    // The first answer's status (later ones follow bodies of unknown length: HEAD answers
    // announce a length they do not send).
    assert!(
        !answer
            .get(8..)
            .is_some_and(|status| status.starts_with(b" 500")),
        "internal error answering {:?}",
        String::from_utf8_lossy(data)
    );
}
