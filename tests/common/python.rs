//! Running the Python client's scripts (`tests/python/`) from integration tests: finding an
//! interpreter with `msgpack`, running a script with a bound, checking its outcome.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// Longest a script may run.
const SCRIPT_BOUND: Duration = Duration::from_secs(180);

pub fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// Runs `tests/python/<script>` with a bound; the child is killed if it outlives it.
pub async fn run_script(python: &Path, script: &str, args: &[&str]) -> Output {
    let child = Command::new(python)
        .arg("-u")
        .arg(script_dir().join(script))
        .args(args)
        .current_dir(script_dir())
        // Keep the source tree clean: no __pycache__ next to the scripts.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    match tokio::time::timeout(SCRIPT_BOUND, child.wait_with_output()).await {
        Ok(output) => output.expect("waiting for the script"),
        Err(_) => panic!("{script} did not finish within {SCRIPT_BOUND:?} (killed)"),
    }
}

pub fn check(script: &str, output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}",
        output.status
    );
    // Shown with --nocapture; a passing test's output is swallowed otherwise.
    println!("{stdout}");
}

/// A Python that can import `msgpack`, or `None` after saying why the test is skipped (a
/// failure under `STARDUST_REQUIRE_EXTERNAL=1`).
pub async fn find_python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("STARDUST_PYTHON") {
        Some(named) => vec![PathBuf::from(named)],
        None => vec![PathBuf::from("python3"), PathBuf::from("/usr/bin/python3")],
    };
    for candidate in &candidates {
        if has_msgpack(candidate).await {
            return Some(candidate.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let why = format!(
        "python3 with msgpack not found (tried {}; install Debian's `python3-msgpack`, e.g. \
         `apt-get install -y python3 python3-msgpack`, or set STARDUST_PYTHON)",
        tried.join(", ")
    );
    super::external::missing("the Python client test", &why);
    None
}

async fn has_msgpack(python: &Path) -> bool {
    let Ok(child) = Command::new(python)
        .args(["-c", "import msgpack"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(super::BOUND, child.wait_with_output()).await,
        Ok(Ok(output)) if output.status.success()
    )
}
