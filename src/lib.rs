//! Workspace root: hosts the cross-crate tests and benches, the labelled
//! detection corpus and the fuzz target bodies.

pub mod corpus;
pub mod fuzzing;
pub mod scrape;
pub mod slow;
