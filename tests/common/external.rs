//! External parts some tests need (etcd, Chromium, Python with msgpack, a non-loopback
//! address, a cargo feature): where one is missing, the test says so loudly and passes, except
//! under `STARDUST_REQUIRE_EXTERNAL=1` (what `.ci/run` sets), where it fails, so CI can never
//! pass by skipping.
//!
//! Shared by both test crates: `tests/common/mod.rs` has it as `common::external`; the
//! registry's tests include this file by path.

/// Reports that `test` cannot run because `why` (what is missing and how to get it): a loud
/// `SKIPPED` line on stderr, or a panic under `STARDUST_REQUIRE_EXTERNAL=1`.
pub fn missing(test: &str, why: &str) {
    if std::env::var("STARDUST_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") {
        panic!("{test}: {why}; STARDUST_REQUIRE_EXTERNAL=1 requires it");
    }
    skipped(test, why);
}

/// Reports that `test` was built without cargo feature `feature` (`why` says how to build it
/// with): [`missing`], unless `STARDUST_FEATURES_ELSEWHERE` (comma-separated) names the feature.
/// A run of several cargo passes sets that in the passes without the feature when another pass
/// builds with it (`.ci/run`: `cargo test --workspace`, then the registry with
/// `--all-features`), so the skip is loud but does not fail the run that does test it.
pub fn feature_off(test: &str, feature: &str, why: &str) {
    let elsewhere = std::env::var("STARDUST_FEATURES_ELSEWHERE").unwrap_or_default();
    if elsewhere.split(',').any(|f| f.trim() == feature) {
        skipped(
            test,
            &format!("{why} (STARDUST_FEATURES_ELSEWHERE: another pass builds with `{feature}`)"),
        );
    } else {
        missing(test, why);
    }
}

fn skipped(test: &str, why: &str) {
    // Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n==== SKIPPED: {test}: {why}: the test did not run ====\n"
    );
}
