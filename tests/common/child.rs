//! A server in a child process, for tests that measure what serving costs (resident memory, CPU
//! time, open files) without the test's own clients, runtime and allocations in the figures.
//!
//! The test binary runs itself again: the child is one `#[test]` fn of the same file, marked
//! `#[ignore]` and guarded by [`is_child`], which [`ChildProcess::spawn`] runs alone
//! (`--exact NAME --include-ignored`). The child starts its server, tells the parent its address
//! with [`announce`], and serves until [`wait_for_parent`] returns: when the parent closes the
//! child's stdin, which also happens when the parent dies however it dies, so no child outlives
//! its test.
//!
//! ```ignore
//! #[test]
//! #[ignore = "the provider process of `my_test`; runs only when that test starts it"]
//! fn my_provider_child() {
//!     if !child::is_child("my_provider_child") {
//!         return;
//!     }
//!     let rt = tokio::runtime::Runtime::new().unwrap();
//!     let server = rt.block_on(start_server());
//!     child::announce(server.local_addr());
//!     child::wait_for_parent();
//! }
//!
//! #[test]
//! fn my_test() {
//!     let (provider, addr) = ChildProcess::spawn("my_provider_child");
//!     // ... connect to `addr`, then read provider.rss_bytes(), provider.cpu_time() ...
//! }
//! ```
//!
//! Linux only: the figures come from `/proc/<pid>`.

use std::fmt::Display;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::BOUND;

/// Names the `#[test]` fn a child process was started to run.
const ROLE_ENV: &str = "STARDUST_TEST_CHILD";
/// Starts the line on which a child announces itself (its server's address).
const READY: &str = "STARDUST_CHILD_READY ";

/// Whether this process was started by [`ChildProcess::spawn`] to run the child `test_fn`. The
/// child's `#[test]` fn returns at once when it is not (a `--include-ignored` run of the suite).
pub fn is_child(test_fn: &str) -> bool {
    std::env::var(ROLE_ENV).is_ok_and(|v| v == test_fn)
}

/// Child side: tells the parent it is ready, with `value` (usually its server's address), which
/// [`ChildProcess::spawn`] returns.
pub fn announce(value: impl Display) {
    // Straight to the process's stdout: libtest's capture would hold a passing test's output.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}{value}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// Child side: blocks until the parent closes this process's stdin (it dropped its
/// [`ChildProcess`], or died).
pub fn wait_for_parent() {
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}

/// Raises this process's soft limit on open files to its hard limit, returning the new limit.
/// Children inherit it.
pub fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill in and read.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            0,
            "getrlimit"
        );
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "setrlimit");
    }
    lim.rlim_cur
}

/// A child process running one `#[test]` fn of this test binary. Dropping it kills the child.
pub struct ChildProcess {
    child: Child,
    /// Held open: the child serves until it is closed.
    stdin: Option<ChildStdin>,
    name: String,
}

impl ChildProcess {
    /// Starts this test binary again running only `test_fn` (guarded by [`is_child`]) and waits
    /// (within [`BOUND`]) for it to [`announce`] itself; returns the child and what it announced.
    /// Its further stdout and its stderr show in the test's output.
    pub fn spawn(test_fn: &str) -> (ChildProcess, String) {
        ChildProcess::spawn_with(test_fn, &[])
    }

    /// Like [`ChildProcess::spawn`], with environment variables `env` set in the child (what
    /// it needs to know, such as a registry's address).
    pub fn spawn_with(test_fn: &str, env: &[(&str, &str)]) -> (ChildProcess, String) {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut child = Command::new(exe)
            .args(["--exact", test_fn, "--nocapture", "--include-ignored"])
            .args(["--test-threads", "1"])
            .envs(env.iter().copied())
            .env(ROLE_ENV, test_fn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the child {test_fn}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let process = ChildProcess {
            child,
            stdin,
            name: test_fn.to_owned(),
        };
        // A thread reads the child's stdout for as long as it lives, so the child never blocks
        // on a full pipe; the announcement comes back through the channel.
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = test_fn.to_owned();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Not necessarily at the start of a line: libtest prints the test's name first.
                match line.find(READY) {
                    Some(at) if ready_tx.is_some() => {
                        let value = line[at + READY.len()..].to_owned();
                        let _ = ready_tx.take().expect("checked").send(value);
                    }
                    _ => eprintln!("[{name}] {line}"),
                }
            }
        });
        let value = ready_rx
            .recv_timeout(BOUND)
            .unwrap_or_else(|e| panic!("the child {test_fn} did not announce itself: {e}"));
        (process, value)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn proc_file(&self, file: &str) -> String {
        let path = format!("/proc/{}/{file}", self.pid());
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path} of the child {}: {e}", self.name))
    }

    /// The child's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = self.proc_file("status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// CPU time (user + system) the child has used so far.
    pub fn cpu_time(&self) -> Duration {
        // Fields 14 and 15 of /proc/<pid>/stat, in clock ticks. The command name (field 2) may
        // hold spaces and parentheses, so fields are counted after its last `)`.
        let stat = self.proc_file("stat");
        let rest = &stat[stat.rfind(')').expect("a command name in stat") + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let mut ticks = || -> u64 {
            fields
                .next()
                .and_then(|f| f.parse().ok())
                .expect("a tick count")
        };
        let (utime, stime) = (ticks(), ticks());
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
        Duration::from_secs_f64((utime + stime) as f64 / hz as f64)
    }

    /// Files the child has open right now (sockets included).
    pub fn open_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {dir} of the child {}: {e}", self.name))
            .count()
    }

    /// Polls `done` on the child (every few milliseconds) until it holds, failing the test with
    /// `what` after [`BOUND`]. For figures the child cannot signal, such as its open files
    /// falling back to a baseline once connections closed.
    pub fn wait_until(&self, what: &str, mut done: impl FnMut(&ChildProcess) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < BOUND,
                "timed out after {BOUND:?} waiting for the child {}: {what}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the child at once (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        self.stop();
    }

    /// Freezes the child (SIGSTOP): its sockets stay open and the kernel still accepts what is
    /// sent to it, but it answers nothing, as a process stuck in a long pause does. It thaws
    /// with [`ChildProcess::resume`], or when it is dropped (then killed).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a child frozen with [`ChildProcess::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with the pid of a child this process has not reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "signal {sig} to the child {}", self.name);
    }

    fn stop(&mut self) {
        // A frozen child is thawed first, so nothing is left stopped whatever the test did.
        // SAFETY: as in `signal`; the result does not matter (it may have exited).
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGCONT) };
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
