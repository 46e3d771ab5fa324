//! Key custody at run time: where the master key comes from, the keyring
//! derived from it, and the sealed/unsealed state. Invariant: the master key is
//! dropped (and so zeroized) as soon as the keyring is derived, and a sealed
//! vault holds no key material at all.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{derive, DataKey, TokenKey};
use crate::secret::SecretKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the vault is sealed")]
    Sealed,
    #[error("cannot read the master key file {path}: {kind}")]
    Read {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("the master key in {source_name} is not 64 hex characters")]
    Malformed { source_name: String },
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("no data key for version {0}")]
    UnknownVersion(u32),
}

/// All keys the running vault uses, derived from the master key.
#[derive(Debug)]
pub struct Keyring {
    token: TokenKey,
    data: BTreeMap<u32, DataKey>,
    active: u32,
}

impl Keyring {
    /// Derives the token key and data keys `1..=active` from `master`.
    pub fn derive(master: &SecretKey<32>, active: u32) -> Self {
        let active = active.max(1);
        let data = (1..=active)
            .map(|v| {
                let label = format!("vault/data-key/v{v}");
                (v, DataKey::new(v, derive(master, label.as_bytes())))
            })
            .collect();
        Self {
            token: TokenKey::new(derive(master, b"vault/token-key/v1")),
            data,
            active,
        }
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.token
    }

    /// The key new values are sealed under.
    pub fn active(&self) -> Result<&DataKey, KeyError> {
        self.version(self.active)
    }

    pub fn version(&self, v: u32) -> Result<&DataKey, KeyError> {
        self.data.get(&v).ok_or(KeyError::UnknownVersion(v))
    }
}

/// The keyring, or nothing while sealed. Readers take a cheap `Arc` clone so
/// a seal never waits for requests in flight, and they finish with the keys
/// they already hold.
#[derive(Debug, Default)]
pub struct KeyState {
    inner: RwLock<Option<Arc<Keyring>>>,
}

impl KeyState {
    pub fn unsealed(keyring: Keyring) -> Self {
        Self {
            inner: RwLock::new(Some(Arc::new(keyring))),
        }
    }

    pub fn get(&self) -> Result<Arc<Keyring>, KeyError> {
        match self.inner.read() {
            Ok(guard) => guard.clone().ok_or(KeyError::Sealed),
            Err(_) => Err(KeyError::Sealed),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.get().is_err()
    }

    /// Drops the keyring; its keys are zeroized once the last request holding
    /// it finishes.
    pub fn seal(&self) {
        if let Ok(mut guard) = self.inner.write() {
            *guard = None;
        }
    }

    pub fn install(&self, keyring: Keyring) {
        if let Ok(mut guard) = self.inner.write() {
            *guard = Some(Arc::new(keyring));
        }
    }
}

/// Reads a master key written as 64 hex characters (surrounding whitespace
/// allowed) from a file.
pub fn master_from_file(path: &Path) -> Result<SecretKey<32>, KeyError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.display().to_string(),
        kind: e.kind(),
    })?);
    parse_master(&text, &path.display().to_string())
}

/// Reads a master key from an environment variable holding 64 hex characters.
pub fn master_from_env(var: &str) -> Result<SecretKey<32>, KeyError> {
    let text =
        Zeroizing::new(std::env::var(var).map_err(|_| KeyError::MissingEnv(var.to_string()))?);
    parse_master(&text, var)
}

fn parse_master(text: &str, source_name: &str) -> Result<SecretKey<32>, KeyError> {
    let mut raw = [0u8; 32];
    let res = hex::decode_to_slice(text.trim(), &mut raw);
    if res.is_err() {
        raw.zeroize();
        return Err(KeyError::Malformed {
            source_name: source_name.to_string(),
        });
    }
    Ok(SecretKey::from_array(&mut raw))
}

/// Writes a fresh master key file readable only by its owner.
pub fn write_new_master(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SecretKey::<32>::generate();
    let text = Zeroizing::new(hex::encode(key.expose_secret()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::classes::Class;

    #[test]
    fn master_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        write_new_master(&p).unwrap();
        let k1 = master_from_file(&p).unwrap();
        let k2 = master_from_file(&p).unwrap();
        assert!(k1.ct_eq(&k2));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Never overwrites an existing key.
        assert!(write_new_master(&p).is_err());

        std::fs::write(&p, "zz").unwrap();
        let err = master_from_file(&p).unwrap_err().to_string();
        assert!(err.contains("not 64 hex"), "{err}");
        assert!(!err.contains("zz"));
        assert!(matches!(
            master_from_file(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn keyring_tokens_do_not_depend_on_data_versions() {
        let master = SecretKey::from_slice(&[9u8; 32]).unwrap();
        let one = Keyring::derive(&master, 1);
        let three = Keyring::derive(&master, 3);
        assert_eq!(
            one.token_key().token(Class::Phone, "+8613800138000"),
            three.token_key().token(Class::Phone, "+8613800138000")
        );
        assert_eq!(three.active().unwrap().version(), 3);
        assert!(three.version(1).is_ok());
        assert!(one.version(2).is_err());
    }

    #[test]
    fn seal_drops_the_keyring() {
        let master = SecretKey::from_slice(&[9u8; 32]).unwrap();
        let state = KeyState::unsealed(Keyring::derive(&master, 1));
        assert!(state.get().is_ok());
        state.seal();
        assert!(matches!(state.get(), Err(KeyError::Sealed)));
        assert!(state.is_sealed());
        let dbg = format!("{:?}", Keyring::derive(&master, 1));
        assert!(!dbg.contains("9, 9"), "{dbg}");
    }
}
