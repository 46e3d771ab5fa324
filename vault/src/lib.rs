//! Vault: a hardened HTTPS sidecar that keeps personal data out of
//! application services. Applications send PII when they collect it and keep
//! only the tokens; the vault encrypts the values, keeps them with retention
//! timers, and releases them only for purposes the policy allows, with every
//! release in a hash-chained audit log. See `SPEC.md` for the contract; each
//! module below owns one concern of it.

pub mod api;
pub mod audit;
pub mod classes;
pub mod cli;
pub mod commit;
pub mod config;
pub mod crypto;
pub mod detect;
pub mod dev;
pub mod hardening;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod records;
pub mod retention;
pub mod rewrap;
pub mod schema;
pub mod secret;
pub mod server;
pub mod shares;
pub mod shreds;
pub mod store;
pub mod subject_keys;
pub mod tls;
pub mod tokens;
