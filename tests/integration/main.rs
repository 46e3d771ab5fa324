//! Cross-crate integration tests: the real server, in process on ephemeral
//! loopback ports with a temporary directory and a development CA, driven
//! through the SDK over mutual TLS. One binary, one module per concern.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

mod abuse;
mod at_rest;
mod audit;
mod crash;
mod deidentify;
mod detection;
mod diskfull;
mod durability;
mod errors;
mod fuzz_smoke;
mod keys;
mod lifecycle;
mod load;
mod lossyfs;
mod policy;
mod powerloss;
mod rights;
mod storage;
mod tokens;
mod transport;
