//! The client's TLS configuration: trusted CAs, the client identity and ALPN.
//! Invariants: only the `ring` provider is used; the private key's PEM is held
//! in a type that never prints and is overwritten on drop; ALPN is left to
//! hyper-rustls, which refuses a config that already has it (see
//! [`crate::client`]).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// A private key's PEM. Not `Clone`; `Debug` prints `[REDACTED]`; its bytes are
/// overwritten on drop (best effort: the SDK has no `zeroize` dependency, and
/// rustls keeps its own parsed copy for the client's lifetime).
pub(crate) struct KeyPem(Vec<u8>);

impl KeyPem {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        KeyPem(bytes)
    }

    pub(crate) fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for KeyPem {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the compiler from dropping the stores as dead.
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The client certificate chain and its key.
pub(crate) struct IdentityPem {
    pub(crate) cert_chain: Vec<u8>,
    pub(crate) key: KeyPem,
}

impl std::fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityPem")
            .field("cert_chain_bytes", &self.cert_chain.len())
            .field("key", &self.key)
            .finish()
    }
}

/// The root store of every certificate in `pem`; at least one is required.
pub(crate) fn roots(pem: &[u8]) -> Result<RootCertStore, Error> {
    let certs = certs(pem, "CA")?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("CA certificate rejected: {e}")))?;
    }
    Ok(roots)
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what} PEM is malformed: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("no certificate found in {what} PEM")));
    }
    Ok(certs)
}

/// The first private key in `pem`: PKCS#8, SEC1 or PKCS#1 (RSA).
fn private_key(pem: &KeyPem) -> Result<PrivateKeyDer<'static>, Error> {
    // The parser's error text is not shown: it is about the key's bytes.
    match rustls_pemfile::private_key(&mut pem.expose_secret()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(Error::Config(
            "no private key found in client key PEM".into(),
        )),
        Err(_) => Err(Error::Config("client key PEM is malformed".into())),
    }
}

/// The rustls client config: TLS 1.3 and 1.2 through the `ring` provider,
/// servers verified against `ca_pem` by the endpoint's host name or IP, and
/// the client certificate when there is one. ALPN is left empty.
pub(crate) fn client_config(
    ca_pem: &[u8],
    identity: Option<&IdentityPem>,
) -> Result<rustls::ClientConfig, Error> {
    let roots = roots(ca_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let chain = certs(&id.cert_chain, "client certificate")?;
            let key = private_key(&id.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("client identity rejected: {e}")))
        }
    }
}
