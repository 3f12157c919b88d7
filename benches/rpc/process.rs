//! The server side of a measurement: this binary re-executed as a server process
//! (`STARDUST_BENCH_ROLE=server`), and the handle the driver keeps on it.

use super::*;

/// A server child process and the pipes to talk to it.
pub(crate) struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub(crate) port: u16,
}

impl ServerProcess {
    pub(crate) fn start(imp: Impl, cpu: Option<usize>) -> Result<ServerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, "server")
            .env(IMPL_ENV, imp.name())
            .env_remove(CPU_ENV)
            .envs(stardust_impl::tls_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(cpu) = cpu {
            cmd.env(CPU_ENV, cpu.to_string());
        }
        let mut child = cmd
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

    pub(crate) fn stats(&mut self) -> Result<ServerStats, String> {
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
            "rpc bench: server {} did not exit; killing it",
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------- provider

/// The server role: start the implementation, print the port, answer "stats" until stdin closes.
pub(crate) fn server_main() -> ! {
    let die = |msg: String| -> ! {
        eprintln!("rpc bench server: {msg}");
        std::process::exit(1);
    };
    let imp = std::env::var(IMPL_ENV)
        .ok()
        .and_then(|n| Impl::from_name(&n))
        .unwrap_or_else(|| die(format!("{IMPL_ENV} must name an implementation")));
    if let Ok(cpu) = std::env::var(CPU_ENV) {
        let cpu: usize = cpu
            .parse()
            .unwrap_or_else(|_| die(format!("bad {CPU_ENV}")));
        // Before the runtime: its worker threads inherit the mask.
        sys::pin_to_cpu(cpu).unwrap_or_else(|e| die(format!("cannot pin to CPU {cpu}: {e}")));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("cannot build the runtime: {e}")));
    let started = rt.block_on(async {
        match imp.server() {
            Impl::Stardust => stardust_impl::serve(false).await,
            Impl::StardustTls => stardust_impl::serve(true).await,
            Impl::StardustAgent => stardust_impl::serve_agent().await,
            Impl::StardustBalanced => stardust_impl::serve_registered(false).await,
            Impl::StardustRules => stardust_impl::serve_registered(true).await,
            Impl::Tarpc => tarpc_impl::serve().await,
            Impl::Raw | Impl::Ceiling => raw_impl::serve().await,
            Impl::SocketCeiling => socket_ceiling::serve().map(|port| (port, Box::new(()) as _)),
        }
    });
    let (port, _keep_serving) = started.unwrap_or_else(|e| die(format!("cannot serve: {e}")));
    println!("{port}");
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) if l.trim() == "stats" => {
                let u = sys::usage();
                let stats = ServerStats {
                    cpu_us: u.cpu_us,
                    maxrss_kib: u.maxrss_kib,
                    writes: sys::socket_writes(),
                };
                println!("{}", stats.to_line());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // The client hung up: exit without a graceful shutdown (nothing is in flight).
    std::process::exit(0);
}
