//! The registry under test, in a process of its own: this bench binary run again with
//! [`ROLE_ENV`] set, hosting `stardust_registry::RegistryNode` with a config file the parent
//! wrote. Its memory and CPU are then the registry's alone, read from `/proc/<pid>`.
//!
//! The restart phase kills it (SIGKILL, a crash) and starts it again on the same port with the
//! same config and key file, so tokens issued before the crash still verify afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stardust_registry::{Config, RegistryNode};

use crate::procfs::Pid;

/// Set (to "registry") in the child process.
pub const ROLE_ENV: &str = "STARDUST_DISCOVERY_ROLE";
/// The config file the child runs with.
const CONFIG_ENV: &str = "STARDUST_DISCOVERY_CONFIG";
/// The port the child listens on (a restart's: the one its predecessor had); unset, any.
const PORT_ENV: &str = "STARDUST_DISCOVERY_PORT";

/// Apps the load generator logs in as: providers register, subscribers (and the final check)
/// discover.
pub const PROVIDER_APP: &str = "bench-provider";
pub const CONSUMER_APP: &str = "bench-consumer";
/// Both apps' secret.
pub const SECRET: &str = "bench-secret";

/// argon2id of [`SECRET`] with the cheapest parameters argon2 allows (m=8 KiB, t=1, p=1) and a
/// fixed salt, made once with the `argon2` crate and pasted here. This bench measures
/// discovery, not secret checking: with the default parameters (19 MiB, t=2) 2,000 logins
/// would take a minute of the registry's two CPUs before anything is measured. Checked against
/// [`SECRET`] at start-up, so a wrong paste fails at once.
const CHEAP_HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$c3RhcmR1c3QtYmVuY2gxNQ$cJvD4xwrM9MXlI3jQVy2kla8JgYJzdItWfPRBsgrNpU";

/// The registry's lease TTL: its default, written into the config so the run says what it ran
/// with.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How long the child may take to start listening.
const START_BOUND: Duration = Duration::from_secs(30);
/// How long a restarted child keeps trying to bind its predecessor's port. Binding is expected
/// to work at once (the listener sets `SO_REUSEADDR`, so the dead registry's connections in
/// `TIME_WAIT` are no obstacle); this rides out the unlikely rest: its own monitoring listener,
/// bound first to a free port, drawing that very port, or a reconnecting client's socket
/// holding it for a moment.
const REBIND_BOUND: Duration = Duration::from_secs(5);

/// The registry's config: everything default (memory store, lease TTL 10 s, server limits)
/// except the two apps and login throttling, which would otherwise refuse most of 2,000
/// sessions logging in at once from one address (five logins per app and address are checked at
/// once, at most 20 start at once per address). The key file (next to the config) keeps the
/// signing keys across the restart phase, so sessions can resume with their tokens; monitoring
/// over HTTP on a free port is where the parent reads the registry's login counters.
fn config_toml() -> String {
    format!(
        r#"# Written by benches/discovery.rs for one run.
key_file = "keys.toml"
http_listen = "127.0.0.1:0"
lease_ttl = "{lease_ttl}s"
store = "memory"

[apps.{PROVIDER_APP}]
secret_hash = "{CHEAP_HASH}"
provide = ["*"]

[apps.{CONSUMER_APP}]
secret_hash = "{CHEAP_HASH}"

[login_throttle]
# Also the number of logins per app and address checked at once.
free_failures = 100000
attempt_burst = 100000
attempts_per_second = 100000.0
max_queued = 8192
queue_timeout = "60s"

[limits]
# A session registers its share of the instances (10 at the default sizes); the knobs can
# make shares much larger.
max_registrations = 1000000
"#,
        lease_ttl = LEASE_TTL.as_secs()
    )
}

/// The child's side: serve until the parent closes stdin (or dies), then exit at once. Prints
/// `<port> <http port>` once listening.
pub fn registry_main() -> ! {
    let die = |msg: String| -> ! {
        eprintln!("discovery bench registry: {msg}");
        std::process::exit(1);
    };
    let path = std::env::var(CONFIG_ENV).unwrap_or_else(|_| die(format!("{CONFIG_ENV} unset")));
    let config = Config::load(&path).unwrap_or_else(|e| die(e.to_string()));
    let port: u16 = match std::env::var(PORT_ENV) {
        Ok(p) => p.parse().unwrap_or_else(|_| die(format!("{PORT_ENV}={p}"))),
        Err(_) => 0,
    };
    // Like `stardust-registry serve`: a multi-threaded runtime with a worker per CPU.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("cannot build the runtime: {e}")));
    let node = rt
        .block_on(bind(config, port))
        .unwrap_or_else(|e| die(format!("cannot start: {e}")));
    let http = node.http_addr().map_or(0, |a| a.port());
    println!("{} {http}", node.local_addr().port());
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    // No graceful shutdown: ending 2,000 sessions one by one would only slow the run down.
    std::process::exit(0);
}

/// Starts the node on `port` (0: any), retrying a given port for [`REBIND_BOUND`].
async fn bind(config: Config, port: u16) -> Result<RegistryNode, stardust_registry::Error> {
    let give_up = Instant::now() + REBIND_BOUND;
    loop {
        let bound = RegistryNode::builder()
            .config(config.clone())
            .bind(format!("127.0.0.1:{port}"))
            .await;
        match bound {
            Err(stardust_registry::Error::Bind(_)) if port != 0 && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The parent's handle on a running registry process. Dropping it stops the process.
pub struct RegistryProcess {
    child: Child,
    /// Held open: the child serves until it is closed.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// Where it serves `/metrics`.
    http: SocketAddr,
    config: PathBuf,
    /// The config and key files; removed with the handle.
    _dir: tempfile::TempDir,
}

/// A child that was spawned, and the line it will print once listening.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    announce: mpsc::Receiver<String>,
}

impl RegistryProcess {
    /// Writes the config to a temp dir and starts the registry on a free port; returns once it
    /// listens.
    pub fn start() -> Result<RegistryProcess, String> {
        if !stardust_registry::verify_secret(SECRET, CHEAP_HASH) {
            return Err("CHEAP_HASH is not a hash of SECRET".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let config = dir.path().join("registry.toml");
        std::fs::write(&config, config_toml())
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let spawned = spawn(&config, 0)?;
        let mut process = RegistryProcess {
            child: spawned.child,
            stdin: spawned.stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            _dir: dir,
        };
        let (port, http) = wait_listening(spawned.announce)?;
        process.addr.set_port(port);
        process.http.set_port(http);
        Ok(process)
    }

    /// Kills the registry with SIGKILL (a crash: no session is told anything) and reaps it.
    /// Call it on the multi-threaded runtime.
    pub fn crash(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        // Blocks while the kernel tears the process down (its thousands of sockets included).
        let _ = tokio::task::block_in_place(|| self.child.wait());
    }

    /// Starts the registry again after [`crash`](Self::crash): same config, same key file, same
    /// port; returns once it listens (its monitoring port may differ).
    pub async fn start_again(&mut self) -> Result<(), String> {
        let spawned = spawn(&self.config, self.addr.port())?;
        self.child = spawned.child;
        self.stdin = spawned.stdin;
        let announce = spawned.announce;
        let (port, http) = tokio::task::spawn_blocking(move || wait_listening(announce))
            .await
            .map_err(|e| format!("waiting for the registry: {e}"))??;
        if port != self.addr.port() {
            return Err(format!(
                "the registry came back on port {port}, not {}",
                self.addr.port()
            ));
        }
        self.http.set_port(http);
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the registry serves its monitoring (`/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn pid(&self) -> Pid {
        Pid::Of(self.child.id())
    }
}

/// Starts this binary as the registry with `config`, on `port` (0: any).
fn spawn(config: &Path, port: u16) -> Result<Spawned, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut child = Command::new(exe)
        .env(ROLE_ENV, "registry")
        .env(CONFIG_ENV, config)
        .env(PORT_ENV, port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the registry process: {e}"))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("piped stdout");
    // Read on a thread, so a child that never answers cannot hang the run.
    let (tx, announce) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok(Spawned {
        child,
        stdin,
        announce,
    })
}

/// Waits (bounded) for the child's `<port> <http port>` line.
fn wait_listening(announce: mpsc::Receiver<String>) -> Result<(u16, u16), String> {
    let line = announce
        .recv_timeout(START_BOUND)
        .map_err(|_| format!("the registry did not start within {START_BOUND:?}"))?;
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("the registry printed {line:?} instead of its ports"))?;
    match ports[..] {
        [port, http] => Ok((port, http)),
        _ => Err(format!(
            "the registry printed {line:?} instead of its ports"
        )),
    }
}

impl Drop for RegistryProcess {
    /// Closing stdin tells the registry to exit; one that does not within 5 s is killed.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the registry process at once (the watchdog, on a collapse). Only its own child, by
/// pid: the parent has not reaped it, so the pid cannot belong to anyone else yet.
pub fn kill(pid: u32) {
    // SAFETY: kill(2) with a pid this process spawned and has not waited for.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}
