//! `vault dev`: the one-command development setup. On first run it writes a
//! development CA, the server certificate and the `app`, `officer` and
//! `officer2` client certificates, the configuration with the default
//! policy, and a master key; later runs reuse them. Invariant: nothing that
//! exists is ever overwritten, and private keys are written owner-only.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The default configuration and policy, as `vault dev` writes it.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/vault.example.toml");

/// The client identities `vault dev` issues.
pub const CLIENTS: [&str; 3] = ["app", "officer", "officer2"];

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{path}: {kind}")]
    Io {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("certificate generation: {0}")]
    Cert(String),
    #[error(
        "{0} exists without the CA key; remove {1} to regenerate the development certificates"
    )]
    Partial(String, String),
    #[error("{0}: {1}; vault dev keeps its keys there and will not use it")]
    Unsafe(String, &'static str),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |e| DevError::Io {
        path: path.display().to_string(),
        kind: e.kind(),
    }
}

fn cert_err(e: rcgen::Error) -> DevError {
    DevError::Cert(e.to_string())
}

/// The development CA's name, constraints and key usages (no validity).
fn ca_params() -> Result<CertificateParams, DevError> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "Vault development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(ca)
}

/// The development CA in `tls` (a `vault dev` directory's `tls`) as an
/// issuer: its name and its key from `ca.key`, so what it signs (client
/// certificates, revocation lists) chains to the CA on disk. For tests and
/// tools that stand in for the CA.
pub fn ca_issuer(tls: &Path) -> Result<(Certificate, KeyPair), DevError> {
    let path = tls.join("ca.key");
    let pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| DevError::Io {
            path: path.display().to_string(),
            kind: e.kind(),
        })?);
    let key = KeyPair::from_pem(&pem).map_err(cert_err)?;
    let cert = ca_params()?.self_signed(&key).map_err(cert_err)?;
    Ok((cert, key))
}

/// Makes sure `dir` holds everything `vault dev` runs with; returns the
/// configuration file's path.
pub fn prepare(dir: &Path) -> Result<PathBuf, DevError> {
    let tls = dir.join("tls");
    // The directories this start makes above the data directory's parent
    // (all of whose names must be synced: one lost takes the rest along).
    let mut made = Vec::new();
    let mut up = crate::store::parent_dir(dir);
    while !up.exists() {
        made.push(up.to_path_buf());
        match up.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => up = p,
            None => break,
        }
    }
    for d in [dir, &tls] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(io(d))?;
        private_dir(d)?;
    }
    // One start at a time prepares a directory: two first starts at once
    // would each make a CA and certificates, remove each other's
    // temporary files and leave certificates that chain to neither CA.
    // The second waits here, then finds the set made. (The lock is the
    // file system's: it goes with the process, however that ends.)
    let lock_path = dir.join(".dev.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let key = dir.join("master.key");
    let config = dir.join("vault.toml");
    // What a start cut short between linking a file and removing its
    // temporary name left: a second copy of a key, never used.
    let names = std::iter::once("ca")
        .chain(std::iter::once("server"))
        .chain(CLIENTS);
    let certs = names.flat_map(|n| ["pem", "key"].map(|e| tls.join(format!("{n}.{e}"))));
    for path in certs.chain([key.clone(), config.clone()]) {
        crate::store::remove_leftover(&path).map_err(io(&path))?;
    }
    write_certs(&tls)?;
    if !key.exists() {
        crate::keys::write_new_master(&key).map_err(io(&key))?;
    }
    if !config.exists() {
        write_new(&config, DEFAULT_CONFIG.as_bytes(), 0o644)?;
    }
    // Every start, not only the one that made them: a start cut short
    // after making a name and before syncing its directory leaves a name
    // that only a later sync makes durable.
    for d in [&tls, dir] {
        crate::store::sync_dir_or_warn(d).map_err(io(d))?;
        let parent = crate::store::parent_dir(d);
        crate::store::sync_dir_or_warn(parent).map_err(io(parent))?;
    }
    for d in &made {
        let parent = crate::store::parent_dir(d);
        crate::store::sync_dir_or_warn(parent).map_err(io(parent))?;
    }
    drop(lock);
    Ok(config)
}

/// Refuses a directory another user owns or may write to: its CA key,
/// master key and database would be theirs to read or replace. (A new one
/// is made owner-only.)
fn private_dir(dir: &Path) -> Result<(), DevError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    let name = || dir.display().to_string();
    if meta.mode() & 0o022 != 0 {
        return Err(DevError::Unsafe(name(), "group or others may write to it"));
    }
    // This process's user: the owner of its own /proc entry.
    if let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) {
        if meta.uid() != me {
            return Err(DevError::Unsafe(name(), "another user owns it"));
        }
    }
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DevError> {
    // Whole or not there after a power cut; and the name synced too: a CA
    // lost to a cut would be replaced by a new one at the next start, and
    // every app holding a certificate from the old one refused.
    crate::store::write_new_file(path, bytes, mode).map_err(io(path))
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
}

fn write_certs(tls: &Path) -> Result<(), DevError> {
    let names: Vec<&str> = std::iter::once("server").chain(CLIENTS).collect();
    let ca_path = tls.join("ca.pem");
    if ca_path.exists() {
        for n in &names {
            let p = tls.join(format!("{n}.pem"));
            if !p.exists() {
                return Err(DevError::Partial(
                    p.display().to_string(),
                    tls.display().to_string(),
                ));
            }
        }
        return Ok(());
    }
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca = ca_params()?;
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err)?;
    leaf(
        tls,
        "server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca_cert,
        &ca_key,
    )?;
    for client in CLIENTS {
        leaf(
            tls,
            client,
            &[client],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca_cert,
            &ca_key,
        )?;
    }
    // A first start cut short may have left the key of a CA that never
    // got its certificate: this set replaces it.
    let ca_key_path = tls.join("ca.key");
    if ca_key_path.exists() {
        std::fs::remove_file(&ca_key_path).map_err(io(&ca_key_path))?;
    }
    write_new(&ca_key_path, ca_key.serialize_pem().as_bytes(), 0o600)?;
    // The CA goes last: its presence marks a complete set.
    write_new(&ca_path, ca_cert.pem().as_bytes(), 0o644)
}

fn leaf(
    tls: &Path,
    name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(), DevError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(cert_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params);
    let cert = params.signed_by(&key, ca, ca_key).map_err(cert_err)?;
    let pem = tls.join(format!("{name}.pem"));
    let key_path = tls.join(format!("{name}.key"));
    for p in [&pem, &key_path] {
        if p.exists() {
            std::fs::remove_file(p).map_err(io(p))?;
        }
    }
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pem, cert.pem().as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a_directory_others_may_write_is_refused_and_a_new_one_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new");
        prepare(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(prepare(&open), Err(DevError::Unsafe(..))));
        assert!(!open.join("master.key").exists(), "nothing written there");
    }

    #[test]
    fn prepare_creates_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = prepare(dir.path()).unwrap();
        let ca1 = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
        let key1 = std::fs::read(dir.path().join("master.key")).unwrap();
        prepare(dir.path()).unwrap();
        assert_eq!(ca1, std::fs::read(dir.path().join("tls/ca.pem")).unwrap());
        assert_eq!(key1, std::fs::read(dir.path().join("master.key")).unwrap());
        use std::os::unix::fs::PermissionsExt;
        for k in ["tls/app.key", "tls/server.key", "tls/ca.key", "master.key"] {
            let mode = std::fs::metadata(dir.path().join(k))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{k}");
        }
        let loaded = crate::config::Config::load(&cfg).unwrap();
        assert_eq!(loaded.callers.len(), 3);
        let der = crate::tls::load_certs(&dir.path().join("tls/officer2.pem")).unwrap();
        assert_eq!(
            crate::tls::caller_name(&der[0]).as_deref(),
            Some("officer2")
        );
    }

    /// Two first starts at once on one directory: both come up, with one
    /// set of files whose certificates all chain to the one CA on disk
    /// and whose CA key is that CA's.
    #[test]
    fn first_starts_at_once_make_one_set() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::{ServerName, UnixTime};
        for _ in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let starts: Vec<_> = (0..2)
                .map(|_| {
                    let data = data.clone();
                    std::thread::spawn(move || prepare(&data).map(|_| ()))
                })
                .collect();
            for s in starts {
                s.join().unwrap().unwrap();
            }
            let tls = data.join("tls");
            let ca = crate::tls::load_certs(&tls.join("ca.pem")).unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca[0].clone()).unwrap();
            let roots = std::sync::Arc::new(roots);
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .unwrap();
            let server = crate::tls::load_certs(&tls.join("server.pem")).unwrap();
            let host = ServerName::try_from("localhost").unwrap();
            servers
                .verify_server_cert(&server[0], &[], &host, &[], UnixTime::now())
                .unwrap();
            let clients =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .unwrap();
            for c in CLIENTS {
                let cert = crate::tls::load_certs(&tls.join(format!("{c}.pem"))).unwrap();
                clients
                    .verify_client_cert(&cert[0], &[], UnixTime::now())
                    .unwrap();
            }
            // The key on disk is the CA's.
            let (_, key) = ca_issuer(&tls).unwrap();
            let (_, ca_cert) = x509_parser::parse_x509_certificate(ca[0].as_ref()).unwrap();
            assert_eq!(
                ca_cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw()
            );
        }
    }

    /// What a first start stopped at any point leaves, the next one
    /// completes: a CA key without its certificate (the set is made
    /// again), and the temporary copies a write cut short leaves beside
    /// its name (removed).
    #[test]
    fn a_first_start_stopped_midway_is_completed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let tls = dir.path().join("tls");
        std::fs::remove_file(tls.join("ca.pem")).unwrap();
        for leftover in [tls.join(".ca.key.new"), dir.path().join(".master.key.new")] {
            std::fs::write(leftover, "half a key").unwrap();
        }
        std::fs::remove_file(dir.path().join("vault.toml")).unwrap();
        let old_key = std::fs::read(tls.join("ca.key")).unwrap();
        prepare(dir.path()).unwrap();
        assert!(tls.join("ca.pem").exists());
        assert_ne!(old_key, std::fs::read(tls.join("ca.key")).unwrap());
        assert!(dir.path().join("vault.toml").exists());
        assert!(!tls.join(".ca.key.new").exists());
        assert!(!dir.path().join(".master.key.new").exists());
        // The new CA key is whole (the power-loss test starts a server
        // on such a set).
        ca_issuer(&tls).unwrap();
    }
}
