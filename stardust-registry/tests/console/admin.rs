//! The console's admin side in a real browser: signatures for everyone, the call form only for
//! an admin logged in through the page (a non-admin app is refused), and a call made from it,
//! whose trace the page links to the configured trace UI, in the answer and in the instance's
//! row once the provider reports it as an exemplar.

use std::time::Duration;

use stardust::{Server, Stardust};
use stardust_registry::{AppConfig, Config};

use super::chromium::{Browser, find_chromium};
use super::common::*;

const ADDER: &str = "test.Adder";

/// A small service to call from the console.
#[stardust::service(name = "test.Adder", version = "1.0.0")]
pub trait Adder {
    /// `a + b`.
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct AdderImpl;

impl Adder for AdderImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

/// Sets an input's value in the page.
fn set(id: &str, value: &str) -> String {
    format!(
        "document.getElementById('{id}').value = {}",
        serde_json::Value::from(value)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_log_in_and_call_methods_from_the_console() {
    let Some(chromium) = find_chromium() else {
        return;
    };
    let admin = AppConfig::with_secret("ops-secret")
        .unwrap()
        .roles(["admin"]);
    let web = AppConfig::with_secret("web-secret").unwrap();
    let config = Config::dev()
        .with_trace_url("http://traces.example/trace/{trace_id}?from=stardust")
        .with_lease_ttl(Duration::from_secs(3600))
        .with_app("ops", admin)
        .with_app("web", web);
    let (node, http) = start_monitored(config).await;
    let star = Stardust::builder()
        .registry(node.local_addr().to_string())
        .app("adder", "adder-secret")
        // Reports (and so exemplars) every 100 ms.
        .heartbeat(Duration::from_millis(100))
        .connect()
        .await
        .expect("the provider logs in");
    let provider = star
        .serve(
            Server::builder().serve(AdderServer::new(AdderImpl)),
            "127.0.0.1:0",
        )
        .await
        .expect("the provider registers");

    let browser = Browser::launch(&chromium).await;
    let mut page = browser.page().await;
    page.navigate(&format!("http://{http}/")).await;

    // Without a session: the signature shows, the call form does not.
    let card = format!("document.querySelector('[data-service=\"{ADDER}\"]')");
    page.wait_for(
        "add's signature in the Methods list",
        &format!(
            "[...({card}?.querySelectorAll('[data-field=\"signature\"]') ?? [])]\
             .some(e => e.textContent === 'add(a: i64, b: i64) -> i64')"
        ),
    )
    .await;
    let hidden = "document.getElementById('call-panel').hidden \
                  && !document.querySelector('[data-call-method]') \
                  && !document.getElementById('login-box').hidden";
    assert_eq!(page.eval(hidden).await, "true");

    // A non-admin app: refused, the form stays hidden.
    page.eval(&set("login-app", "web")).await;
    page.eval(&set("login-secret", "web-secret")).await;
    page.eval("document.getElementById('login-form').requestSubmit()")
        .await;
    page.wait_for(
        "the non-admin login refused",
        "document.getElementById('login-error').dataset.status === '403'",
    )
    .await;
    assert_eq!(page.eval(hidden).await, "true");
    assert_eq!(page.eval("document.cookie").await, "");

    // The admin logs in through the form.
    page.eval(&set("login-app", "ops")).await;
    page.eval(&set("login-secret", "ops-secret")).await;
    page.eval("document.getElementById('login-form').requestSubmit()")
        .await;
    page.wait_for(
        "the call form",
        "!document.getElementById('call-panel').hidden \
         && !!document.querySelector('[data-call-method=\"add\"]')",
    )
    .await;
    // The session cookie is HttpOnly: the page's script cannot read it.
    assert_eq!(page.eval("document.cookie").await, "");

    // `add` from its row's button, with [2, 3].
    page.eval("document.querySelector('[data-call-method=\"add\"]').click()")
        .await;
    assert_eq!(
        page.eval("document.getElementById('call-service').value + ' ' + document.getElementById('call-method').value")
            .await,
        format!("{ADDER} add")
    );
    page.eval(&set("call-args", "[2, 3]")).await;
    page.eval("document.getElementById('call-form').requestSubmit()")
        .await;
    page.wait_for(
        "5 and a latency",
        "document.getElementById('call-result').textContent === '5' \
         && / ms/.test(document.getElementById('call-latency').textContent)",
    )
    .await;
    // The answer names the call's trace, linked to the trace UI.
    let trace_id = page
        .eval("document.querySelector('#call-latency a.trace')?.dataset.traceId ?? ''")
        .await;
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "no trace link in the answer: {trace_id:?}"
    );
    assert_eq!(
        page.eval("document.querySelector('#call-latency a.trace').getAttribute('href')")
            .await,
        format!("http://traces.example/trace/{trace_id}?from=stardust")
    );
    // The provider served it under that trace: its report makes it the instance's slowest
    // traced call, linked from the instance's row and the method's.
    page.wait_for(
        "the call's trace linked from the instance's row",
        &format!(
            "[...({card}?.querySelectorAll('tr[data-instance] [data-field=\"slowest-trace\"] a') ?? [])]\
             .some(a => a.getAttribute('href') === 'http://traces.example/trace/{trace_id}?from=stardust')"
        ),
    )
    .await;
    assert_eq!(
        page.eval(&format!(
            "{card}.querySelector('tr[data-method=\"add\"] [data-field=\"slowest-trace\"] a').dataset.traceId"
        ))
        .await,
        trace_id
    );

    // Logged out: the form goes.
    page.eval("document.getElementById('logout').click()").await;
    page.wait_for("the form hidden again", hidden).await;

    drop(provider);
    node.shutdown().await;
    browser.close(page).await;
}
