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

/// What a revocation list is held to: when its CA issued it (its
/// thisUpdate, seconds since the epoch) and its number, when it has one.
/// Both only go up from one list of a CA to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    issued: i64,
    number: Option<x509_parser::num_bigint::BigUint>,
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match x509_parser::time::ASN1Time::from_timestamp(self.issued) {
            Ok(t) => write!(f, "issued {t}")?,
            Err(_) => write!(f, "issued at {} s", self.issued)?,
        }
        match &self.number {
            Some(n) => write!(f, ", number {n}"),
            None => write!(f, ", no number"),
        }
    }
}

/// A revocation list as read from its file.
struct Listed {
    /// Its issuer's name as encoded.
    issuer: Vec<u8>,
    /// The issuer's name as shown, and the file.
    name: String,
    path: String,
    kept: Kept,
    next_update: Option<i64>,
}

fn listed(crl: &CertificateRevocationListDer<'_>, path: &str) -> Option<Listed> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, parsed) = CertificateRevocationList::from_der(crl.as_ref()).ok()?;
    Some(Listed {
        issuer: parsed.issuer().as_raw().to_vec(),
        name: parsed.issuer().to_string(),
        path: path.to_string(),
        kept: Kept {
            issued: parsed.last_update().timestamp(),
            number: parsed.crl_number().cloned(),
        },
        next_update: parsed.next_update().map(|t| t.timestamp()),
    })
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
        .filter_map(|c| listed(&c, "").map(|l| l.issuer))
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

/// What the vault holds each CA's lists to, per issuer (the SHA-256 of
/// its name as encoded).
type Known = std::collections::HashMap<[u8; 32], Kept>;

/// The lists in `tls.crls`, per issuer as in [`Known`].
type Lists = std::collections::HashMap<[u8; 32], Listed>;

/// Where the database keeps, per CA, the issue time and number of the
/// newest list the vault has taken in (`Meta`, this prefix and the
/// issuer's digest in hex; the value the time as 8 bytes big-endian, then
/// the number's bytes, none without one), so an older list is refused
/// after a restart too: lists are published unauthenticated (over plain
/// HTTP, as a rule), and an old one still carries its CA's valid signature.
pub const CRL_NUMBERS: &[u8] = b"tls/crl-number/";

fn issuer_digest(issuer: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(issuer).into()
}

fn number_key(digest: &[u8; 32]) -> Vec<u8> {
    [CRL_NUMBERS, hex::encode(digest).as_bytes()].concat()
}

fn kept_bytes(k: &Kept) -> Vec<u8> {
    let mut v = k.issued.to_be_bytes().to_vec();
    if let Some(n) = &k.number {
        v.extend(n.to_bytes_be());
    }
    v
}

/// What the database keeps (see [`CRL_NUMBERS`]).
fn kept_numbers(store: &dyn crate::store::Store) -> Result<Known, TlsError> {
    let mut known = Known::new();
    for (k, v) in kept_rows(store)? {
        let (issuer, kept) = kept_row(&k, &v).ok_or_else(|| {
            TlsError::Numbers(
                "a row does not read; `vault operator accept-crls --config FILE --yes` (server stopped) writes them again"
                    .into(),
            )
        })?;
        known.insert(issuer, kept);
    }
    Ok(known)
}

fn kept_rows(store: &dyn crate::store::Store) -> Result<crate::store::Rows, TlsError> {
    crate::store::scan_prefix(store, crate::store::Space::Meta, CRL_NUMBERS, usize::MAX)
        .map_err(|e| TlsError::Numbers(e.to_string()))
}

/// One row of [`CRL_NUMBERS`], read back.
fn kept_row(key: &[u8], value: &[u8]) -> Option<([u8; 32], Kept)> {
    use x509_parser::num_bigint::BigUint;
    let digest = key
        .get(CRL_NUMBERS.len()..)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .filter(|d| number_key(d) == key)?;
    let (issued, number) = value.split_first_chunk::<8>()?;
    Some((
        digest,
        Kept {
            issued: i64::from_be_bytes(*issued),
            number: (!number.is_empty()).then(|| BigUint::from_bytes_be(number)),
        },
    ))
}

/// Refuses a list of `lists` older than what `known` holds for its CA
/// ([`older`]). Else `known` takes each list, and the CAs whose record
/// changed are answered (to be kept).
fn hold_to(known: &mut Known, lists: &Lists) -> Result<Vec<[u8; 32]>, TlsError> {
    for (issuer, l) in lists {
        let Some(k) = known.get(issuer) else {
            continue;
        };
        if older(k, &l.kept) {
            return Err(TlsError::BadCrl {
                path: l.path.clone(),
                why: format!(
                    "the list of \"{}\" ({}) is older than the one this vault has taken in ({k}). Put the newer list back; if the CA truly issued this one after it (its numbering or clock started again), stop the vault and run `vault operator accept-crls --config FILE` (it shows each change; `--yes` writes them, audited), which takes the lists in tls.crls as they are",
                    l.name, l.kept
                ),
            });
        }
    }
    let mut raised = Vec::new();
    for (issuer, l) in lists {
        if known.get(issuer) != Some(&l.kept) {
            known.insert(*issuer, l.kept.clone());
            raised.push(*issuer);
        }
    }
    Ok(raised)
}

/// Whether `list` comes before the list `kept` records: issued earlier,
/// numbered lower, or without a number where that one had one. Both must
/// go forward: a list numbered higher but issued earlier is refused too (a
/// list from before its CA started its numbering again, replayed; or a
/// CA's clock put right, which `accept-crls` takes). Fail-safe: an older
/// list leaves the one in force. Only the signed times are compared, never
/// this machine's clock.
fn older(kept: &Kept, list: &Kept) -> bool {
    list.issued < kept.issued || lower(&kept.number, &list.number)
}

/// Whether a list numbered `n` comes before one numbered `kept`: lower,
/// or without a number where that one had one.
fn lower(
    kept: &Option<x509_parser::num_bigint::BigUint>,
    n: &Option<x509_parser::num_bigint::BigUint>,
) -> bool {
    match (kept, n) {
        (Some(_), None) => true,
        (Some(k), Some(n)) => n < k,
        (None, _) => false,
    }
}

/// Writes what `known` holds for `raised` into the database (durably).
fn keep_numbers(
    store: &dyn crate::store::Store,
    known: &Known,
    raised: &[[u8; 32]],
) -> Result<(), TlsError> {
    let mut b = crate::store::Batch::default();
    for issuer in raised {
        if let Some(k) = known.get(issuer) {
            b.put(crate::store::Space::Meta, number_key(issuer), kept_bytes(k));
        }
    }
    if b.is_empty() {
        return Ok(());
    }
    store.write(b).map_err(|e| TlsError::Numbers(e.to_string()))
}

/// `vault operator accept-crls`: what a stopped vault's database is to
/// hold its CAs' lists to from now on, the lists in `cfg`'s `tls.crls` as
/// they are (each must pass the start's checks), as a batch to write, and
/// a line per CA saying what changed.
pub fn accept_lists(
    cfg: &Config,
    store: &dyn crate::store::Store,
) -> Result<(crate::store::Batch, Vec<String>), TlsError> {
    let cas = load_certs(&cfg.resolve(&cfg.tls.ca))?;
    let (_, lists) = read_lists(cfg, &cas)?;
    let mut b = crate::store::Batch::default();
    let mut changes = Vec::new();
    // Row by row: a record that does not read (which stops the start) is
    // written again below, or removed when no list of its CA is set.
    let mut known = Known::new();
    let mut unread = std::collections::HashSet::new();
    for (key, value) in kept_rows(store)? {
        if let Some((issuer, kept)) = kept_row(&key, &value) {
            known.insert(issuer, kept);
            continue;
        }
        let issuer = kept_row(&key, &[0; 8]).map(|(i, _)| i);
        if !issuer.is_some_and(|i| lists.contains_key(&i)) {
            changes.push(format!(
                "the record {} did not read: removed",
                key.escape_ascii()
            ));
            b.delete(crate::store::Space::Meta, key);
        }
        unread.extend(issuer);
    }
    for (issuer, l) in &lists {
        let was = known.get(issuer);
        if was == Some(&l.kept) {
            continue;
        }
        b.put(
            crate::store::Space::Meta,
            number_key(issuer),
            kept_bytes(&l.kept),
        );
        changes.push(match was {
            Some(k) if l.kept.issued < k.issued && lower(&k.number, &l.kept.number) => format!(
                "\"{}\": {k} -> {} (issued earlier AND numbered lower: a replayed list looks like this)",
                l.name, l.kept
            ),
            Some(k) => format!("\"{}\": {k} -> {}", l.name, l.kept),
            None if unread.contains(issuer) => {
                format!("\"{}\": a record that did not read -> {}", l.name, l.kept)
            }
            None => format!("\"{}\": none -> {}", l.name, l.kept),
        });
    }
    changes.sort();
    Ok((b, changes))
}

/// The revocation lists of `cfg`'s `tls.crls` (each checked as
/// [`load_crls`] does), and per CA the one it gives: a second list of a CA
/// is refused (the verifier uses the first it finds, so a newer one beside
/// the old would go unread).
fn read_lists(
    cfg: &Config,
    cas: &[CertificateDer<'static>],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Lists), TlsError> {
    let mut crls = Vec::new();
    let mut lists = Lists::new();
    for path in &cfg.tls.crls {
        let shown = cfg.resolve(path).display().to_string();
        for crl in load_crls(&cfg.resolve(path), cas)? {
            if let Some(l) = listed(&crl, &shown) {
                if let Some(first) = lists.insert(issuer_digest(&l.issuer), l) {
                    return Err(TlsError::BadCrl {
                        path: shown,
                        why: format!(
                            "a second list of a CA whose list {} already gives; keep only the newest",
                            first.path
                        ),
                    });
                }
            }
            crls.push(crl);
        }
    }
    Ok((crls, lists))
}

/// Each list's file and next update (seconds since the epoch), by file.
fn due_of(lists: &Lists) -> Vec<(String, i64)> {
    let mut due: Vec<(String, i64)> = lists
        .values()
        .filter_map(|l| Some((l.path.clone(), l.next_update?)))
        .collect();
    due.sort();
    due
}

struct Built {
    config: Arc<ServerConfig>,
    /// The certificates its revocation lists name.
    revoked: Revoked,
    lists: Lists,
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
    let (crls, lists) = read_lists(cfg, &cas)?;
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
        lists,
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
    /// The newest list taken in per CA, in this run or kept by the
    /// database from earlier ones: an older list (written back by mistake,
    /// or replayed by someone who wants a revoked certificate to work
    /// again) is not taken in.
    numbers: std::sync::Mutex<Known>,
    /// Some of `numbers` could not be written to the database (tried again
    /// at each look at the files), and whether that was logged (once,
    /// until a write succeeds).
    unkept: std::sync::atomic::AtomicBool,
    unkept_logged: std::sync::atomic::AtomicBool,
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
        // Without lists there is nothing to hold to.
        let store = store.filter(|_| !cfg.tls.crls.is_empty());
        let mut known = match &store {
            Some(s) => kept_numbers(s.as_ref())?,
            None => Known::new(),
        };
        let raised = hold_to(&mut known, &built.lists)?;
        let live = Arc::new(Live {
            config: std::sync::RwLock::new(built.config),
            revoked: tokio::sync::watch::channel(built.revoked).0,
            cas,
            numbers: std::sync::Mutex::new(known),
            unkept: std::sync::atomic::AtomicBool::new(false),
            unkept_logged: std::sync::atomic::AtomicBool::new(false),
            store: store.as_ref().map(Arc::downgrade),
            due: std::sync::Mutex::new(due_of(&built.lists)),
            stamps: std::sync::Mutex::new((before, None)),
        });
        live.keep(&raised);
        Ok(live)
    }

    /// Writes what the vault holds `raised` CAs' lists to into the
    /// database. A failure (a full disk) is logged, not fatal: the lists
    /// are taken in all the same (a newer list revokes at least as much),
    /// this run refuses the older ones, and [`Live::keep_again`] tries
    /// again.
    fn keep(&self, raised: &[[u8; 32]]) {
        let Some(store) = self.store.as_ref().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let known = match self.numbers.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = keep_numbers(store.as_ref(), &known, raised) {
            self.unkept
                .store(true, std::sync::atomic::Ordering::Release);
            if !self
                .unkept_logged
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                tracing::error!(
                    error = %e,
                    "The revocation lists' numbers could not be kept (tried again every few seconds): until they are, after a restart an older list would not be refused"
                );
            }
        }
    }

    /// Writes every CA's record again when one could not be written.
    pub fn keep_again(&self) {
        if !self.unkept.swap(false, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let all: Vec<[u8; 32]> = match self.numbers.lock() {
            Ok(n) => n.keys().copied().collect(),
            Err(p) => p.into_inner().keys().copied().collect(),
        };
        self.keep(&all);
        if !self.unkept.load(std::sync::atomic::Ordering::Acquire)
            && self
                .unkept_logged
                .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            tracing::info!("The revocation lists' numbers are kept again");
        }
    }

    /// The files of the lists in force that are past their next update at
    /// `now` (seconds since the epoch), once per list.
    pub fn stale(&self, now: i64) -> Vec<String> {
        let due = match self.due.lock() {
            Ok(d) => d,
            Err(p) => p.into_inner(),
        };
        due.iter()
            .filter(|(_, at)| *at < now)
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Whether the files hold a change that was refused (what
    /// `vault_tls_crls_refused` shows).
    pub fn refused(&self) -> bool {
        match self.stamps.lock() {
            Ok(l) => l.1.is_some(),
            Err(p) => p.into_inner().1.is_some(),
        }
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
        if last.0 == now {
            // The files are those in force again (a link switched back):
            // nothing stands refused.
            last.1 = None;
            return Ok(false);
        }
        if last.1.as_ref() == Some(&now) {
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
        let raised = {
            let mut known = match self.numbers.lock() {
                Ok(n) => n,
                Err(p) => p.into_inner(),
            };
            hold_to(&mut known, &built.lists)?
        };
        self.keep(&raised);
        match self.due.lock() {
            Ok(mut d) => *d = due_of(&built.lists),
            Err(p) => *p.into_inner() = due_of(&built.lists),
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
    warned.dedup();
    loop {
        tokio::select! {
            () = tokio::time::sleep(CRL_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (live2, cfg2) = (live.clone(), cfg.clone());
        let looked = tokio::task::spawn_blocking(move || {
            live2.keep_again();
            live2.refresh(&cfg2)
        });
        match looked.await {
            Ok(Ok(true)) => tracing::info!("Certificate revocation lists read again"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                error = %e,
                "A changed certificate revocation list is refused; the previous lists stay in force"
            ),
            Err(_) => {}
        }
        metrics.crls_refused.set(i64::from(live.refused()));
        let mut stale = live.stale(now());
        metrics.crls_stale.set(stale.len() as i64);
        stale.dedup();
        for path in stale.iter().filter(|p| !warned.contains(p)) {
            tracing::warn!(
                list = %path,
                "A certificate revocation list in force is past its next update: its CA has published a newer one, which may revoke more; fetch it"
            );
        }
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
    fn lists_only_go_forward_and_are_kept_across_opens() {
        use super::{hold_to, issuer_digest, keep_numbers, kept_numbers, Kept, Listed, Lists};
        use x509_parser::num_bigint::BigUint;
        let (a, b) = (issuer_digest(b"ca a"), issuer_digest(b"ca b"));
        let kept = |issued: i64, n: Option<u128>| Kept {
            issued,
            number: n.map(BigUint::from),
        };
        let lists = |of: &[([u8; 32], Kept)]| -> Lists {
            of.iter()
                .map(|(d, k)| {
                    let l = Listed {
                        issuer: Vec::new(),
                        name: "CN=test".into(),
                        path: "ca.crl".into(),
                        kept: k.clone(),
                        next_update: None,
                    };
                    (*d, l)
                })
                .collect()
        };
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::default());
        let mut known = kept_numbers(store.as_ref()).unwrap();
        assert!(known.is_empty());
        // First lists: both taken and kept (b's without a number).
        let raised = hold_to(
            &mut known,
            &lists(&[(a, kept(100, Some(5))), (b, kept(100, None))]),
        )
        .unwrap();
        assert_eq!(raised.len(), 2);
        keep_numbers(store.as_ref(), &known, &raised).unwrap();
        // Older: a lower number, none where there was one, or issued
        // earlier (what protects a CA that numbers nothing). Nothing moves.
        for older in [
            (a, kept(100, Some(4))),
            (a, kept(100, None)),
            // Numbered higher, but issued before: a list from before the
            // CA started its numbering again (or its clock put right).
            (a, kept(99, Some(6))),
            (b, kept(99, None)),
        ] {
            let e = hold_to(&mut known, &lists(&[older]))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("ca.crl") && e.contains("CN=test") && e.contains("accept-crls"),
                "{e}"
            );
        }
        assert_eq!(known.get(&a), Some(&kept(100, Some(5))));
        // The same list: nothing to keep; newer ones: kept.
        let raised = hold_to(
            &mut known,
            &lists(&[(a, kept(100, Some(5))), (b, kept(200, None))]),
        )
        .unwrap();
        assert_eq!(raised, vec![b]);
        keep_numbers(store.as_ref(), &known, &raised).unwrap();
        // Numbered higher and issued later: taken.
        let raised = hold_to(&mut known, &lists(&[(a, kept(101, Some(6)))])).unwrap();
        assert_eq!(raised, vec![a]);
        keep_numbers(store.as_ref(), &known, &raised).unwrap();
        // A record without a number takes a numbered list issued no
        // earlier, and holds to numbers from then on.
        assert!(hold_to(&mut known, &lists(&[(b, kept(199, Some(1)))])).is_err());
        // What a restart reads back, and holds the next lists to.
        let mut again = kept_numbers(store.as_ref()).unwrap();
        assert_eq!(again, known);
        assert!(hold_to(&mut again, &lists(&[(b, kept(150, None))])).is_err());
        // Numbers past 64 bits, and times before 1970, survive the round trip.
        let big = Kept {
            issued: -5,
            number: Some(BigUint::from(u128::MAX) * 3u32),
        };
        let mut fresh = crate::tls::Known::new();
        let raised = hold_to(&mut fresh, &lists(&[(a, big.clone())])).unwrap();
        keep_numbers(store.as_ref(), &fresh, &raised).unwrap();
        assert_eq!(kept_numbers(store.as_ref()).unwrap().get(&a), Some(&big));
    }

    /// A keep that failed (a full disk) is made at the watcher's next look,
    /// and a restart then holds the CA's lists to it.
    #[test]
    fn a_number_that_could_not_be_kept_is_kept_again() {
        use super::kept_rows;
        use crate::store::testing::HookedStore;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::load(&crate::dev::prepare(dir.path()).unwrap()).unwrap();
        let tls = dir.path().join("tls");
        let (ca_cert, ca_key) = crate::dev::ca_issuer(&tls).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let list_at = |number: u64, this_update: time::OffsetDateTime| {
            rcgen::CertificateRevocationListParams {
                this_update,
                next_update: this_update + time::Duration::days(30),
                crl_number: rcgen::SerialNumber::from(number),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&ca_cert, &ca_key)
            .unwrap()
            .pem()
            .unwrap()
        };
        let list = |number: u64| list_at(number, now - time::Duration::days(1));
        std::fs::write(tls.join("ca.crl"), list(7)).unwrap();
        cfg.tls.crls = vec!["tls/ca.crl".into()];
        let hooked = Arc::new(HookedStore::new(|_| {}));
        hooked
            .fail_writes
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let store: Arc<dyn crate::store::Store> = hooked;
        let live = Live::new(&cfg, Some(store.clone())).unwrap();
        assert!(super::kept_numbers(store.as_ref()).unwrap().is_empty());
        live.keep_again();
        let kept = super::kept_numbers(store.as_ref()).unwrap();
        let number = kept.values().next().and_then(|k| k.number.clone());
        assert_eq!(number, Some(7u32.into()));
        // What the next start holds the lists to.
        std::fs::write(tls.join("ca.crl"), list(6)).unwrap();
        let e = Live::new(&cfg, Some(store.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("number 6) is older"), "{e}");
        // A record that does not read stops the start, and accept-crls
        // writes it again.
        let key = kept_rows(store.as_ref())
            .unwrap()
            .first()
            .unwrap()
            .0
            .clone();
        let mut bad = crate::store::Batch::default();
        bad.put(crate::store::Space::Meta, key, vec![1, 2, 3]);
        store.write(bad).unwrap();
        std::fs::write(tls.join("ca.crl"), list(7)).unwrap();
        let e = Live::new(&cfg, Some(store.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not read") && e.contains("accept-crls"),
            "{e}"
        );
        // A record whose key is not one the vault writes (upper-case hex:
        // a flipped bit) is removed, not left to stop every start.
        let mut stray = crate::store::Batch::default();
        let upper = [super::CRL_NUMBERS, "AB".repeat(32).as_bytes()].concat();
        stray.put(crate::store::Space::Meta, upper, vec![9; 3]);
        store.write(stray).unwrap();
        let (batch, changes) = super::accept_lists(&cfg, store.as_ref()).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|c| c.contains("a record that did not read -> issued"))
                && changes
                    .iter()
                    .any(|c| c.contains("ABAB") && c.ends_with("removed")),
            "{changes:?}"
        );
        store.write(batch).unwrap();
        assert!(Live::new(&cfg, Some(store.clone())).is_ok());
        // A list dated ahead (a CA's clock two hours fast): the same list
        // read again is the same record, nothing to accept.
        std::fs::write(
            tls.join("ca.crl"),
            list_at(8, now + time::Duration::hours(2)),
        )
        .unwrap();
        assert!(Live::new(&cfg, Some(store.clone())).is_ok());
        let (_, changes) = super::accept_lists(&cfg, store.as_ref()).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        // The CA's clock put right: its next list, numbered higher but
        // dated before, is refused (fail-safe) until accept-crls takes it.
        std::fs::write(tls.join("ca.crl"), list_at(9, now)).unwrap();
        assert!(Live::new(&cfg, Some(store.clone())).is_err());
        let (batch, _) = super::accept_lists(&cfg, store.as_ref()).unwrap();
        store.write(batch).unwrap();
        assert!(Live::new(&cfg, Some(store.clone())).is_ok());
        // Without lists there is nothing to hold to.
        cfg.tls.crls.clear();
        assert!(Live::new(&cfg, Some(store)).is_ok());
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
