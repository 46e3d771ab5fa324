//! Each subject's own key material, the basis of erasure by
//! crypto-shredding. Invariants: a subject key is random, stored only
//! wrapped under the key-encryption key and bound to its subject, created
//! at most once (compare-and-set), and never written anywhere else; values
//! are sealed under keys derived from it (`DataKey::for_subject`).

use indexmap::IndexMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::crypto::DataKey;
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
        cache.hits.fetch_add(1, Ordering::Relaxed);
        return Ok(Some(c));
    }
    cache.misses.fetch_add(1, Ordering::Relaxed);
    match store.get(Space::SubjectKeys, subject.as_bytes())? {
        None => Ok(None),
        Some(w) => {
            let loaded = Loaded::new(keys.unwrap_subject_key(subject, &w)?, w);
            cache.insert(epoch, subject, loaded.clone());
            Ok(Some(loaded))
        }
    }
}

/// A subject's key as [`load_cached`] found it, with the wrapped bytes it
/// was stored as, and the value key of the active data-key version once a
/// request has derived it (shared by every holder of this entry).
#[derive(Clone)]
pub struct Loaded(Arc<Entry>);

/// What every holder of a [`Loaded`] shares: one allocation, so a hit
/// costs one reference count, not three.
struct Entry {
    key: SecretKey<32>,
    wrapped: Box<[u8]>,
    derived: Mutex<Option<Arc<DataKey>>>,
}

impl Loaded {
    pub fn new(key: SecretKey<32>, wrapped: Vec<u8>) -> Self {
        Self(Arc::new(Entry {
            key,
            wrapped: wrapped.into_boxed_slice(),
            derived: Mutex::new(None),
        }))
    }

    /// The subject's key itself.
    pub fn key(&self) -> &SecretKey<32> {
        &self.0.key
    }

    /// A batch that holds only while `subject`'s stored key is still this
    /// one: a write of values sealed under it carries it.
    pub fn guard(&self, subject: &str) -> Batch {
        let mut b = Batch::default();
        b.expect(
            Space::SubjectKeys,
            subject.as_bytes().to_vec(),
            Some(self.0.wrapped.to_vec()),
        );
        b
    }

    /// `data_key.for_subject(key)`, kept in the entry for the newest
    /// version asked for (the active one: tokenize asks for it, and so do
    /// reads of values sealed since the last rotation) and served from it
    /// afterwards; older versions are derived afresh each time, so reads of
    /// old values never push the active one out. The derivation
    /// (HMAC-SHA512) was 2.5-3.6% of the vault's CPU per tokenize. A
    /// version's key material never changes, so a value key of the same
    /// version is the same key.
    pub fn value_key(&self, data_key: &DataKey) -> Arc<DataKey> {
        let version = data_key.version();
        if let Ok(slot) = self.0.derived.lock() {
            match slot.as_ref() {
                Some(k) if k.version() == version => return k.clone(),
                Some(k) if k.version() > version => {
                    drop(slot);
                    return Arc::new(data_key.for_subject(&self.0.key));
                }
                _ => {}
            }
        }
        // Derived outside the lock; two requests racing here both derive,
        // and the same key lands either way.
        let fresh = Arc::new(data_key.for_subject(&self.0.key));
        if let Ok(mut slot) = self.0.derived.lock() {
            if slot.as_ref().is_none_or(|k| k.version() < version) {
                *slot = Some(fresh.clone());
            }
        }
        fresh
    }
}

/// Unwrapped keys of recently used subjects. Invariants: an entry is the
/// key stored for its subject at some moment after its epoch was read, and
/// no entry outlives a write of that subject's key (the committer calls
/// [`KeyCache::forget`] after every write that touches one, before it
/// answers) or a seal (nothing is kept, or added, while sealed). A fill
/// that raced with either is dropped: a seal moves the epoch of the whole
/// cache, a forget only that of its subject's slot (one of 4,096, shared
/// by the subjects hashed to it), so creating one
/// subject's key does not drop the loads of every other subject in flight.
/// Bounded; each key is zeroized when its last holder drops it.
pub struct KeyCache {
    capacity: AtomicUsize,
    inner: Mutex<CacheInner>,
    /// Lookups served from the cache, and those that went to the store
    /// (for `vault_keys_subject_cache_*`, to size the cache by).
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Slots of the forget epochs: a fill is dropped when a forget of a
/// subject in its slot came after its load began.
const FORGET_SLOTS: usize = 4096;

struct CacheInner {
    /// Moves at every forget and clear; what a load notes when it begins.
    epoch: u64,
    /// The epoch of the last clear (a seal, a new keyring).
    cleared: u64,
    /// Per slot, the epoch of the last forget of a subject hashed to it.
    forgotten: Box<[u64]>,
    open: bool,
    /// Indexed as well as hashed, so the entry to evict is picked, and
    /// removed, in one step by its position.
    map: IndexMap<String, Loaded>,
}

impl Default for CacheInner {
    fn default() -> Self {
        Self {
            epoch: 0,
            cleared: 0,
            forgotten: vec![0; FORGET_SLOTS].into_boxed_slice(),
            open: false,
            map: IndexMap::new(),
        }
    }
}

/// The forget slot of `subject`.
fn slot(subject: &[u8]) -> usize {
    use std::hash::{BuildHasher, Hasher};
    // A fixed hasher: the slot of a subject must not change between the
    // forget and the fill it guards (a per-map random state would do too,
    // but one per process is enough).
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write(subject);
    usize::try_from(h.finish() % FORGET_SLOTS as u64).unwrap_or(0)
}

impl CacheInner {
    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.cleared = self.epoch;
        self.map.clear();
    }

    /// Whether a fill of `subject` whose load began at `epoch` may be kept.
    fn fresh(&self, epoch: u64, subject: &str) -> bool {
        let forgotten = self
            .forgotten
            .get(slot(subject.as_bytes()))
            .copied()
            .unwrap_or(u64::MAX);
        self.cleared <= epoch && forgotten <= epoch
    }

    /// Takes out a cached subject picked at random; `None` when there is
    /// none. Random rather than oldest first: a caller that walks through
    /// more subjects than the cache holds, in a loop, would make an
    /// oldest-first cache miss every time (a load tool cycling through
    /// 100,000 subjects did), while random eviction keeps a share of hits
    /// under any order.
    fn evict_one(&mut self) -> Option<Loaded> {
        if self.map.is_empty() {
            return None;
        }
        let i = rand::Rng::gen_range(&mut rand::thread_rng(), 0..self.map.len());
        self.map.swap_remove_index(i).map(|(_, l)| l)
    }
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
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Sets the bound (the configured `keys.subject-key-cache`) and drops
    /// what is cached.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.with(CacheInner::clear);
    }

    fn with<T>(&self, f: impl FnOnce(&mut CacheInner) -> T) -> Option<T> {
        // A poisoned lock only means a panic elsewhere; the map is still
        // consistent (every change is one call), but serve nothing from it.
        self.inner.lock().ok().map(|mut g| f(&mut g))
    }

    /// The current epoch and the cached key of `subject`, if any.
    fn get(&self, subject: &str) -> (u64, Option<Loaded>) {
        // Poisoned: epoch 0, older than any clear since the cache opened,
        // so no fill noted with it is ever kept.
        self.with(|c| (c.epoch, c.map.get(subject).cloned()))
            .unwrap_or((0, None))
    }

    /// Keeps `key` unless, since `epoch` was read, the cache was cleared or
    /// a subject of `subject`'s slot was forgotten.
    fn insert(&self, epoch: u64, subject: &str, loaded: Loaded) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        // What leaves the cache is dropped (and its key zeroized) after the
        // lock is let go, not while every other lookup waits.
        let _evicted = self.with(|c| {
            if !c.open || !c.fresh(epoch, subject) || capacity == 0 {
                return Vec::new();
            }
            if let Some(slot) = c.map.get_mut(subject) {
                return vec![std::mem::replace(slot, loaded)];
            }
            let mut out = Vec::new();
            while c.map.len() >= capacity {
                match c.evict_one() {
                    Some(l) => out.push(l),
                    None => break,
                }
            }
            c.map.insert(subject.to_string(), loaded);
            out
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
        let _forgotten = self.with(|c| {
            c.epoch = c.epoch.wrapping_add(1);
            let epoch = c.epoch;
            for k in subjects {
                if let Some(at) = c.forgotten.get_mut(slot(k)) {
                    *at = epoch;
                }
            }
            subjects
                .iter()
                .filter_map(|k| std::str::from_utf8(k).ok())
                .filter_map(|s| c.map.swap_remove(s))
                .collect::<Vec<_>>()
        });
    }

    /// Drops every key, and every fill begun before (after a store
    /// recovery, whose replay may have changed what they read).
    pub fn clear(&self) {
        self.with(CacheInner::clear);
    }

    /// Drops every key and refuses new ones (seal), or starts taking them
    /// again (unseal, a new keyring).
    pub fn reset(&self, open: bool) {
        self.with(|c| {
            c.clear();
            c.open = open;
        });
    }

    /// Lookups served so far, lookups that went to the store, and how many
    /// subjects are cached now.
    pub fn stats(&self) -> (u64, u64, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.len(),
        )
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

/// A meta row set in the same batch as every destruction of a subject key
/// and cleared once the engine's files no longer hold the key
/// ([`crate::store::Store::purge`]), so a purge cut short by a crash is
/// made at the next start. Its value changes with every batch, so a purge
/// clears it only if no destruction landed while it ran.
pub const PURGE_PENDING: &[u8] = b"purge/subject_keys";

/// Adds the deletion of the subject's key (`wrapped`, as stored) to
/// `batch`, with the marks that it still has to leave the engine's files
/// and to be named in the shred log ([`crate::shreds`]).
pub fn destroy(batch: &mut Batch, subject: &str, wrapped: &[u8]) {
    batch.touch(subject);
    crate::shreds::mark(batch, subject, wrapped, crate::api::now_ms());
    batch.delete(Space::SubjectKeys, subject.as_bytes().to_vec());
    batch.put(
        Space::Meta,
        PURGE_PENDING.to_vec(),
        rand::random::<[u8; 8]>().to_vec(),
    );
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
        destroy(&mut b, subject, b"wrapped");
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
        assert_eq!(a.key().expose_secret(), k.expose_secret());
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
        let key = || Loaded::new(SecretKey::<32>::generate(), vec![1u8]);
        let (epoch, _) = cache.get("s1");
        cache.forget(&[b"s1".to_vec()]);
        cache.insert(epoch, "s1", key());
        assert!(cache.is_empty());
        // A forget of another subject (in another slot) leaves the fill
        // alone: creating one subject's key does not cost every other
        // load in flight its place.
        let other = (0..)
            .map(|i| format!("other{i}"))
            .find(|o| slot(o.as_bytes()) != slot(b"s1"))
            .unwrap();
        let (epoch, _) = cache.get("s1");
        cache.forget(&[other.into_bytes()]);
        cache.insert(epoch, "s1", key());
        assert_eq!(cache.len(), 1);
        cache.forget(&[b"s1".to_vec()]);
        assert!(cache.is_empty());
        // A new keyring (the cache cleared and left open), or a new
        // capacity, drops the fills begun before it.
        let (epoch, _) = cache.get("s1");
        cache.reset(true);
        cache.insert(epoch, "s1", key());
        assert!(cache.is_empty());
        let (epoch, _) = cache.get("s1");
        cache.set_capacity(16);
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

    #[test]
    fn eviction_keeps_the_newest_entry_and_the_cache_stays_bounded() {
        let cache = open_cache(3);
        let fill = |s: &str| {
            let (epoch, _) = cache.get(s);
            cache.insert(
                epoch,
                s,
                Loaded::new(SecretKey::<32>::generate(), vec![1u8]),
            );
        };
        for i in 0..10 {
            let s = format!("s{i}");
            fill(&s);
            assert!(cache.get(&s).1.is_some(), "{s} not cached");
            assert!(cache.len() <= 3);
        }
        // A subject forgotten and cached again, over and over, or cached
        // twice, takes one place.
        for _ in 0..1000 {
            cache.forget(&[b"s9".to_vec()]);
            fill("s9");
            fill("s9");
            assert!(cache.get("s9").1.is_some());
        }
        assert_eq!(cache.len(), 3);
        // Exactly the entries counted are served: an evicted subject is
        // a miss, not a stale hit.
        let served = (0..10)
            .filter(|i| cache.get(&format!("s{i}")).1.is_some())
            .count();
        assert_eq!(served, 3);
    }

    #[test]
    fn a_value_key_is_derived_once_per_entry_for_its_version() {
        let mut a = [1u8; 64];
        let mut b = [2u8; 64];
        let v1 = DataKey::new(1, SecretKey::from_array(&mut a));
        let v2 = DataKey::new(2, SecretKey::from_array(&mut b));
        let loaded = Loaded::new(SecretKey::<32>::generate(), vec![1u8]);
        let first = loaded.value_key(&v1);
        assert!(Arc::ptr_eq(&first, &loaded.clone().value_key(&v1)));
        // A newer version takes the slot; an older one is derived afresh
        // and leaves it alone.
        let other = loaded.value_key(&v2);
        assert_eq!(other.version(), 2);
        assert!(Arc::ptr_eq(&other, &loaded.value_key(&v2)));
        let old = loaded.value_key(&v1);
        assert!(!Arc::ptr_eq(&first, &old));
        assert!(Arc::ptr_eq(&other, &loaded.value_key(&v2)));
        let sealed = v2.for_subject(loaded.key()).seal(b"aad", b"x").unwrap();
        assert_eq!(&other.open(b"aad", &sealed).unwrap()[..], b"x");
        let sealed = v1.for_subject(loaded.key()).seal(b"aad", b"y").unwrap();
        assert_eq!(&first.open(b"aad", &sealed).unwrap()[..], b"y");
        assert!(other.open(b"aad", &sealed).is_err());
    }
}
