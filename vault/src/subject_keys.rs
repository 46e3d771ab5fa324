//! Each subject's own key material, the basis of erasure by
//! crypto-shredding. Invariants: a subject key is random, stored only
//! wrapped under the key-encryption key and bound to its subject, created
//! at most once (compare-and-set), and never written anywhere else; values
//! are sealed under keys derived from it (`DataKey::for_subject`).

use crate::keys::{KeyError, Keyring};
use crate::secret::SecretKey;
use crate::store::{Batch, Space, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SubjectKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The subject's key, or `None` when it has none (never stored anything,
/// or erased).
pub fn load(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
) -> Result<Option<SecretKey<32>>, SubjectKeyError> {
    Ok(load_guarded(store, keys, subject)?.map(|(k, _)| k))
}

/// As [`load`], unwrapping with an opener set up once for many subjects.
pub fn load_with(
    store: &dyn Store,
    opener: &mut crate::keys::SubjectKeyOpener,
    subject: &str,
) -> Result<Option<SecretKey<32>>, SubjectKeyError> {
    match store.get(Space::SubjectKeys, subject.as_bytes())? {
        None => Ok(None),
        Some(w) => Ok(Some(opener.unwrap(subject, &w)?)),
    }
}

/// The subject's key and a batch that holds only while that key is still
/// the stored one: a write of values sealed under it carries the batch, so
/// it fails (and is retried) rather than land after an erasure.
pub fn load_guarded(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
) -> Result<Option<(SecretKey<32>, Batch)>, SubjectKeyError> {
    match store.get(Space::SubjectKeys, subject.as_bytes())? {
        None => Ok(None),
        Some(w) => {
            let key = keys.unwrap_subject_key(subject, &w)?;
            let mut guard = Batch::default();
            guard.expect(Space::SubjectKeys, subject.as_bytes().to_vec(), Some(w));
            Ok(Some((key, guard)))
        }
    }
}

/// A new key for `subject` and the batch that stores it if, and only if,
/// the subject has none yet.
pub fn create(keys: &Keyring, subject: &str) -> Result<(SecretKey<32>, Batch), KeyError> {
    let key = SecretKey::<32>::generate();
    let mut b = Batch::default();
    b.expect(Space::SubjectKeys, subject.as_bytes().to_vec(), None);
    b.put(
        Space::SubjectKeys,
        subject.as_bytes().to_vec(),
        keys.wrap_subject_key(subject, &key)?,
    );
    Ok((key, b))
}

/// Adds the deletion of the subject's key to `batch`.
pub fn destroy(batch: &mut Batch, subject: &str) {
    batch.delete(Space::SubjectKeys, subject.as_bytes().to_vec());
}

/// The key that opens (or seals) `subject`'s values under data-key
/// `version`; `Ok(None)` when the subject has no key (erased) .
pub fn value_key(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
    version: u32,
) -> Result<Option<crate::crypto::DataKey>, SubjectKeyError> {
    let Some(sk) = load(store, keys, subject)? else {
        return Ok(None);
    };
    Ok(Some(keys.version(version)?.for_subject(&sk)))
}
