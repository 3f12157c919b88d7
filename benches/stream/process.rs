//! The server process of one run: this binary re-executed in the server role, its port read
//! from its stdout, and its stats asked for on its stdin.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::ServerStats;
use crate::{IMPL_ENV, Impl, ROLE_ENV};

/// A server child process and the pipes to talk to it.
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
}

impl ServerProcess {
    pub fn start(imp: Impl) -> Result<ServerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "server")
            .env(IMPL_ENV, imp.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut server = ServerProcess {
            child,
            stdin,
            stdout,
            port: 0,
        };
        let line = server.read_line()?;
        server.port = line
            .trim()
            .parse()
            .map_err(|_| format!("the server printed {line:?} instead of its port"))?;
        Ok(server)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err("the server process exited".to_owned()),
            Ok(_) => Ok(line),
            Err(e) => Err(format!("reading from the server: {e}")),
        }
    }

    pub fn stats(&mut self) -> Result<ServerStats, String> {
        let stdin = self.stdin.as_mut().expect("stdin open while running");
        writeln!(stdin, "stats")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("asking the server for stats: {e}"))?;
        ServerStats::parse(&self.read_line()?)
    }
}

impl Drop for ServerProcess {
    /// Closing stdin tells the server to exit; one that does not within 5 s is killed.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        eprintln!(
            "stream bench: server {} did not exit; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
