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
    #[error("the revocation list numbers kept in the database: {0}")]
    Numbers(String),
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

/// Largest revocation list file taken: the handshake checks a list's
/// signature over all of it, at every handshake of its CA's certificates.
const MAX_CRL_BYTES: u64 = 16 << 20;

/// The signature algorithms (OIDs) of revocation lists that both this
/// check and the handshake's verifier accept: RSA PKCS#1 with SHA-256,
/// -384 and -512, ECDSA with SHA-256 and -384, Ed25519. A list signed
/// otherwise (SHA-1, RSA-PSS) is refused here rather than have the
/// handshake refuse every certificate of its CA, or none be checked.
const CRL_SIGNATURES: &[&str] = &[
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.3.101.112",
];

/// The revocation lists in a file: PEM (any number), else one in DER, as
/// CAs often publish them. Each must be signed by one of `cas` with an
/// algorithm the handshake accepts, and be one the TLS stack takes (a
/// complete list, not a delta): a list the verifier cannot use would
/// refuse every certificate of its issuer.
pub fn load_crls(
    path: &Path,
    cas: &[CertificateDer<'_>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let shown = path.display().to_string();
    let bad = |why: String| TlsError::BadCrl {
        path: shown.clone(),
        why,
    };
    if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_CRL_BYTES) {
        return Err(bad(format!("over {} MiB", MAX_CRL_BYTES >> 20)));
    }
    let bytes = read(path)?;
    let pem: Result<Vec<_>, _> =
        rustls_pemfile::crls(&mut BufReader::new(bytes.as_slice())).collect();
    let mut crls = pem.map_err(|_| bad("a PEM section does not read".into()))?;
    if crls.is_empty() && CertificateRevocationList::from_der(&bytes).is_ok() {
        crls.push(CertificateRevocationListDer::from(bytes));
    }
    if crls.is_empty() {
        return Err(TlsError::NoCrl { path: shown });
    }
    let parsed_cas: Vec<X509Certificate<'_>> = cas
        .iter()
        .filter_map(|ca| X509Certificate::from_der(ca.as_ref()).ok().map(|(_, c)| c))
        .collect();
    for crl in &crls {
        let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref())
            .map_err(|e| bad(format!("does not parse ({e})")))?;
        let alg = parsed.signature_algorithm.algorithm.to_id_string();
        if !CRL_SIGNATURES.contains(&alg.as_str()) {
            return Err(bad(format!(
                "signed with an algorithm ({alg}) the handshake does not accept"
            )));
        }
        let mut issuers = parsed_cas
            .iter()
            .filter(|ca| ca.subject() == parsed.issuer())
            .peekable();
        if issuers.peek().is_none() {
            return Err(bad(format!(
                "issued by \"{}\", which is not a CA in tls.ca",
                parsed.issuer()
            )));
        }
        if !issuers.any(|ca| parsed.verify_signature(ca.public_key()).is_ok()) {
            return Err(bad(
                "its signature does not verify under its issuer's key".into()
            ));
        }
    }
    // What the TLS stack itself refuses (a delta list, an indirect one, a
    // version 1 list), named with its file.
    let mut roots = RootCertStore::empty();
    for ca in cas {
        let _ = roots.add(ca.clone().into_owned());
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(crls.iter().cloned())
    .build()
    .map_err(|e| bad(format!("the TLS stack refuses it ({e})")))?;
    Ok(crls)
}

/// The issuer (its name as encoded) and number of a revocation list.
fn crl_issuer_and_number(
    crl: &CertificateRevocationListDer<'_>,
) -> Option<(Vec<u8>, Option<x509_parser::num_bigint::BigUint>)> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    Some((
        parsed.issuer().as_raw().to_vec(),
        parsed.crl_number().cloned(),
    ))
}

/// Warnings for CAs in `tls.ca` that no list in `tls.crls` covers, once
/// some list is set: every client certificate they issued is refused.
pub fn crl_coverage(cfg: &Config) -> Vec<String> {
    if cfg.tls.crls.is_empty() {
        return Vec::new();
    }
    let Ok(cas) = load_certs(&cfg.resolve(&cfg.tls.ca)) else {
        return Vec::new();
    };
    let covered: std::collections::HashSet<Vec<u8>> = cfg
        .tls
        .crls
        .iter()
        .filter_map(|p| load_crls(&cfg.resolve(p), &cas).ok())
        .flatten()
        .filter_map(|c| crl_issuer_and_number(&c).map(|(i, _)| i))
        .collect();
    cas.iter()
        .filter_map(|ca| X509Certificate::from_der(ca.as_ref()).ok().map(|(_, c)| c))
        .filter(|ca| !covered.contains(ca.subject().as_raw()))
        .map(|ca| {
            format!(
                "tls.ca \"{}\" has no list in tls.crls: every client certificate it issued is refused",
                ca.subject()
            )
        })
        .collect()
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
    build(cfg, &load_certs(&cfg.resolve(&cfg.tls.ca))?, None).map(|b| b.config)
}

/// The numbers of revocation lists, per issuer (the SHA-256 of its name
/// as encoded); `None` for a list without one.
type Numbers = std::collections::HashMap<[u8; 32], Option<x509_parser::num_bigint::BigUint>>;

/// Where the database keeps the highest list number the vault has taken in
/// per issuer (`Meta`, this prefix and the issuer's digest in hex; the
/// value the number's big-endian bytes), so an older list is refused after
/// a restart too: lists are published unauthenticated (over plain HTTP,
/// as a rule), and an old one still carries its CA's valid signature.
pub const CRL_NUMBERS: &[u8] = b"tls/crl-number/";

fn issuer_digest(issuer: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(issuer).into()
}

fn number_key(digest: &[u8; 32]) -> Vec<u8> {
    [CRL_NUMBERS, hex::encode(digest).as_bytes()].concat()
}

/// The numbers the database keeps (see [`CRL_NUMBERS`]).
fn kept_numbers(store: &dyn crate::store::Store) -> Result<Numbers, TlsError> {
    use x509_parser::num_bigint::BigUint;
    let rows = crate::store::scan_prefix(store, crate::store::Space::Meta, CRL_NUMBERS, usize::MAX)
        .map_err(|e| TlsError::Numbers(e.to_string()))?;
    let mut kept = Numbers::new();
    for (k, v) in rows {
        let digest = k
            .get(CRL_NUMBERS.len()..)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok())
            .ok_or_else(|| TlsError::Numbers("a row does not read".into()))?;
        kept.insert(digest, Some(BigUint::from_bytes_be(&v)));
    }
    Ok(kept)
}

/// Refuses a list of `built` older than what `known` holds for its issuer
/// (or without a number where a number is known); else adds `built`'s
/// numbers to `known`, and answers those that went up (to be kept).
fn hold_to(known: &mut Numbers, built: &Numbers) -> Result<Numbers, TlsError> {
    let mut raised = Numbers::new();
    for (issuer, number) in built {
        let why = match (known.get(issuer), number) {
            (Some(Some(k)), None) => format!(
                "a list without a number, where this vault has taken in one numbered {k} for its CA"
            ),
            (Some(Some(k)), Some(n)) if n < k => format!(
                "a list numbered {n}, older than the one numbered {k} this vault has taken in for its CA"
            ),
            _ => continue,
        };
        return Err(TlsError::BadCrl {
            path: "tls.crls".into(),
            why: format!(
                "{why}. Put the newer list back; if the CA truly started its numbering again, stop the vault and run `vault operator accept-crls --config FILE` (audited)"
            ),
        });
    }
    for (issuer, number) in built {
        let up = match (known.get(issuer), number) {
            (Some(Some(k)), Some(n)) => n > k,
            (_, n) => n.is_some(),
        };
        if up {
            raised.insert(*issuer, number.clone());
        }
        if up || !known.contains_key(issuer) {
            known.insert(*issuer, number.clone());
        }
    }
    Ok(raised)
}

/// Writes `raised` numbers into the database (durably).
fn keep_numbers(store: &dyn crate::store::Store, raised: &Numbers) -> Result<(), TlsError> {
    let mut b = crate::store::Batch::default();
    for (issuer, number) in raised {
        if let Some(n) = number {
            b.put(
                crate::store::Space::Meta,
                number_key(issuer),
                n.to_bytes_be(),
            );
        }
    }
    if b.is_empty() {
        return Ok(());
    }
    store.write(b).map_err(|e| TlsError::Numbers(e.to_string()))
}

/// When a revocation list is due to be replaced (its next update), as
/// seconds since the epoch.
fn next_update(crl: &CertificateRevocationListDer<'_>) -> Option<i64> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    Some(parsed.next_update()?.timestamp())
}

struct Built {
    config: Arc<ServerConfig>,
    /// The certificates its revocation lists name.
    revoked: Revoked,
    numbers: Numbers,
    /// Each list's file and next update.
    due: Vec<(String, i64)>,
}

/// The TLS configuration of `cfg`'s settings and revocation lists, with
/// the CA certificates `cas`, and the server's certificate and key from
/// its files, or from `identity` (the configuration in force: a list read
/// again is put together with what was read at start, not with whatever
/// the files hold by then, and no copy of the key is kept for it).
fn build(
    cfg: &Config,
    cas: &[CertificateDer<'static>],
    identity: Option<Arc<dyn rustls::server::ResolvesServerCert>>,
) -> Result<Built, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let cas = cas.to_vec();
    let mut crls = Vec::new();
    let mut issuers = std::collections::HashMap::new();
    let mut numbers = Numbers::new();
    let mut due = Vec::new();
    for path in &cfg.tls.crls {
        for crl in load_crls(&cfg.resolve(path), &cas)? {
            if let Some(at) = next_update(&crl) {
                due.push((cfg.resolve(path).display().to_string(), at));
            }
            // The verifier uses the first list of an issuer it finds: a
            // second (a newer one beside the old) would go unread.
            if let Some((issuer, number)) = crl_issuer_and_number(&crl) {
                numbers.insert(issuer_digest(&issuer), number);
                if let Some(first) = issuers.insert(issuer, path.clone()) {
                    return Err(TlsError::BadCrl {
                        path: cfg.resolve(path).display().to_string(),
                        why: format!(
                            "a second list of a CA whose list {} already gives; keep only the newest",
                            first.display()
                        ),
                    });
                }
            }
            crls.push(crl);
        }
    }
    let revoked = revoked_in(&crls);
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
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier);
    let (cert, key) = (cfg.resolve(&cfg.tls.cert), cfg.resolve(&cfg.tls.key));
    let mut sc = match identity {
        Some(resolver) => Ok(builder.with_cert_resolver(resolver)),
        None => builder.with_single_cert(load_certs(&cert)?, load_key(&key)?),
    }
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
    Ok(Built {
        config: Arc::new(sc),
        revoked,
        numbers,
        due,
    })
}

/// Where a certificate stands in revocation lists: its issuer's name (as
/// encoded) and its serial number.
pub type CertId = (Vec<u8>, Vec<u8>);

/// The certificates some revocation list names.
pub type Revoked = Arc<std::collections::HashSet<CertId>>;

/// A certificate's [`CertId`].
pub fn cert_id(cert: &CertificateDer<'_>) -> Option<CertId> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some((x509.issuer().as_raw().to_vec(), x509.raw_serial().to_vec()))
}

fn revoked_in(crls: &[CertificateRevocationListDer<'_>]) -> Revoked {
    use x509_parser::revocation_list::CertificateRevocationList;
    let mut ids = std::collections::HashSet::new();
    for crl in crls {
        if let Ok((_, list)) = CertificateRevocationList::from_der(crl.as_ref()) {
            let issuer = list.issuer().as_raw().to_vec();
            ids.extend(
                list.iter_revoked_certificates()
                    .map(|r| (issuer.clone(), r.raw_serial().to_vec())),
            );
        }
    }
    Arc::new(ids)
}

/// How often the revocation lists' files are looked at for a change.
pub const CRL_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The listeners' TLS configuration as it stands: built at start, and
/// built again when a revocation list's file changes, so a certificate
/// revoked while the vault runs is refused at its next handshake, and the
/// connections it has open are closed (see [`Live::revocations`]).
#[derive(Debug)]
pub struct Live {
    config: std::sync::RwLock<Arc<ServerConfig>>,
    revoked: tokio::sync::watch::Sender<Revoked>,
    /// The CA certificates read at start.
    cas: Vec<CertificateDer<'static>>,
    /// The highest list number taken in per issuer, in this run or kept
    /// by the database from earlier ones: an older list (written back by
    /// mistake, or replayed by someone who wants a revoked certificate to
    /// work again), or one without a number where a number is known, is
    /// not taken in.
    numbers: std::sync::Mutex<Numbers>,
    /// Where the numbers are kept across restarts. Weak: the TLS
    /// configuration (held by connections) does not keep the database open.
    store: Option<std::sync::Weak<dyn crate::store::Store>>,
    /// Each list's file and next update, of the lists in force.
    due: std::sync::Mutex<Vec<(String, i64)>>,
    /// The list files' stamps when last taken in, and when last refused
    /// (a refused change is reported once, and tried again when the file
    /// changes again).
    stamps: std::sync::Mutex<(Stamps, Option<Stamps>)>,
}

/// Each list file's (modification time, change time, length, inode).
type Stamps = Vec<Option<(std::time::SystemTime, i64, i64, u64, u64)>>;

fn stamps(cfg: &Config) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    cfg.tls
        .crls
        .iter()
        .map(|p| {
            let m = std::fs::metadata(cfg.resolve(p)).ok()?;
            Some((
                m.modified().ok()?,
                m.ctime(),
                m.ctime_nsec(),
                m.len(),
                m.ino(),
            ))
        })
        .collect()
}

impl Live {
    /// The configuration of `cfg`, its lists held to the numbers `store`
    /// keeps (a list older than one taken in before refuses the start);
    /// higher numbers are kept before it answers (a failure to keep them
    /// is logged, not fatal).
    pub fn new(
        cfg: &Config,
        store: Option<Arc<dyn crate::store::Store>>,
    ) -> Result<Arc<Live>, TlsError> {
        let before = stamps(cfg);
        let cas = load_certs(&cfg.resolve(&cfg.tls.ca))?;
        let built = build(cfg, &cas, None)?;
        let mut numbers = match &store {
            Some(s) => kept_numbers(s.as_ref())?,
            None => Numbers::new(),
        };
        let raised = hold_to(&mut numbers, &built.numbers)?;
        let live = Arc::new(Live {
            config: std::sync::RwLock::new(built.config),
            revoked: tokio::sync::watch::channel(built.revoked).0,
            cas,
            numbers: std::sync::Mutex::new(numbers),
            store: store.as_ref().map(Arc::downgrade),
            due: std::sync::Mutex::new(built.due),
            stamps: std::sync::Mutex::new((before, None)),
        });
        live.keep(&raised);
        Ok(live)
    }

    /// Keeps `raised` numbers in the database. A failure (a full disk) is
    /// logged, not fatal: the lists are taken in all the same (a newer list
    /// revokes at least as much), and this run refuses the older ones.
    fn keep(&self, raised: &Numbers) {
        let Some(store) = self.store.as_ref().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        if let Err(e) = keep_numbers(store.as_ref(), raised) {
            tracing::error!(
                error = %e,
                "The revocation lists' numbers could not be kept: after a restart an older list would not be refused"
            );
        }
    }

    /// The files of the lists in force that are past their next update at
    /// `now` (seconds since the epoch).
    pub fn stale(&self, now: i64) -> Vec<String> {
        let due = match self.due.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        let mut stale: Vec<String> = due
            .iter()
            .filter(|(_, at)| *at < now)
            .map(|(path, _)| path.clone())
            .collect();
        stale.dedup();
        stale
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The certificates revoked now, changing as the lists do: what a
    /// connection watches to end when its own certificate is revoked.
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<Revoked> {
        self.revoked.subscribe()
    }

    /// Reads the lists again if a file changed since last taken in (or
    /// refused); whether the configuration was rebuilt. A list that fails
    /// to read or to pass the checks, or is older than the one in force,
    /// keeps the configuration in force.
    pub fn refresh(&self, cfg: &Config) -> Result<bool, TlsError> {
        let now = stamps(cfg);
        let mut last = match self.stamps.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if last.0 == now || last.1.as_ref() == Some(&now) {
            return Ok(false);
        }
        match self.take_in(cfg) {
            Ok(()) => {
                *last = (now, None);
                Ok(true)
            }
            Err(e) => {
                last.1 = Some(now);
                Err(e)
            }
        }
    }

    fn take_in(&self, cfg: &Config) -> Result<(), TlsError> {
        let built = build(cfg, &self.cas, Some(self.current().cert_resolver.clone()))?;
        {
            let mut numbers = match self.numbers.lock() {
                Ok(n) => n,
                Err(p) => p.into_inner(),
            };
            let raised = hold_to(&mut numbers, &built.numbers)?;
            self.keep(&raised);
        }
        match self.due.lock() {
            Ok(mut d) => *d = built.due,
            Err(p) => *p.into_inner() = built.due,
        }
        match self.config.write() {
            Ok(mut c) => *c = built.config,
            Err(p) => *p.into_inner() = built.config,
        }
        self.revoked.send_replace(built.revoked);
        Ok(())
    }
}

/// Looks at the revocation lists every [`CRL_CHECK`] until `stop`, and
/// takes a changed one in.
pub async fn watch_crls(
    live: Arc<Live>,
    cfg: Config,
    metrics: Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    };
    // The start has warned about the lists stale then (configuration
    // warnings); a list going stale from now on is warned about once.
    let mut warned = live.stale(now());
    metrics.crls_stale.set(warned.len() as i64);
    loop {
        tokio::select! {
            () = tokio::time::sleep(CRL_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (live2, cfg2) = (live.clone(), cfg.clone());
        match tokio::task::spawn_blocking(move || live2.refresh(&cfg2)).await {
            Ok(Ok(true)) => tracing::info!("Certificate revocation lists read again"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "A changed certificate revocation list does not read; the previous lists stay in force"
            ),
            Err(_) => {}
        }
        let stale = live.stale(now());
        for path in stale.iter().filter(|p| !warned.contains(p)) {
            tracing::warn!(
                list = %path,
                "A certificate revocation list in force is past its next update: its CA has published a newer one, which may revoke more; fetch it"
            );
        }
        metrics.crls_stale.set(stale.len() as i64);
        warned = stale;
    }
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

    #[test]
    fn list_numbers_only_go_up_and_are_kept_across_opens() {
        use x509_parser::num_bigint::BigUint;
        let (a, b) = (super::issuer_digest(b"ca a"), super::issuer_digest(b"ca b"));
        let n = |x: u32| Some(BigUint::from(x));
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::default());
        let mut known = super::kept_numbers(store.as_ref()).unwrap();
        assert!(known.is_empty());
        // First lists: both raised (a without a number is known, not kept).
        let first = super::Numbers::from([(a, n(5)), (b, None)]);
        let raised = super::hold_to(&mut known, &first).unwrap();
        assert_eq!(raised, super::Numbers::from([(a, n(5))]));
        super::keep_numbers(store.as_ref(), &raised).unwrap();
        // Older, or unnumbered where a number is known: refused, nothing moves.
        for older in [n(4), None] {
            let e = super::hold_to(&mut known, &super::Numbers::from([(a, older)]));
            assert!(e.unwrap_err().to_string().contains("accept-crls"));
        }
        assert_eq!(known.get(&a), Some(&n(5)));
        // The same number: nothing to keep; a newer one for b: kept.
        let raised =
            super::hold_to(&mut known, &super::Numbers::from([(a, n(5)), (b, n(1))])).unwrap();
        assert_eq!(raised, super::Numbers::from([(b, n(1))]));
        super::keep_numbers(store.as_ref(), &raised).unwrap();
        // What a restart reads back, and holds the next lists to.
        let mut again = super::kept_numbers(store.as_ref()).unwrap();
        assert_eq!(again, super::Numbers::from([(a, n(5)), (b, n(1))]));
        assert!(super::hold_to(&mut again, &super::Numbers::from([(b, n(0))])).is_err());
        // Numbers past 64 bits survive the round trip.
        let big = BigUint::from(u128::MAX) * 3u32;
        let raised =
            super::hold_to(&mut again, &super::Numbers::from([(a, Some(big.clone()))])).unwrap();
        super::keep_numbers(store.as_ref(), &raised).unwrap();
        assert_eq!(
            super::kept_numbers(store.as_ref()).unwrap().get(&a),
            Some(&Some(big))
        );
    }

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
