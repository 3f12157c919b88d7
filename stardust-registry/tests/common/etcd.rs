//! A real etcd for the registry's etcd-store tests (`--features etcd`).
//!
//! [`Etcd::start`] hands a test either the shared etcd named by `STARDUST_ETCD` (what `.ci/run`
//! starts and exports) or a private one it starts from the `etcd` binary (Debian's
//! `etcd-server`), and gives each test its own key prefix so tests sharing one etcd never see
//! each other's keys. Without any etcd the test prints `SKIPPED` and passes, unless
//! `STARDUST_REQUIRE_EXTERNAL=1` (CI), where it fails.
//!
//! No etcd client crate (it needs protoc, which the default build must not): the fixture checks
//! health with a hand-written HTTP/1.1 `GET /health`, and sets up authentication through etcd's
//! JSON gateway the same way ([`Etcd::enable_auth`]). A private etcd can also speak TLS with
//! client certificates ([`Etcd::private_tls`]). Part of `common` (it skips
//! through `common::external`).
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long [`Etcd::start`] waits for an etcd to answer healthy. A local etcd 3.4 is healthy
/// in about half a second; the rest is room for a loaded 2-core machine.
const STARTUP_BOUND: Duration = Duration::from_secs(20);

/// How often the fixture polls an etcd (an external process: there is nothing to await).
const POLL: Duration = Duration::from_millis(50);

/// How long one health probe may take before it counts as "not answering yet".
const PROBE_BOUND: Duration = Duration::from_secs(2);

/// Attempts at starting a private etcd: its ports are chosen by binding port 0 and letting go,
/// so another process may take one before etcd binds it (etcd then exits at once).
const SPAWN_ATTEMPTS: usize = 3;

/// Where Debian's `etcd-server` puts the binary, tried after `PATH` (which may not include
/// `/usr/bin` under some test runners).
const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// A reachable etcd for one test: either the shared one named by `STARDUST_ETCD`
/// (comma-separated endpoints like `http://127.0.0.1:2379`; what `.ci/run` exports) or one this
/// fixture started (an `etcd` binary found on `PATH` or at `/usr/bin/etcd`, on OS-chosen
/// loopback ports with a temporary data dir, killed and cleaned up on drop).
///
/// Hold it for the whole test: dropping it stops a private etcd. Keep one per test rather than
/// in a `static`, where it would never be dropped and its etcd would outlive the test binary.
pub struct Etcd {
    /// Client URLs with their scheme, e.g. `http://127.0.0.1:41234`.
    endpoints: Vec<String>,
    /// The etcd this fixture started, if it did (`None` for a shared one).
    child: Option<Child>,
    /// The private etcd's data dir and log, removed after the child is killed (fields drop
    /// after [`Drop::drop`] runs).
    dir: Option<tempfile::TempDir>,
    /// How a private etcd was started, to start it again ([`Etcd::restart`]).
    launch: Option<Launch>,
}

/// One private etcd member: its binary, data dir, ports and log.
#[derive(Clone)]
struct Launch {
    binary: PathBuf,
    data: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` for a member whose client port speaks TLS.
    metrics_port: u16,
    log: PathBuf,
    tls: Option<TlsFiles>,
}

/// PEM files for a TLS etcd: its certificate and key, and the CA its clients' certificates
/// must chain to (it requires one: `--client-cert-auth`).
#[derive(Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
}

impl Launch {
    fn client(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Where `/health` answers in plain HTTP.
    fn health_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    /// Starts the member (stdout and stderr appended to its log).
    fn run(&self, test: &str) -> Child {
        let client = self.client();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name")
            .arg("stardust-test")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("stardust-test={peer}")])
            .args(["--listen-metrics-urls", &self.health_url()])
            // zap: the default capnslog logger prints a deprecation warning at any level.
            .args(["--logger", "zap", "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log));
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca_file)
                .arg("--client-cert-auth");
        }
        // etcd reads any ETCD_<FLAG> variable as a flag; a developer's ETCD_NAME or
        // ETCD_DATA_DIR must not leak in. ETCD_UNSUPPORTED_ARCH is kept: non-amd64/arm64
        // machines need it to start at all.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("ETCD_") && key != "ETCD_UNSUPPORTED_ARCH" {
                command.env_remove(&*key);
            }
        }
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot run {}: {e}", self.binary.display()))
    }
}

impl Etcd {
    /// `None` (after printing a loud `SKIPPED: <test>: no etcd ...` message to stderr saying how
    /// to get one: `apt-get install etcd-server`, or set `STARDUST_ETCD`) when no etcd is
    /// available; panics instead when `STARDUST_REQUIRE_EXTERNAL=1`, so CI cannot pass by
    /// skipping.
    ///
    /// Otherwise waits (bounded, about 20 s) until every endpoint answers `GET /health` with
    /// `{"health":"true"}`, so the test's first request does not race etcd's leader election.
    /// Panics when an etcd that exists does not get there (a `STARDUST_ETCD` that does not
    /// answer, or a binary that will not start): that is a broken setup, not a missing one,
    /// and skipping would hide it.
    pub async fn start(test: &str) -> Option<Etcd> {
        if let Some(named) = std::env::var("STARDUST_ETCD")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            return Some(Self::shared(test, &named).await);
        }
        let Some(binary) = find_etcd() else {
            return missing(
                test,
                &format!(
                    "no etcd (STARDUST_ETCD is unset and there is no `etcd` on PATH or at \
                     {DEBIAN_ETCD}; install Debian's `etcd-server`, e.g. `apt-get install -y \
                     etcd-server`, or set STARDUST_ETCD=http://127.0.0.1:2379 to use a running one)"
                ),
            );
        };
        Some(Self::spawn(test, &binary, None).await)
    }

    /// A private etcd even where `STARDUST_ETCD` names a shared one: for tests that stop and
    /// restart it ([`Etcd::kill`], [`Etcd::restart`]). `None` (loudly), or a panic under
    /// `STARDUST_REQUIRE_EXTERNAL=1`, without an `etcd` binary.
    pub async fn private(test: &str) -> Option<Etcd> {
        let Some(binary) = find_etcd() else {
            return missing(
                test,
                &format!(
                    "no `etcd` binary on PATH or at {DEBIAN_ETCD} (this test starts and stops \
                     its own etcd; install Debian's `etcd-server`, e.g. `apt-get install -y \
                     etcd-server`)"
                ),
            );
        };
        Some(Self::spawn(test, &binary, None).await)
    }

    /// A private etcd whose client port speaks TLS with `tls` and requires client certificates
    /// (endpoints `https://...`; [`store_url`](Self::store_url) gives `etcds://...`).
    pub async fn private_tls(test: &str, tls: TlsFiles) -> Option<Etcd> {
        let Some(binary) = find_etcd() else {
            return missing(
                test,
                &format!(
                    "no `etcd` binary on PATH or at {DEBIAN_ETCD} (this test starts its own TLS \
                     etcd; install Debian's `etcd-server`, e.g. `apt-get install -y etcd-server`)"
                ),
            );
        };
        Some(Self::spawn(test, &binary, Some(tls)).await)
    }

    /// Turns on authentication in a private plaintext etcd: a `root` user (etcd requires one)
    /// and `user` with `password`, whose role may read and write only under `prefix` + `/`.
    /// Through etcd's JSON gateway, before anyone authenticates.
    pub async fn enable_auth(&self, user: &str, password: &str, prefix: &str) {
        let endpoint = &self.endpoints[0];
        assert!(
            endpoint.starts_with("http://"),
            "auth set-up needs a plaintext etcd"
        );
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        // The role covers `prefix/` up to (not including) `prefix0`: '0' follows '/'.
        let (key, range_end) = (b64(&format!("{prefix}/")), b64(&format!("{prefix}0")));
        let steps = [
            ("/v3/auth/role/add", r#"{"name":"root"}"#.to_owned()),
            (
                "/v3/auth/user/add",
                r#"{"name":"root","password":"stardust-test-root"}"#.to_owned(),
            ),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_owned(),
            ),
            (
                "/v3/auth/role/add",
                r#"{"name":"stardust-registry"}"#.to_owned(),
            ),
            (
                "/v3/auth/role/grant",
                format!(
                    r#"{{"name":"stardust-registry","perm":{{"permType":"READWRITE","key":"{key}","range_end":"{range_end}"}}}}"#
                ),
            ),
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"{user}","password":"{password}"}}"#),
            ),
            (
                "/v3/auth/user/grant",
                format!(r#"{{"user":"{user}","role":"stardust-registry"}}"#),
            ),
            ("/v3/auth/enable", "{}".to_owned()),
        ];
        for (path, body) in steps {
            let (status, reply) = http(endpoint, "POST", path, &body)
                .await
                .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
            assert_eq!(status, 200, "etcd {path} {body}: {reply}");
        }
    }

    /// Kills a private etcd at once (SIGKILL: a crash, no goodbye to its clients).
    pub fn kill(&mut self) {
        let child = self
            .child
            .as_mut()
            .expect("only a private etcd can be killed");
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
    }

    /// Starts a killed private etcd again on the same ports and data dir (its keys and leases
    /// come back), once it is healthy.
    pub async fn restart(&mut self, test: &str) {
        assert!(
            self.child.is_none(),
            "{test}: kill the etcd before restarting it"
        );
        let launch = self
            .launch
            .clone()
            .expect("only a private etcd can be restarted");
        let deadline = Instant::now() + STARTUP_BOUND;
        let mut child = launch.run(test);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{test}: the restarted etcd exited ({status}); its log ends with:\n{}",
                    tail(&launch.log)
                );
            }
            if health(&launch.health_url()).await.is_ok() {
                self.child = Some(child);
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{test}: the restarted etcd not healthy after {STARTUP_BOUND:?}; its log \
                     ends with:\n{}",
                    tail(&launch.log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Client endpoints with their scheme, e.g. `["http://127.0.0.1:41234"]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// A key prefix unique to this test, process and call, e.g.
    /// `stardust-test/leases_expire-4242-0-1764115694123456789`: tests sharing one etcd (CI
    /// runs all of them against one) never see each other's keys, nor keys left by an earlier
    /// run. The test name is reduced to `[A-Za-z0-9_-]` (`::` and the like become `-`) so the
    /// prefix is safe in a store URL's path. No trailing `/`.
    pub fn prefix(&self, test: &str) -> String {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("stardust-test/{name}-{}-{n}-{nanos}", std::process::id())
    }

    /// A store URL for the registry, `etcd://<host:port>[,<host:port>...]/<prefix>`: the
    /// endpoints without their `http://` scheme, joined by commas, then `/` and a fresh
    /// [`prefix`](Self::prefix) (each call gives a new one).
    pub fn store_url(&self, test: &str) -> String {
        let hosts: Vec<&str> = self.endpoints.iter().map(|e| host_port(e)).collect();
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let scheme = if tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}/{}", hosts.join(","), self.prefix(test))
    }

    /// The etcd named by `STARDUST_ETCD`, once every endpoint is healthy.
    async fn shared(test: &str, named: &str) -> Etcd {
        let endpoints: Vec<String> = named
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.trim_end_matches('/').to_string()
                } else {
                    format!("http://{}", e.trim_end_matches('/'))
                }
            })
            .collect();
        for endpoint in &endpoints {
            assert!(
                endpoint.starts_with("http://"),
                "{test}: STARDUST_ETCD={named}: only plain http:// endpoints are supported, \
                 not {endpoint}"
            );
        }
        let deadline = Instant::now() + STARTUP_BOUND;
        for endpoint in &endpoints {
            loop {
                match health(endpoint).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => panic!(
                        "{test}: STARDUST_ETCD={named}: {endpoint} not healthy after \
                         {STARTUP_BOUND:?}: {e}"
                    ),
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        Etcd {
            endpoints,
            child: None,
            dir: None,
            launch: None,
        }
    }

    /// A private single-member etcd on fresh loopback ports, once it is healthy.
    async fn spawn(test: &str, binary: &Path, tls: Option<TlsFiles>) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("stardust-etcd-")
            .tempdir()
            .expect("temporary dir for etcd");
        let log = dir.path().join("etcd.log");
        let deadline = Instant::now() + STARTUP_BOUND;
        let mut failures = Vec::new();
        for attempt in 1..=SPAWN_ATTEMPTS {
            let [client_port, peer_port, metrics_port] = free_ports();
            let launch = Launch {
                binary: binary.to_owned(),
                // A fresh data dir per attempt: a half-started member leaves its cluster ID
                // behind.
                data: dir.path().join(format!("data-{attempt}")),
                client_port,
                peer_port,
                metrics_port,
                log: log.clone(),
                tls: tls.clone(),
            };
            let client = launch.client();
            let mut child = launch.run(test);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // Most likely one of its ports was taken meanwhile: try new ones.
                    failures.push(format!("attempt {attempt}: etcd exited early ({status})"));
                    break;
                }
                if health(&launch.health_url()).await.is_ok() {
                    return Etcd {
                        endpoints: vec![client],
                        child: Some(child),
                        dir: Some(dir),
                        launch: Some(launch),
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{test}: etcd ({}) on {client} not healthy after {STARTUP_BOUND:?}; \
                         its log ends with:\n{}",
                        binary.display(),
                        tail(&log)
                    );
                }
                tokio::time::sleep(POLL).await;
            }
        }
        panic!(
            "{test}: etcd ({}) would not start: {}; its log ends with:\n{}",
            binary.display(),
            failures.join(", "),
            tail(&log)
        );
    }
}

impl Drop for Etcd {
    /// Kills a private etcd and reaps it before its data dir is removed (a shared one is left
    /// alone: its owner stops it).
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// No etcd for `test`: `None` after a loud `SKIPPED` on stderr, or a panic under
/// `STARDUST_REQUIRE_EXTERNAL=1` (CI), so CI cannot pass by skipping.
fn missing(test: &str, why: &str) -> Option<Etcd> {
    super::external::missing(test, why);
    None
}

/// The `etcd` binary: the first on `PATH`, else Debian's [`DEBIAN_ETCD`].
fn find_etcd() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from(DEBIAN_ETCD)).filter(|p| p.is_file()))
}

/// Three distinct loopback ports the OS says are free right now (client, peer, metrics). All
/// listeners are held until every port is known so they differ; etcd binds them a moment later
/// (the race that [`SPAWN_ATTEMPTS`] covers).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    let port = |i: usize| listeners[i].local_addr().expect("local address").port();
    [port(0), port(1), port(2)]
}

/// The etcd's log, appended to by each start attempt (stdout and stderr alike).
fn log_file(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("etcd log file")
}

/// The last lines of the etcd's log, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `host:port` of an endpoint: `http://127.0.0.1:2379` gives `127.0.0.1:2379`.
fn host_port(endpoint: &str) -> &str {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// `Ok` when the etcd at `endpoint` answers `GET /health` with 200 and `"health":"true"`
/// (etcd 3.4 says `{"health":"false"}` with a 503 while it has no leader); the reason otherwise.
async fn health(endpoint: &str) -> Result<(), String> {
    let (status, body) = http(endpoint, "GET", "/health", "").await?;
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    if status == 200 && compact.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!("{status}: {}", body.trim()))
    }
}

/// One plain HTTP/1.1 request to the etcd at `endpoint`: its status code and body.
async fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let addr = host_port(endpoint);
    let probe = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(PROBE_BOUND, probe)
        .await
        .map_err(|_| format!("no answer from {addr} within {PROBE_BOUND:?}"))??;
    let status = response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}
