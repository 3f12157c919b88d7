//! External parts some tests need (etcd, Chromium, Python with msgpack): where one is missing,
//! the test says so loudly and passes, except under `STARDUST_REQUIRE_EXTERNAL=1` (what
//! `.ci/run` sets), where it fails, so CI can never pass by skipping.
//!
//! Shared by both test crates: `tests/common/mod.rs` has it as `common::external`; the
//! registry's tests include this file by path.

/// Reports that `test` cannot run because `why` (what is missing and how to get it): a loud
/// `SKIPPED` line on stderr, or a panic under `STARDUST_REQUIRE_EXTERNAL=1`.
pub fn missing(test: &str, why: &str) {
    if std::env::var("STARDUST_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}; STARDUST_REQUIRE_EXTERNAL=1 requires it");
    }
    // Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n==== SKIPPED: {test}: {why}: the test did not run ====\n"
    );
}
