//! Each subject's own key material, the basis of erasure by
//! crypto-shredding. Invariants: a subject key is random, stored only
//! wrapped under the key-encryption key and bound to its subject, created
//! at most once (compare-and-set), and never written anywhere else; values
//! are sealed under keys derived from it (`DataKey::for_subject`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::keys::{KeyError, Keyring};
use crate::secret::SecretKey;
use crate::store::{Batch, Op, Space, Store, StoreError};

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

/// As [`load_guarded`], served from `cache` when the subject was seen
/// recently: the store read and the unwrap are what a tokenize or a
/// detokenize of a known subject would otherwise spend most of its
/// handler time on. [`Loaded::guard`] still carries the wrapped bytes, so a
/// write sealed under a cached key that was erased meanwhile fails its
/// check.
pub fn load_cached(
    store: &dyn Store,
    keys: &Keyring,
    cache: &KeyCache,
    subject: &str,
) -> Result<Option<Loaded>, SubjectKeyError> {
    let (epoch, hit) = cache.get(subject);
    if let Some(c) = hit {
        return Ok(Some(c));
    }
    match store.get(Space::SubjectKeys, subject.as_bytes())? {
        None => Ok(None),
        Some(w) => {
            let loaded = Loaded {
                key: Arc::new(keys.unwrap_subject_key(subject, &w)?),
                wrapped: w.into(),
            };
            cache.insert(epoch, subject, loaded.clone());
            Ok(Some(loaded))
        }
    }
}

/// A subject's key as [`load_cached`] found it, with the wrapped bytes it
/// was stored as.
#[derive(Clone)]
pub struct Loaded {
    pub key: Arc<SecretKey<32>>,
    wrapped: Arc<[u8]>,
}

impl Loaded {
    /// A batch that holds only while `subject`'s stored key is still this
    /// one: a write of values sealed under it carries it.
    pub fn guard(&self, subject: &str) -> Batch {
        let mut b = Batch::default();
        b.expect(
            Space::SubjectKeys,
            subject.as_bytes().to_vec(),
            Some(self.wrapped.to_vec()),
        );
        b
    }
}

/// Unwrapped keys of recently used subjects. Invariants: an entry is the
/// key stored for its subject at some moment after its epoch was read, and
/// no entry outlives a write of that subject's key (the committer calls
/// [`KeyCache::forget`] after every write that touches one, before it
/// answers) or a seal (nothing is kept, or added, while sealed). A fill
/// that raced with either is dropped, because both move the epoch.
/// Bounded; each key is zeroized when its last holder drops it.
pub struct KeyCache {
    capacity: AtomicUsize,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    epoch: u64,
    open: bool,
    map: HashMap<String, Loaded>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("capacity", &self.capacity.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A closed (sealed) cache holding at most `capacity` subjects; 0
    /// disables it.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: AtomicUsize::new(capacity),
            inner: Mutex::new(CacheInner::default()),
        }
    }

    /// Sets the bound (the configured `keys.subject-key-cache`) and drops
    /// what is cached.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.with(|c| {
            c.epoch = c.epoch.wrapping_add(1);
            c.map.clear();
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut CacheInner) -> T) -> Option<T> {
        // A poisoned lock only means a panic elsewhere; the map is still
        // consistent (every change is one call), but serve nothing from it.
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// The current epoch and the cached key of `subject`, if any.
    fn get(&self, subject: &str) -> (u64, Option<Loaded>) {
        self.with(|c| (c.epoch, c.map.get(subject).cloned()))
            .unwrap_or((u64::MAX, None))
    }

    /// Keeps `key` unless the epoch moved since `epoch` was read.
    fn insert(&self, epoch: u64, subject: &str, loaded: Loaded) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        self.with(|c| {
            if !c.open || c.epoch != epoch || capacity == 0 {
                return;
            }
            if c.map.len() >= capacity && !c.map.contains_key(subject) {
                // Evicts an arbitrary entry: the hasher's order is random.
                if let Some(k) = c.map.keys().next().cloned() {
                    c.map.remove(&k);
                }
            }
            c.map.insert(subject.to_string(), loaded);
        });
    }

    /// The subjects whose key `ops` put or delete.
    pub fn touched(ops: &[Op]) -> Vec<Vec<u8>> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Put(Space::SubjectKeys, k, _) | Op::Delete(Space::SubjectKeys, k) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Forgets `subjects` (as [`KeyCache::touched`] lists them). Called
    /// after a write of their keys was attempted, whatever its outcome, and
    /// before it is answered.
    pub fn forget(&self, subjects: &[Vec<u8>]) {
        if subjects.is_empty() {
            return;
        }
        self.with(|c| {
            c.epoch = c.epoch.wrapping_add(1);
            for k in subjects {
                if let Ok(s) = std::str::from_utf8(k) {
                    c.map.remove(s);
                }
            }
        });
    }

    /// Drops every key and refuses new ones (seal), or starts taking them
    /// again (unseal, a new keyring).
    pub fn reset(&self, open: bool) {
        self.with(|c| {
            c.epoch = c.epoch.wrapping_add(1);
            c.open = open;
            c.map.clear();
        });
    }

    /// How many subjects are cached (tests, metrics).
    pub fn len(&self) -> usize {
        self.with(|c| c.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::MemoryStore;

    fn ring(store: &MemoryStore) -> Keyring {
        let mut root = [7u8; 32];
        Keyring::open(&SecretKey::from_array(&mut root), store).unwrap()
    }

    fn open_cache(capacity: usize) -> KeyCache {
        let c = KeyCache::new(capacity);
        c.reset(true);
        c
    }

    /// Stores a key for `subject` straight into the store.
    fn stored(store: &MemoryStore, keys: &Keyring, subject: &str) -> SecretKey<32> {
        let (k, b) = create(keys, subject).unwrap();
        store.write(b).unwrap();
        k
    }

    fn delete_behind(store: &MemoryStore, subject: &str) -> Batch {
        let mut b = Batch::default();
        destroy(&mut b, subject);
        store.write(b.clone()).unwrap();
        b
    }

    #[test]
    fn a_second_load_is_served_from_the_cache_until_a_write_is_forgotten() {
        let store = MemoryStore::new();
        let keys = ring(&store);
        let cache = open_cache(16);
        let k = stored(&store, &keys, "s1");
        let a = load_cached(&store, &keys, &cache, "s1").unwrap().unwrap();
        assert_eq!(a.key.expose_secret(), k.expose_secret());
        let guard = a.guard("s1");
        assert_eq!(cache.len(), 1);
        // The guard names the wrapped bytes the store holds.
        store.write(guard).unwrap();
        // Deleted behind the cache's back: still served, which shows the
        // hit, and why every key write must go through `forget`.
        let erase = delete_behind(&store, "s1");
        assert!(load_cached(&store, &keys, &cache, "s1").unwrap().is_some());
        cache.forget(&KeyCache::touched(&erase.ops));
        assert!(load_cached(&store, &keys, &cache, "s1").unwrap().is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn a_guard_from_a_stale_entry_fails_its_check() {
        let store = MemoryStore::new();
        let keys = ring(&store);
        let cache = open_cache(16);
        stored(&store, &keys, "s1");
        load_cached(&store, &keys, &cache, "s1").unwrap();
        delete_behind(&store, "s1");
        stored(&store, &keys, "s1");
        let guard = load_cached(&store, &keys, &cache, "s1")
            .unwrap()
            .unwrap()
            .guard("s1");
        assert!(matches!(store.write(guard), Err(StoreError::Conflict)));
    }

    #[test]
    fn a_fill_that_raced_with_a_forget_or_a_seal_is_dropped() {
        let cache = open_cache(16);
        let key = || Loaded {
            key: Arc::new(SecretKey::<32>::generate()),
            wrapped: vec![1u8].into(),
        };
        let (epoch, _) = cache.get("s1");
        cache.forget(&[b"other".to_vec()]);
        cache.insert(epoch, "s1", key());
        assert!(cache.is_empty());
        let (epoch, _) = cache.get("s1");
        cache.reset(false);
        cache.insert(epoch, "s1", key());
        assert!(cache.is_empty());
        // Sealed: nothing is taken, even with the current epoch.
        let (epoch, _) = cache.get("s1");
        cache.insert(epoch, "s1", key());
        assert!(cache.is_empty());
        cache.reset(true);
        let (epoch, _) = cache.get("s1");
        cache.insert(epoch, "s1", key());
        assert_eq!(cache.len(), 1);
        cache.reset(false);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let store = MemoryStore::new();
        let keys = ring(&store);
        let cache = open_cache(3);
        for i in 0..10 {
            let s = format!("s{i}");
            stored(&store, &keys, &s);
            load_cached(&store, &keys, &cache, &s).unwrap().unwrap();
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        let off = open_cache(0);
        load_cached(&store, &keys, &off, "s1").unwrap().unwrap();
        assert!(off.is_empty());
    }
}
