//! Secret checks do not inflate the registry's memory: argon2's working memory (about 19 MiB per
//! check) comes from a bounded pool of buffers reused from one check to the next, instead of an
//! allocation per check that the allocator keeps (issue 14, item 6).
//!
//! The registry runs as a child process (the `stardust-registry` binary), so its resident set is
//! its own, read from `/proc/<pid>/status`.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use stardust::discovery::api::{RegistryClient, RegistryError};

use common::within;

const BIN: &str = env!("CARGO_BIN_EXE_stardust-registry");
/// Argon2id's default working memory (m = 19456 KiB), what each check needs.
const WORKING_SET: u64 = 19456 * 1024;
/// Secrets checked at once (the pool holds at most this many buffers).
const CONCURRENT_HASHES: usize = 2;
const LOGINS: usize = 40;
const SECRET: &str = "memory-test-secret";

/// The child registry, killed when the test ends (even by a panic).
struct Registry {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts the binary with `config` and waits (bounded by its own start-up output) for it to
    /// say where it listens. Its log is drained on a thread afterwards, so it never blocks on a
    /// full pipe.
    fn start(config: &std::path::Path) -> Registry {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("the registry did not start:\n{}", seen.join("\n"));
            };
            if line.contains("registry listening") {
                let at = line.find("addr=").expect("the address is logged") + 5;
                let addr = line[at..].split_whitespace().next().unwrap();
                break addr.parse().expect("a socket address");
            }
            seen.push(line);
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Registry { child, addr }
    }

    /// The child's resident set, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the registry is running");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }
}

/// One login over a fresh connection; `Ok` for the right secret, `Unauthorized` for a wrong one.
async fn login(addr: SocketAddr, secret: &str) -> Result<(), RegistryError> {
    let client = within("connecting", RegistryClient::connect(addr))
        .await
        .expect("connect");
    within("a login", client.login("mem".into(), secret.into()))
        .await
        .expect("the login call")
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_reuse_a_bounded_set_of_argon2_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    // The throttle relaxed so that every login is checked (none refused for its rate or for
    // earlier wrong secrets); two checks at once, so the pool holds up to two buffers.
    std::fs::write(
        &config,
        format!(
            "key_file = \"keys.toml\"\n\
             [login_throttle]\n\
             free_failures = 1000\n\
             attempt_burst = 1000\n\
             attempts_per_second = 1000.0\n\
             max_concurrent_hashes = {CONCURRENT_HASHES}\n\
             [apps.mem]\n\
             secret_hash = \"{}\"\n",
            stardust_registry::hash_secret(SECRET).unwrap()
        ),
    )
    .unwrap();
    let registry = Registry::start(&config);

    login(registry.addr, SECRET).await.expect("the first login");
    let after_first = registry.rss();

    // Rounds of concurrent logins, one in four with a wrong secret: every one is checked.
    for round in 0..LOGINS / CONCURRENT_HASHES {
        let mut logins = tokio::task::JoinSet::new();
        for i in 0..CONCURRENT_HASHES {
            let wrong = (round * CONCURRENT_HASHES + i) % 4 == 3;
            let addr = registry.addr;
            logins.spawn(async move {
                let outcome = login(addr, if wrong { "wrong" } else { SECRET }).await;
                match (wrong, outcome) {
                    (false, Ok(())) | (true, Err(RegistryError::Unauthorized(_))) => {}
                    (wrong, outcome) => panic!("wrong secret: {wrong}; outcome: {outcome:?}"),
                }
            });
        }
        while let Some(done) = logins.join_next().await {
            done.expect("a login task");
        }
    }
    let after_all = registry.rss();

    // The pool may gain one buffer over the first login's (two checks at once); allow as much
    // again for everything else (threads, sessions, allocator slack). One buffer per check, kept
    // by the allocator, is what this catches: about 40 working sets.
    let growth = after_all.saturating_sub(after_first);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "registry RSS: {:.1} MiB after the first login, {:.1} MiB after {} more (+{:.1} MiB)",
        mib(after_first),
        mib(after_all),
        LOGINS,
        mib(growth)
    );
    assert!(
        growth < 2 * WORKING_SET,
        "RSS grew by {:.1} MiB over {LOGINS} logins (from {:.1} MiB): argon2 buffers are not \
         reused",
        mib(growth),
        mib(after_first)
    );
}
