//! The `stardust-registry` binary: help, hash-secret, rotate-key, config errors, serve, agent.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_stardust-registry");

fn run(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_explains_every_command_and_flag() {
    let out = run(&["--help"], "");
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["serve", "hash-secret", "rotate-key", "agent", "RUST_LOG"] {
        assert!(help.contains(word), "`{word}` missing from:\n{help}");
    }
    let out = run(&["serve", "--help"], "");
    let help = text(&out.stdout);
    for flag in [
        "--listen <ADDR>",
        "--http-listen <ADDR|off>",
        "--config <FILE>",
        "--dev",
        "--store <URL>",
        "etcd://",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from:\n{help}");
    }
    let out = run(&["rotate-key", "--help"], "");
    let help = text(&out.stdout);
    for flag in [
        "--key-file <FILE>",
        "--config <FILE>",
        "--token-ttl <DURATION>",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from:\n{help}");
    }
    let out = run(&["agent", "--help"], "");
    let help = text(&out.stdout);
    for flag in [
        "--registry <ADDR>",
        "--app <ID>",
        "--secret-file <FILE>",
        "--listen <ADDR>",
        "127.0.0.1:7700",
        "--tls-ca <FILE>",
        "--balancer <BALANCER>",
        "round-robin",
        "--max-services <N>",
        "loopback",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from:\n{help}");
    }
}

#[test]
fn hash_secret_prints_a_hash_that_verifies() {
    let out = run(&["hash-secret"], "correct horse\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let hash = stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert_eq!(stdout.lines().count(), 1);
    // The trailing newline is not part of the secret.
    assert!(stardust_registry::verify_secret("correct horse", hash));
    assert!(!stardust_registry::verify_secret("correct horse\n", hash));
    stardust_registry::validate_hash(hash).unwrap();
    // The secret is never echoed.
    assert!(!text(&out.stderr).contains("correct horse"));

    let out = run(&["hash-secret"], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
}

#[test]
fn rotate_key_adds_a_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.toml");
    let first = run(&["rotate-key", "--key-file", path.to_str().unwrap()], "");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let second = run(&["rotate-key", "--key-file", path.to_str().unwrap()], "");
    assert!(second.status.success(), "{}", text(&second.stderr));
    let ring =
        stardust_registry::KeyRing::open(&path, std::time::Duration::from_secs(3600)).unwrap();
    assert_eq!(ring.signing_kid(), text(&second.stdout).trim());
    let kids: Vec<String> = ring.public_keys().into_iter().map(|k| k.kid).collect();
    assert_eq!(
        kids,
        [text(&first.stdout).trim(), text(&second.stdout).trim()]
    );

    // Through a config file: its key_file (relative to the config) and its token TTL.
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, "key_file = \"keys.toml\"\ntoken_ttl = \"2h\"\n").unwrap();
    let third = run(&["rotate-key", "--config", cfg.to_str().unwrap()], "");
    assert!(third.status.success(), "{}", text(&third.stderr));
    let ring =
        stardust_registry::KeyRing::open(&path, std::time::Duration::from_secs(7200)).unwrap();
    assert_eq!(ring.signing_kid(), text(&third.stdout).trim());
    assert_eq!(ring.public_keys().len(), 3);

    let neither = run(&["rotate-key"], "");
    assert!(!neither.status.success());
}

#[test]
fn serve_refuses_a_bad_config_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("registry.toml");
    std::fs::write(&cfg, "key_file = \"keys.toml\"\nlease_tll = \"5s\"\n").unwrap();
    let out = run(&["serve", "--config", cfg.to_str().unwrap()], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown field `lease_tll`"), "{err}");
    assert!(err.contains("line 2"), "{err}");

    let out = run(&["serve"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_refuses_a_store_it_cannot_use_clearly() {
    let out = run(&["serve", "--dev", "--store", "redis://127.0.0.1:6379"], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("neither `memory` nor `etcd://"), "{err}");

    // An etcd store needs the `etcd` feature; with it, an etcd that does not answer is named.
    // (Port 1 on loopback: nothing listens there.)
    let out = run(
        &[
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--store",
            "etcd://127.0.0.1:1/team",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    if cfg!(feature = "etcd") {
        assert!(
            err.contains("cannot use its store") && err.contains("etcd://127.0.0.1:1/team"),
            "{err}"
        );
    } else {
        assert!(err.contains("built with the `etcd` feature"), "{err}");
    }
}

/// A dev registry on ports the OS chooses, console included.
const DEV_SERVE: [&str; 6] = [
    "serve",
    "--dev",
    "--listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

/// `serve` prints its bound addresses on one stdout line, for scripts using port 0 (the agent's
/// line is the same shape; `agent_logs_in_and_serves_local_applications` starts one).
#[cfg(unix)]
#[test]
fn the_bound_addresses_are_printed_on_one_stdout_line() {
    let mut child = Command::new(BIN)
        .args(DEV_SERVE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("a line").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening registry="), "{line}");
    for key in ["registry", "http"] {
        let addr: std::net::SocketAddr = field(&line, key)
            .unwrap_or_else(|| panic!("{key}= in {line:?}"))
            .parse()
            .unwrap();
        assert_ne!(
            addr.port(),
            0,
            "the bound port, not the requested one: {line}"
        );
    }
}

#[test]
fn serve_dev_starts_and_says_so() {
    let mut child = Command::new(BIN)
        .args(DEV_SERVE)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut dev_warning = false;
    let mut listening = false;
    let mut console = false;
    // Bounded by the process's own output: it logs these lines at start-up.
    while let Some(Ok(line)) = lines.next() {
        dev_warning |= line.contains("DEV MODE IS ON");
        console |= line.contains("monitoring console on http://127.0.0.1:");
        listening |= line.contains("registry listening") && line.contains("127.0.0.1:");
        seen.push(line);
        if listening || seen.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        dev_warning && listening && console,
        "start-up log:\n{}",
        seen.join("\n")
    );
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split_whitespace().next()
}

/// Spawns the binary with `args`, logging at info, and returns it with the first stderr line
/// containing `wanted` (bounded by the process's own start-up output).
fn spawn_until(
    args: &[&str],
    wanted: &str,
) -> (
    std::process::Child,
    String,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if line.contains(wanted) {
            return (child, line, lines);
        }
        seen.push(line);
        if seen.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("`{wanted}` not logged; output:\n{}", seen.join("\n"));
}

#[test]
fn agent_refuses_bad_settings_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = run(
        &[
            "agent",
            "--registry",
            "127.0.0.1:1",
            "--app",
            "web",
            "--secret-file",
            empty.to_str().unwrap(),
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is empty"),
        "{}",
        text(&out.stderr)
    );

    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2-agent\n").unwrap();
    let out = run(
        &[
            "agent",
            "--registry",
            "127.0.0.1:1",
            "--app",
            "web",
            "--secret-file",
            secret.to_str().unwrap(),
            "--listen",
            "0.0.0.0:7700",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
    assert!(!err.contains("hunter2"), "the secret leaked: {err}");

    let out = run(&["agent", "--app", "web"], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--registry"));
}

#[cfg(unix)]
#[test]
fn agent_logs_in_and_serves_local_applications() {
    let (mut registry, line, _registry_log) = spawn_until(
        &[
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ],
        "registry listening",
    );
    let registry_addr = field(&line, "addr")
        .expect("the address is logged")
        .to_owned();

    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "  agent-secret-42\n").unwrap();
    let (mut agent, line, mut agent_log) = spawn_until(
        &[
            "agent",
            "--registry",
            &registry_addr,
            "--app",
            "web",
            "--secret-file",
            secret.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "agent listening",
    );
    let agent_addr: std::net::SocketAddr = field(&line, "addr").unwrap().parse().unwrap();

    // A local application, no credentials: the agent resolved the service through the registry
    // (logged in with the trimmed secret) and says nobody provides it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let client = stardust::Client::connect(agent_addr).await?;
        client.call::<_, u32>(&NOBODY, 0, &()).await.map(|_| ())
    });
    let err = outcome.unwrap_err();
    assert_eq!(err.kind(), stardust::ErrorKind::NoProvider, "{err}");
    assert!(err.message().contains("`test.Nobody`"), "{err}");

    // Ctrl-C: a graceful stop.
    let sent = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = agent.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = agent_log.by_ref().map_while(Result::ok).collect();
    let all = format!("{line}\n{}", rest.join("\n"));
    assert!(all.contains("shutting down"), "{all}");
    assert!(!all.contains("agent-secret-42"), "the secret leaked: {all}");
    let _ = registry.kill();
    let _ = registry.wait();
}

static NOBODY: stardust::ServiceDescriptor = stardust::ServiceDescriptor {
    name: "test.Nobody",
    version: "1.0.0",
    methods: &[stardust::MethodDescriptor::unary("ping")],
    docs: "",
};
