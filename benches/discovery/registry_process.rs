//! The registry under test, in a process of its own: this bench binary run again with
//! [`ROLE_ENV`] set, hosting `stardust_registry::RegistryNode` with a config file the parent
//! wrote. Its memory and CPU are then the registry's alone, read from `/proc/<pid>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use stardust_registry::{Config, RegistryNode};

use crate::procfs::Pid;

/// Set (to "registry") in the child process.
pub const ROLE_ENV: &str = "STARDUST_DISCOVERY_ROLE";
/// The config file the child runs with.
const CONFIG_ENV: &str = "STARDUST_DISCOVERY_CONFIG";

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

/// The registry's config: everything default (memory store, lease TTL 10 s, server limits)
/// except the two apps and login throttling, which would otherwise refuse most of 2,000
/// sessions logging in at once from one address (five logins per app and address are checked at
/// once, at most 20 start at once per address).
fn config_toml() -> String {
    format!(
        r#"# Written by benches/discovery.rs for one run.
key_file = "keys.toml"
lease_ttl = "{lease_ttl}s"
store = "memory"

[apps.{PROVIDER_APP}]
secret_hash = "{CHEAP_HASH}"

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

/// The child's side: serve until the parent closes stdin (or dies), then exit at once.
pub fn registry_main() -> ! {
    let die = |msg: String| -> ! {
        eprintln!("discovery bench registry: {msg}");
        std::process::exit(1);
    };
    let path = std::env::var(CONFIG_ENV).unwrap_or_else(|_| die(format!("{CONFIG_ENV} unset")));
    let config = Config::load(&path).unwrap_or_else(|e| die(e.to_string()));
    // Like `stardust-registry serve`: a multi-threaded runtime with a worker per CPU.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("cannot build the runtime: {e}")));
    let node = rt
        .block_on(RegistryNode::builder().config(config).bind("127.0.0.1:0"))
        .unwrap_or_else(|e| die(format!("cannot start: {e}")));
    println!("{}", node.local_addr().port());
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    // No graceful shutdown: ending 2,000 sessions one by one would only slow the run down.
    std::process::exit(0);
}

/// The parent's handle on a running registry process. Dropping it stops the process.
pub struct RegistryProcess {
    child: Child,
    /// Held open: the child serves until it is closed.
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// The config and key files; removed with the handle.
    _dir: tempfile::TempDir,
}

impl RegistryProcess {
    pub fn start() -> Result<RegistryProcess, String> {
        if !stardust_registry::verify_secret(SECRET, CHEAP_HASH) {
            return Err("CHEAP_HASH is not a hash of SECRET".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temp dir: {e}"))?;
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, config_toml())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "registry")
            .env(CONFIG_ENV, &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the registry process: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut process = RegistryProcess {
            child,
            stdin,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            _dir: dir,
        };
        // Read on a thread, so a child that never answers cannot hang the run.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_BOUND)
            .map_err(|_| format!("the registry did not start within {START_BOUND:?}"))?;
        let port: u16 = line
            .trim()
            .parse()
            .map_err(|_| format!("the registry printed {line:?} instead of its port"))?;
        process.addr.set_port(port);
        Ok(process)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> Pid {
        Pid::Of(self.child.id())
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
