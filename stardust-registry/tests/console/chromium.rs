//! Headless Chromium for `tests/console.rs`, driven over the DevTools protocol (a websocket):
//! finding the binary (or skipping loudly), launching it with a throwaway profile, and a page to
//! navigate, evaluate scripts in and screenshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::common;
use crate::common::*;

/// Chromium's binary, or `None` after saying why the test is skipped (a failure under
/// `STARDUST_REQUIRE_EXTERNAL=1`).
pub fn find_chromium() -> Option<PathBuf> {
    let named = std::env::var_os("STARDUST_CHROMIUM").map(PathBuf::from);
    let found = named.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find_map(|dir| {
            ["chromium", "chromium-browser"]
                .iter()
                .map(|name| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        let why = "chromium not found (install Debian's `chromium`, e.g. `apt-get install -y \
                   chromium`, or set STARDUST_CHROMIUM)";
        common::external::missing("the console's browser test", why);
    }
    found
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with a throwaway profile; killed when dropped.
pub struct Browser {
    pub child: Child,
    pub ws_url: String,
    pub profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch(binary: &Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut browser = Browser {
            child,
            ws_url: String::new(),
            profile,
        };
        // Chromium writes its DevTools port and path here once it listens.
        let port_file = browser.profile.path().join("DevToolsActivePort");
        let found = tokio::time::timeout(BOUND, async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&port_file) {
                    let mut lines = text.lines();
                    if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                        return format!("ws://127.0.0.1:{port}{path}");
                    }
                }
                if let Ok(Some(status)) = browser.child.try_wait() {
                    return format!("exited: {status}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match found {
            Ok(url) if url.starts_with("ws://") => browser.ws_url = url,
            other => {
                let log = std::fs::read_to_string(browser.profile.path().join("chromium.log"))
                    .unwrap_or_default();
                panic!("chromium did not start ({other:?}); its log:\n{log}");
            }
        }
        browser
    }

    /// A fresh tab, 1440 px wide, in dark mode.
    pub async fn page(&self) -> Page {
        let (ws, _) = within(
            "the DevTools websocket",
            tokio_tungstenite::connect_async(&self.ws_url),
        )
        .await
        .expect("DevTools websocket");
        let mut page = Page {
            ws,
            next_id: 0,
            session: None,
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        page.call("Page.enable", json!({})).await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .await;
        page
    }

    pub async fn close(mut self, mut page: Page) {
        page.session = None;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            page.call("Browser.close", json!({})),
        )
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(None) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One tab, over the browser's websocket (a flattened session).
pub struct Page {
    pub ws: Ws,
    pub next_id: u64,
    pub session: Option<String>,
}

impl Page {
    /// Sends a command and returns its result (events on the way are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let ws = &mut self.ws;
        within(&format!("DevTools {method}"), async {
            ws.send(Message::text(msg.to_string())).await.unwrap();
            loop {
                let frame = ws.next().await.expect("DevTools closed").unwrap();
                let Message::Text(text) = frame else { continue };
                let reply: Value = serde_json::from_str(text.as_str()).unwrap();
                if reply["id"] == id {
                    if let Some(e) = reply.get("error") {
                        panic!("DevTools {method} failed: {e}");
                    }
                    return reply["result"].clone();
                }
            }
        })
        .await
    }

    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Evaluates `expression` in the page; its value as a string (JSON for non-strings).
    pub async fn eval(&mut self, expression: &str) -> String {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        match &r["result"]["value"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    /// Polls `condition` (a JS expression) until it is true, bounded.
    pub async fn wait_for(&mut self, what: &str, condition: &str) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if self.eval(&format!("!!({condition})")).await == "true" {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval("document.querySelector('main')?.innerText ?? document.body.innerText")
                    .await;
                panic!("timed out after {BOUND:?} waiting for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(900.0)
            .clamp(600.0, 2400.0);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1440, "height": height as u64, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}
