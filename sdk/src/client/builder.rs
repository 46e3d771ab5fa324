//! [`ClientBuilder`]: turns PEMs and settings into a [`Client`]. Invariants:
//! the private key never leaves [`KeyPem`] except into rustls; nothing is
//! built without a CA and an explicit choice of client identity.
//!
//! ALPN: hyper-rustls owns the ALPN list (it panics on a config that already
//! has one), so the rustls config leaves it empty and the connector builder
//! sets it: `enable_http1().enable_http2()` offers `h2, http/1.1` and the pool
//! speaks whichever the server picks; with [`ClientBuilder::http2`] only
//! `enable_http2()` is called, which offers `h2` alone, and the hyper client is
//! built `http2_only`, so a server without HTTP/2 fails the handshake instead
//! of being spoken to in HTTP/1.1; with [`ClientBuilder::http1`] only
//! `enable_http1()` is called, no ALPN is sent, and the server speaks HTTP/1.1.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{Client, Inner};
use crate::tls::{self, IdentityPem, KeyPem};
use crate::Error;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 2;

/// Whose certificate the client presents.
#[derive(Debug)]
enum Identity {
    /// Not said yet: `build` refuses, the server would refuse anyway.
    Unset,
    /// Deliberately none ([`ClientBuilder::no_identity`]).
    Anonymous,
    Pem(IdentityPem),
}

/// Configures a [`Client`]. A CA and either an identity or
/// [`no_identity`](ClientBuilder::no_identity) are required.
pub struct ClientBuilder {
    endpoint: String,
    ca_pem: Vec<u8>,
    identity: Identity,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    http2: bool,
    http1: bool,
    pool_max_idle_per_host: usize,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `identity` prints the key as [REDACTED] through `KeyPem`'s Debug.
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retries", &self.retries)
            .field("http2", &self.http2)
            .field("http1", &self.http1)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .finish()
    }
}

impl ClientBuilder {
    /// `endpoint` is the API's base URL, e.g. `https://127.0.0.1:8443`; its
    /// host is the name (or IP) the server certificate must carry.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientBuilder {
            endpoint: endpoint.into(),
            ca_pem: Vec::new(),
            identity: Identity::Unset,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            http2: false,
            http1: false,
            pool_max_idle_per_host: usize::MAX,
        }
    }

    /// Trusts the CA certificate(s) in `pem`. Repeated calls add to the set.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        if !self.ca_pem.is_empty() {
            self.ca_pem.push(b'\n');
        }
        self.ca_pem.extend(pem.into());
        self
    }

    /// [`ca_pem`](Self::ca_pem) from a file.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let pem = read(path.as_ref(), "CA file")?;
        Ok(self.ca_pem(pem))
    }

    /// The client certificate chain (leaf first) and its private key
    /// (PKCS#8, SEC1 or RSA), both PEM. Parsed by [`build`](Self::build).
    pub fn identity_pem(self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.with_identity(cert_pem.into(), KeyPem::new(key_pem.into()))
    }

    fn with_identity(mut self, cert_chain: Vec<u8>, key: KeyPem) -> Self {
        self.identity = Identity::Pem(IdentityPem { cert_chain, key });
        self
    }

    /// [`identity_pem`](Self::identity_pem) from files.
    pub fn identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let cert = read(cert.as_ref(), "client certificate file")?;
        let key = KeyPem::new(read(key.as_ref(), "client key file")?);
        Ok(self.with_identity(cert, key))
    }

    /// Presents no client certificate: for proving the server refuses one.
    pub fn no_identity(mut self) -> Self {
        self.identity = Identity::Anonymous;
        self
    }

    /// Bound on one attempt, from sending to the last byte of the answer.
    /// Default 10 s. Each retry gets the full timeout again.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Bound on the TCP connect. Default 5 s. (The TLS handshake counts
    /// against [`timeout`](Self::timeout).)
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How many times a failed attempt may be retried, where safe (see
    /// [`crate::retry`]). Default 2; 0 disables retries.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// `true`: offer only `h2` in ALPN and speak only HTTP/2. Default `false`:
    /// offer `h2` and `http/1.1` and speak what the server picks.
    pub fn http2(mut self, on: bool) -> Self {
        self.http2 = on;
        self
    }

    /// `true`: offer no `h2` and speak only HTTP/1.1 (hyper-rustls then
    /// sends no ALPN at all, which servers read as HTTP/1.1). Default
    /// `false`. Cannot be combined with [`http2`](Self::http2).
    pub fn http1(mut self, on: bool) -> Self {
        self.http1 = on;
        self
    }

    /// Idle keep-alive connections kept per host. Default unbounded.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Parses the PEMs and builds the client. Needs no runtime; requests do.
    pub fn build(self) -> Result<Client, Error> {
        let base = parse_endpoint(&self.endpoint)?;
        if self.http1 && self.http2 {
            return Err(Error::Config(
                "http1 and http2 exclude each other: choose one or neither".into(),
            ));
        }
        if self.ca_pem.is_empty() {
            return Err(Error::Config(
                "no CA configured: call ca_pem or ca_file".into(),
            ));
        }
        let identity = match &self.identity {
            Identity::Unset => {
                return Err(Error::Config(
                    "no client identity: call identity_pem, identity_files or no_identity".into(),
                ))
            }
            Identity::Anonymous => None,
            Identity::Pem(id) => Some(id),
        };
        let tls = tls::client_config(&self.ca_pem, identity)?;

        let mut tcp = HttpConnector::new();
        // The HTTPS connector, not this one, checks the scheme.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(self.connect_timeout));
        tcp.set_nodelay(true);
        let protocols = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only();
        let connector = if self.http2 {
            protocols.enable_http2().wrap_connector(tcp)
        } else if self.http1 {
            protocols.enable_http1().wrap_connector(tcp)
        } else {
            protocols.enable_http1().enable_http2().wrap_connector(tcp)
        };
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // Below the vault's idle timeout (60 s by default): a pooled
            // connection is dropped here before the server closes it,
            // rather than picked for a request the moment it closes.
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(self.http2)
            .build(connector);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                timeout: self.timeout,
                retries: self.retries,
                http2: self.http2,
            }),
        })
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

/// `https://authority`, with nothing after it.
fn parse_endpoint(endpoint: &str) -> Result<String, Error> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e| Error::Config(format!("endpoint is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Error::Config("endpoint must be an https:// URL".into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| Error::Config("endpoint has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(Error::Config("endpoint must not carry user info".into()));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(Error::Config(
            "endpoint must not have a path or query".into(),
        ));
    }
    Ok(format!("https://{authority}"))
}
