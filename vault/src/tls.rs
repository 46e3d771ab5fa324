//! TLS for the API listener: rustls with the ring provider, TLS 1.3 (1.2 only
//! when configured), ALPN `h2` and `http/1.1`, and a client certificate
//! required and verified against the configured CA. Invariant: a connection
//! that reaches the HTTP layer carries a verified client certificate, and the
//! caller's name is read from that certificate only.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {kind}")]
    Read {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("{key} is not the private key of the certificate in {cert}")]
    KeyMismatch { cert: String, key: String },
    #[error("{path} holds no certificate revocation list (PEM or DER)")]
    NoCrl { path: String },
    #[error("{path}: {why}")]
    BadCrl { path: String, why: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        kind: e.kind(),
    })
}

/// All certificates in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = zeroize::Zeroizing::new(read(path)?);
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.display().to_string(),
        })
}

/// The revocation lists in a file: PEM (any number), else one in DER, as
/// CAs often publish them. Each must be signed by one of `cas`: a list the
/// verifier cannot check would refuse every certificate of its issuer.
pub fn load_crls(
    path: &Path,
    cas: &[CertificateDer<'_>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let shown = path.display().to_string();
    let bytes = read(path)?;
    let mut crls: Vec<_> = rustls_pemfile::crls(&mut BufReader::new(bytes.as_slice()))
        .filter_map(Result::ok)
        .collect();
    if crls.is_empty() && CertificateRevocationList::from_der(&bytes).is_ok() {
        crls.push(CertificateRevocationListDer::from(bytes));
    }
    if crls.is_empty() {
        return Err(TlsError::NoCrl { path: shown });
    }
    for crl in &crls {
        let bad = |why: String| TlsError::BadCrl {
            path: shown.clone(),
            why,
        };
        let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref())
            .map_err(|e| bad(format!("does not parse ({e})")))?;
        let issuer = cas
            .iter()
            .filter_map(|ca| X509Certificate::from_der(ca.as_ref()).ok().map(|(_, c)| c))
            .find(|ca| ca.subject() == parsed.issuer())
            .ok_or_else(|| {
                bad(format!(
                    "issued by \"{}\", which is not a CA in tls.ca",
                    parsed.issuer()
                ))
            })?;
        parsed
            .verify_signature(issuer.public_key())
            .map_err(|_| bad("its signature does not verify under its issuer's key".into()))?;
    }
    Ok(crls)
}

/// A warning when a revocation list in `path` is past its next update:
/// its CA has published a newer one, which may revoke more.
pub fn crl_stale(path: &Path) -> Option<String> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let bytes = std::fs::read(path).ok()?;
    let mut ders: Vec<Vec<u8>> = rustls_pemfile::crls(&mut BufReader::new(bytes.as_slice()))
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if ders.is_empty() {
        ders.push(bytes);
    }
    let now = x509_parser::time::ASN1Time::now();
    ders.iter().find_map(|der| {
        let (_, crl) = CertificateRevocationList::from_der(der).ok()?;
        let next = crl.next_update()?;
        (next < now).then(|| {
            format!(
                "tls.crls {}: past its next update ({next}); fetch the CA's newer list",
                path.display()
            )
        })
    })
}

fn rustls_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// The API listener's TLS configuration.
pub fn server_config(cfg: &Config) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let cas = load_certs(&cfg.resolve(&cfg.tls.ca))?;
    let mut crls = Vec::new();
    for path in &cfg.tls.crls {
        crls.extend(load_crls(&cfg.resolve(path), &cas)?);
    }
    for ca in cas {
        roots.add(ca).map_err(rustls_err)?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        // The client certificate's own issuer must have a list here: a
        // certificate whose status is unknown is refused.
        verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
    }
    let verifier = verifier.build().map_err(rustls_err)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls.min_version == "1.2" {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let (cert, key) = (cfg.resolve(&cfg.tls.cert), cfg.resolve(&cfg.tls.key));
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&cert)?, load_key(&key)?)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
            },
            e => rustls_err(e),
        })?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No resumption: a resumed session carries the client certificate of
    // its first handshake unchecked (and each resumption hands out fresh
    // tickets), so an expired certificate could go on authenticating. A
    // sidecar's clients keep their connections; a full handshake per new
    // connection costs little.
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    sc.send_tls13_tickets = 0;
    Ok(Arc::new(sc))
}

/// When a client certificate stops being valid (its notAfter), for the
/// connection it authenticated to be closed then: the certificate is
/// checked once, at the handshake, and a busy connection would otherwise
/// outlive it.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<std::time::SystemTime> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let secs = u64::try_from(x509.validity().not_after.timestamp()).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Every problem [`server_config`] would stop at, not only the first: the
/// CA, the certificate and the key are each read on their own, and only
/// when all three read are they put together (which finds the rest, a key
/// that is not the certificate's among them). For `check-config`.
pub fn config_problems(cfg: &Config) -> Vec<TlsError> {
    let mut problems = Vec::new();
    match load_certs(&cfg.resolve(&cfg.tls.ca)) {
        Ok(cas) => {
            let mut roots = RootCertStore::empty();
            for ca in cas {
                if let Err(e) = roots.add(ca) {
                    problems.push(rustls_err(e));
                }
            }
        }
        Err(e) => problems.push(e),
    }
    if let Ok(cas) = load_certs(&cfg.resolve(&cfg.tls.ca)) {
        for path in &cfg.tls.crls {
            if let Err(e) = load_crls(&cfg.resolve(path), &cas) {
                problems.push(e);
            }
        }
    }
    if let Err(e) = load_certs(&cfg.resolve(&cfg.tls.cert)) {
        problems.push(e);
    }
    if let Err(e) = load_key(&cfg.resolve(&cfg.tls.key)) {
        problems.push(e);
    }
    if problems.is_empty() {
        if let Err(e) = server_config(cfg) {
            problems.push(e);
        }
    }
    problems
}

/// The caller a verified client certificate names: its subject CN, else
/// (only when the subject has no CN at all) its first DNS SAN. A subject
/// with several CNs, or one this parser cannot read as text, names nobody:
/// falling through to the SAN would let a certificate issued to one name
/// authenticate as another.
pub fn caller_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let mut cns = x509.subject().iter_common_name();
    if let Some(cn) = cns.next() {
        if cns.next().is_some() {
            return None;
        }
        return cn.as_str().ok().map(str::to_string);
    }
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some((*d).to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rcgen::{BmpString, CertificateParams, DnType, DnValue, KeyPair};

    fn cert(cn: Option<DnValue>, san: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(san.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.self_signed(&key).unwrap().der().clone()
    }

    use super::*;

    #[test]
    fn the_caller_is_the_cn_and_the_san_only_without_one() {
        assert_eq!(
            caller_name(&cert(Some("app".into()), &["officer"])).as_deref(),
            Some("app")
        );
        assert_eq!(
            caller_name(&cert(None, &["officer", "app"])).as_deref(),
            Some("officer")
        );
        // A CN that cannot be read as text (a BMPString here) does not let
        // the SAN speak instead.
        let bmp = DnValue::BmpString(BmpString::try_from("web01").unwrap());
        assert_eq!(caller_name(&cert(Some(bmp), &["officer"])), None);
        assert_eq!(caller_name(&cert(None, &[])), None);
        // Two CNs name nobody: neither may speak for the certificate, and
        // the SAN does not either. (rcgen keeps one value per type: the
        // second CN goes in under the commonName OID, 2.5.4.3, spelled out.)
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["officer".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "app");
        p.distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "officer");
        let two = p.self_signed(&key).unwrap().der().clone();
        let (_, x509) = X509Certificate::from_der(two.as_ref()).unwrap();
        assert_eq!(x509.subject().iter_common_name().count(), 2);
        assert_eq!(caller_name(&two), None);
        assert_eq!(caller_name(&CertificateDer::from(vec![0x30, 0x00])), None);
    }
}
