//! Workspace root: hosts the cross-crate tests and benches.

pub mod fuzzing;
