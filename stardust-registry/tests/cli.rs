//! The `stardust-registry` binary: help, hash-secret, rotate-key, config errors, serve.

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
    for word in ["serve", "hash-secret", "rotate-key", "RUST_LOG"] {
        assert!(help.contains(word), "`{word}` missing from:\n{help}");
    }
    let out = run(&["serve", "--help"], "");
    let help = text(&out.stdout);
    for flag in [
        "--listen <ADDR>",
        "--http-listen <ADDR|off>",
        "--config <FILE>",
        "--dev",
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
fn serve_dev_starts_and_says_so() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
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
