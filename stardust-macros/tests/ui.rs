//! Compile tests for `#[stardust::service]`.
//!
//! `ui/pass` must compile and run; each file in `ui/fail` must fail to compile with exactly the
//! error in its `.stderr` file. After changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test -p stardust-macros --test ui` and review the diff: the span and
//! wording are what a user sees.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
