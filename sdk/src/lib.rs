//! `vault-sdk`: the Rust client of the Vault PII sidecar, for application
//! services and security officers. It owns the JSON wire types ([`wire`]),
//! shared with the server so the two never drift, and an mTLS client
//! ([`Client`]) over one pooled keep-alive connection pool.
//!
//! Invariant: nothing this crate prints — errors, `Debug` of its types — holds
//! a value sent or received, or key material.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vault_sdk::Error> {
//! use vault_sdk::wire::{Field, TokenizeRequest};
//!
//! let client = vault_sdk::ClientBuilder::new("https://127.0.0.1:8443")
//!     .ca_file("vault-data/tls/ca.pem")?
//!     .identity_files("vault-data/tls/app.pem", "vault-data/tls/app.key")?
//!     .build()?;
//! let tokens = client
//!     .tokenize(&TokenizeRequest {
//!         subject: "acct-1001".into(),
//!         purpose: "identity_verification".into(),
//!         retention: None,
//!         fields: vec![Field { class: "phone".into(), value: "+86 138 0013 8000".into() }],
//!     })
//!     .await?;
//! # let _ = tokens;
//! # Ok(())
//! # }
//! ```
//!
//! Failed attempts are retried only where that cannot do a write twice: see
//! [`retry`] for the rule.

pub mod client;
pub mod error;
pub mod query;
pub mod retry;
mod tls;
pub mod wire;

pub use client::{Client, ClientBuilder, RawResponse};
pub use error::Error;
pub use wire::*;
