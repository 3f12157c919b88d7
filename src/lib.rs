//! Workspace root package: owns the top-level examples, tests and benches.
