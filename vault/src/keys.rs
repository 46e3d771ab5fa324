//! Key custody at run time: where the master key comes from, the keyring
//! derived from it, and the sealed/unsealed state. Invariant: the master key is
//! dropped (and so zeroized) as soon as the keyring is derived, and a sealed
//! vault holds no key material at all.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{derive, DataKey, HeaderKey, TokenKey};
use crate::secret::SecretKey;
use crate::store::{Batch, Space, Store, StoreError};
use crate::subject_keys::KeyCache;

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
    #[error("key version {0} is below the minimum decryption version")]
    BelowMinimum(u32),
    #[error("the key does not open this vault's keys")]
    WrongRoot,
    #[error("the stored key hierarchy is unreadable")]
    Corrupt,
    #[error("the database holds data but no keys; refusing to create new ones over it")]
    KeysMissing,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("key version {0} was superseded too recently to retire; retry shortly")]
    TooRecent(u32),
    #[error("the vault has no keys yet: run `vault operator init` first")]
    NotInitialized,
    #[error("the key command failed: {0}")]
    Command(String),
}

/// Meta keys of the key hierarchy. Values are AES-SIV wraps under the
/// key-encryption key, bound by associated data to their slot.
const TOKEN_SLOT: &[u8] = b"keys/token";
/// The key metadata ([`KeyMeta`]): JSON sealed under the key-encryption
/// key, bound to this slot, so whoever can write the database but lacks
/// the root key cannot forge it (make an old, perhaps leaked, version the
/// active one, or lower the minimum decryption version). Vaults made
/// before it was sealed kept it in the clear; see [`TOKEN_AAD_SEALED`].
const STATE_SLOT: &[u8] = b"keys/state";
/// The name the token key's wrap is bound to (associated data, not a
/// key) once the state record is sealed. A token key that opens under it
/// means the state must be sealed, so writing the old clear form back
/// cannot downgrade a vault; one that opens only under [`TOKEN_SLOT`] is
/// an older vault, migrated when its keys are first opened.
const TOKEN_AAD_SEALED: &[u8] = b"keys/token+sealed-state";
const DATA_SLOT: &[u8] = b"keys/data/";
/// How the root key is split, written by `vault operator init`.
pub const UNSEAL_SLOT: &[u8] = b"keys/unseal";

/// Set (to a random value) by an officer's seal and cleared by an unseal:
/// while it is there the vault starts sealed, whatever its root key's
/// source, so a restart or a crash does not undo a seal.
pub const SEAL_MARK: &[u8] = b"keys/sealed";

/// Officers who must ask before a sealed vault reads its root key again
/// from its file or command (`vault unseal --resume`).
pub const RESUME_OFFICERS: usize = 2;

/// Where the root key comes from.
#[derive(Clone, Debug)]
pub enum RootSource {
    /// Officers' key shares (`unseal-with-shares`).
    Shares,
    File(std::path::PathBuf),
    /// An environment variable, read once at start.
    Env,
    Command(Vec<String>),
}

impl RootSource {
    /// Reads the root key again from a file or a command.
    pub fn read_again(&self) -> Result<SecretKey<32>, KeyError> {
        match self {
            RootSource::File(path) => master_from_file(path),
            RootSource::Command(argv) => master_from_command(argv),
            RootSource::Shares | RootSource::Env => Err(KeyError::Sealed),
        }
    }
}

/// Whether an officer's seal holds: the vault starts sealed.
pub fn sealed_by_officer(store: &dyn Store) -> Result<bool, KeyError> {
    Ok(store.get(Space::Meta, SEAL_MARK)?.is_some())
}

fn subject_slot(subject: &str) -> Vec<u8> {
    let mut k = b"subject/".to_vec();
    k.extend_from_slice(subject.as_bytes());
    k
}

fn data_slot(v: u32) -> Vec<u8> {
    let mut k = DATA_SLOT.to_vec();
    k.extend_from_slice(&v.to_be_bytes());
    k
}

/// The public part of the key hierarchy: which versions exist, which one
/// new values use, and the oldest one still allowed to decrypt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyMeta {
    pub active: u32,
    pub min_decryption_version: u32,
    /// Creation time (ms since the epoch) of each version.
    pub versions: BTreeMap<u32, u64>,
}

/// How the root key was split at `vault operator init`, with a fingerprint
/// of each share (see [`crate::shares::fingerprint`]) so a forged share is
/// refused before it counts towards the threshold. (A vault initialized
/// before fingerprints were kept has none, and checks only the set.)
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnsealMeta {
    pub shares: u8,
    pub threshold: u8,
    #[serde(default)]
    pub fingerprints: BTreeMap<u8, String>,
}

/// All keys the running vault uses. The hierarchy: the root key (from shares,
/// a key file, a variable or a command) derives the key-encryption key (KEK)
/// with HKDF; the KEK unwraps the random token key and the random, versioned
/// data keys stored in the database. The root key itself is never kept.
#[derive(Debug)]
pub struct Keyring {
    kek: DataKey,
    /// Seals the records the policy trusts (see [`Keyring::seal_record`]).
    records: DataKey,
    /// Tags stored values' headers (see [`crate::schema::Record`]).
    header: HeaderKey,
    token: TokenKey,
    data: BTreeMap<u32, DataKey>,
    meta: KeyMeta,
    /// The state record as stored, which every change is guarded on.
    stored_state: Stored,
}

/// Stored bytes kept only to compare with; `Debug` shows their length.
struct Stored(Vec<u8>);

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

fn wrap_aad(slot: &[u8]) -> Vec<u8> {
    let mut aad = b"vault/wrap/v1/".to_vec();
    aad.extend_from_slice(slot);
    aad
}

fn wrap<const N: usize>(
    kek: &DataKey,
    slot: &[u8],
    key: &SecretKey<N>,
) -> Result<Vec<u8>, KeyError> {
    kek.seal(&wrap_aad(slot), key.expose_secret())
        .map_err(|_| KeyError::Corrupt)
}

fn unwrap<const N: usize>(
    kek: &DataKey,
    slot: &[u8],
    wrapped: &[u8],
) -> Result<SecretKey<N>, KeyError> {
    let raw = kek
        .open(&wrap_aad(slot), wrapped)
        .map_err(|_| KeyError::WrongRoot)?;
    SecretKey::from_slice(&raw).ok_or(KeyError::Corrupt)
}

/// See [`Keyring::subject_key_opener`].
pub struct SubjectKeyOpener(crate::crypto::Opener);

impl SubjectKeyOpener {
    /// As [`Keyring::unwrap_subject_key`].
    pub fn unwrap(&mut self, subject: &str, wrapped: &[u8]) -> Result<SecretKey<32>, KeyError> {
        let raw = self
            .0
            .open(&wrap_aad(&subject_slot(subject)), wrapped)
            .map_err(|_| KeyError::WrongRoot)?;
        SecretKey::from_slice(&raw).ok_or(KeyError::Corrupt)
    }
}

fn kek_from_root(root: &SecretKey<32>) -> DataKey {
    DataKey::new(0, derive(root, b"vault/kek/v1"))
}

fn records_from_root(root: &SecretKey<32>) -> (DataKey, HeaderKey) {
    (
        DataKey::new(0, derive(root, b"vault/records/v1")),
        HeaderKey::new(derive(root, b"vault/record-header/v1")),
    )
}

fn record_aad(space: Space, key: &[u8]) -> Vec<u8> {
    let mut aad = b"vault/record/v1/".to_vec();
    aad.extend_from_slice(space.name().as_bytes());
    aad.push(b'/');
    aad.extend_from_slice(key);
    aad
}

impl Keyring {
    /// Opens the key hierarchy stored in `store` with `root`, creating it
    /// (a token key and data key version 1) on first use, that is while
    /// the store holds no values, subject keys or audit events. A root that does
    /// not unwrap the stored keys fails with [`KeyError::WrongRoot`].
    pub fn open(root: &SecretKey<32>, store: &dyn Store) -> Result<Self, KeyError> {
        let kek = kek_from_root(root);
        if store.get(Space::Meta, TOKEN_SLOT)?.is_none() {
            Self::refuse_over_data(store)?;
            let batch = Self::genesis(&kek, crate::api::now_ms())?;
            match store.write(batch) {
                Ok(()) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Self::load(kek, records_from_root(root), store)
    }

    /// Opens the key hierarchy `store` already holds, never creating one:
    /// what unseal does. (Creating there would write a fresh hierarchy
    /// over a database whose token key had gone missing, and every stored
    /// value with it.)
    pub fn open_existing(root: &SecretKey<32>, store: &dyn Store) -> Result<Self, KeyError> {
        Self::load(kek_from_root(root), records_from_root(root), store)
    }

    /// The batch that creates a key hierarchy under `root` in an empty
    /// store (it holds only if none exists), for a caller that writes more
    /// in the same atomic write (`operator init`: the split's metadata and
    /// its audit event).
    pub fn genesis_batch(root: &SecretKey<32>) -> Result<Batch, KeyError> {
        Self::genesis(&kek_from_root(root), crate::api::now_ms())
    }

    /// [`KeyError::KeysMissing`] when `store` holds values, subject keys,
    /// audit events or any key record: new keys over them would orphan
    /// every value and change every token, so a database whose keys went
    /// missing is refused, never silently started afresh. `operator init`
    /// and the first open check it before creating keys.
    pub fn refuse_over_data(store: &dyn Store) -> Result<(), KeyError> {
        for space in [Space::Values, Space::SubjectKeys, Space::Audit] {
            if !store.scan(space, b"", None, 1)?.is_empty() {
                return Err(KeyError::KeysMissing);
            }
        }
        for slot in [STATE_SLOT, &data_slot(1)[..]] {
            if store.get(Space::Meta, slot)?.is_some() {
                return Err(KeyError::KeysMissing);
            }
        }
        Ok(())
    }

    /// Whether `store` holds a key hierarchy yet.
    pub fn exists(store: &dyn Store) -> Result<bool, KeyError> {
        Ok(store.get(Space::Meta, TOKEN_SLOT)?.is_some())
    }

    fn genesis(kek: &DataKey, now: u64) -> Result<Batch, KeyError> {
        let token = SecretKey::<32>::generate();
        let data = SecretKey::<64>::generate();
        let meta = KeyMeta {
            active: 1,
            min_decryption_version: 1,
            versions: BTreeMap::from([(1, now)]),
        };
        let mut b = Batch::default();
        b.expect(Space::Meta, TOKEN_SLOT.to_vec(), None);
        b.expect(Space::Meta, STATE_SLOT.to_vec(), None);
        b.expect(Space::Meta, data_slot(1), None);
        b.put(
            Space::Meta,
            TOKEN_SLOT.to_vec(),
            wrap(kek, TOKEN_AAD_SEALED, &token)?,
        );
        b.put(Space::Meta, data_slot(1), wrap(kek, &data_slot(1), &data)?);
        b.put(Space::Meta, STATE_SLOT.to_vec(), seal_meta(kek, &meta)?);
        Ok(b)
    }

    fn load(
        kek: DataKey,
        (records, header): (DataKey, HeaderKey),
        store: &dyn Store,
    ) -> Result<Self, KeyError> {
        // One retry: a conflict means another opener migrated it first.
        match Self::load_once(&kek, store) {
            Err(KeyError::Store(StoreError::Conflict)) => Self::load_once(&kek, store),
            other => other,
        }
        .map(|(token, data, meta, stored)| Self {
            kek,
            records,
            header,
            token,
            data,
            meta,
            stored_state: Stored(stored),
        })
    }

    #[allow(clippy::type_complexity)]
    fn load_once(
        kek: &DataKey,
        store: &dyn Store,
    ) -> Result<(TokenKey, BTreeMap<u32, DataKey>, KeyMeta, Vec<u8>), KeyError> {
        let wrapped = store
            .get(Space::Meta, TOKEN_SLOT)?
            .ok_or(KeyError::Corrupt)?;
        let stored = store
            .get(Space::Meta, STATE_SLOT)?
            .ok_or(KeyError::Corrupt)?;
        let (token, meta, stored) = match unwrap::<32>(kek, TOKEN_AAD_SEALED, &wrapped) {
            Ok(token) => {
                let meta = open_meta(kek, &stored)?;
                (token, meta, stored)
            }
            Err(_) => {
                // A vault from before the state was sealed (or the wrong
                // root, which fails here too): seal it now, guarded on
                // both records as read.
                let token = unwrap::<32>(kek, TOKEN_SLOT, &wrapped)?;
                let meta = match open_meta(kek, &stored) {
                    Ok(meta) => meta,
                    Err(_) => serde_json::from_slice(&stored).map_err(|_| KeyError::Corrupt)?,
                };
                let sealed = seal_meta(kek, &meta)?;
                let mut b = Batch::default();
                b.expect(Space::Meta, TOKEN_SLOT.to_vec(), Some(wrapped));
                b.expect(Space::Meta, STATE_SLOT.to_vec(), Some(stored));
                b.put(
                    Space::Meta,
                    TOKEN_SLOT.to_vec(),
                    wrap(kek, TOKEN_AAD_SEALED, &token)?,
                );
                b.put(Space::Meta, STATE_SLOT.to_vec(), sealed.clone());
                store.write(b)?;
                (token, meta, sealed)
            }
        };
        // The versions listed are exactly the wrapped keys stored, and the
        // newest is the active one: an older state written back (a copy
        // taken before a rotation) cannot make new values use an old key
        // without deleting the newer key, which breaks every value under it.
        let stored_versions = crate::store::scan_prefix(
            store,
            Space::Meta,
            DATA_SLOT,
            meta.versions.len().saturating_add(1),
        )?;
        let listed = meta.versions.keys().map(|&v| data_slot(v));
        if !stored_versions.iter().map(|(k, _)| k.clone()).eq(listed)
            || meta.versions.keys().next_back() != Some(&meta.active)
            || meta.min_decryption_version > meta.active
        {
            return Err(KeyError::Corrupt);
        }
        let mut data = BTreeMap::new();
        for (slot, wrapped) in stored_versions {
            let Some(v) = slot
                .strip_prefix(DATA_SLOT)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
            else {
                return Err(KeyError::Corrupt);
            };
            data.insert(v, DataKey::new(v, unwrap(kek, &slot, &wrapped)?));
        }
        Ok((TokenKey::new(token), data, meta, stored))
    }

    /// Wraps a subject's key material under the key-encryption key, bound
    /// to the subject (so a wrapped key copied to another subject fails).
    pub fn wrap_subject_key(
        &self,
        subject: &str,
        key: &SecretKey<32>,
    ) -> Result<Vec<u8>, KeyError> {
        wrap(&self.kek, &subject_slot(subject), key)
    }

    pub fn unwrap_subject_key(
        &self,
        subject: &str,
        wrapped: &[u8],
    ) -> Result<SecretKey<32>, KeyError> {
        unwrap(&self.kek, &subject_slot(subject), wrapped)
    }

    /// An unwrapper of many subject keys in a row, the key-encryption key's
    /// cipher set up once.
    pub fn subject_key_opener(&self) -> Result<SubjectKeyOpener, KeyError> {
        self.kek
            .opener()
            .map(SubjectKeyOpener)
            .map_err(|_| KeyError::Corrupt)
    }

    /// The batch that makes a new active data key version, guarded so two
    /// rotations cannot both win; and the version it creates.
    pub fn rotation(&self, now: u64) -> Result<(Batch, u32), KeyError> {
        let next = self.data.keys().next_back().copied().unwrap_or(0) + 1;
        let key = SecretKey::<64>::generate();
        let mut meta = self.meta.clone();
        meta.active = next;
        meta.versions.insert(next, now);
        let mut b = self.guarded_meta(&meta)?;
        b.put(
            Space::Meta,
            data_slot(next),
            wrap(&self.kek, &data_slot(next), &key)?,
        );
        Ok((b, next))
    }

    /// The batch that sets the oldest version allowed to decrypt.
    pub fn min_decryption(&self, version: u32) -> Result<Batch, KeyError> {
        if version == 0 || version > self.meta.active {
            return Err(KeyError::UnknownVersion(version));
        }
        let mut meta = self.meta.clone();
        meta.min_decryption_version = version;
        self.guarded_meta(&meta)
    }

    /// The batch that retires `version`: its wrapped key is deleted, so
    /// nothing sealed under it can ever be opened again. The caller checks
    /// that no stored value uses it; here only the active version and a
    /// version superseded less than `grace_ms` ago (requests holding the
    /// previous keyring may still be sealing under it) are refused.
    pub fn retirement(&self, version: u32, now: u64, grace_ms: u64) -> Result<Batch, KeyError> {
        if version == self.meta.active || !self.meta.versions.contains_key(&version) {
            return Err(KeyError::UnknownVersion(version));
        }
        let superseded = self
            .meta
            .versions
            .range(version + 1..)
            .next()
            .map_or(u64::MAX, |(_, &t)| t);
        if now < superseded.saturating_add(grace_ms) {
            return Err(KeyError::TooRecent(version));
        }
        let mut meta = self.meta.clone();
        meta.versions.remove(&version);
        let mut b = self.guarded_meta(&meta)?;
        b.delete(Space::Meta, data_slot(version));
        Ok(b)
    }

    /// Guards `b` on the key state this keyring was loaded from: once the
    /// keys change (a rotation, a new minimum decryption version, a
    /// retirement), a batch prepared with this keyring is refused
    /// (`Conflict`) rather than written under what no longer holds.
    pub fn guard_state(&self, b: &mut Batch) {
        b.expect(
            Space::Meta,
            STATE_SLOT.to_vec(),
            Some(self.stored_state.0.clone()),
        );
    }

    fn guarded_meta(&self, meta: &KeyMeta) -> Result<Batch, KeyError> {
        let mut b = Batch::default();
        b.expect(
            Space::Meta,
            STATE_SLOT.to_vec(),
            Some(self.stored_state.0.clone()),
        );
        b.put(
            Space::Meta,
            STATE_SLOT.to_vec(),
            seal_meta(&self.kek, meta)?,
        );
        Ok(b)
    }

    /// This keyring as the store now has it (after a rotation or a change
    /// of the minimum version was written).
    pub fn reload(&self, store: &dyn Store) -> Result<Self, KeyError> {
        Self::load(
            DataKey::new(0, self.kek.duplicate_key()),
            (
                DataKey::new(0, self.records.duplicate_key()),
                self.header.duplicate(),
            ),
            store,
        )
    }

    /// The key of stored values' header tags.
    pub fn header_key(&self) -> &HeaderKey {
        &self.header
    }

    /// Whether `plain`, a value of `class` as stored, is the value of
    /// `token`: its token, from its normalized form or (stored under older
    /// rules) the form it has. A record of format 1 has no token in its
    /// AAD, so its ciphertext could have been moved under another token of
    /// the same subject and class; this is checked before such a record is
    /// bound to the token it is filed under.
    pub fn is_token_of(&self, class: crate::classes::Class, plain: &[u8], token: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(plain) else {
            return false;
        };
        let same = |t: crate::crypto::TokenBytes| -> bool {
            subtle::ConstantTimeEq::ct_eq(&t[..], token).into()
        };
        // As stored; normalized by today's rules; and, for an email,
        // lower-cased, as its token form was before invisible characters
        // were refused.
        same(self.token.token(class, text))
            || crate::classes::normalize(class, text)
                .is_ok_and(|n| same(self.token.token(class, n.token_form())))
            || (class == crate::classes::Class::Email
                && same(self.token.token(class, &text.to_lowercase())))
    }

    /// Seals a record the policy trusts (an approval, a consent entry)
    /// for the row `key` of `space`: whoever can write the
    /// database but lacks the root key can neither forge one nor move one
    /// to another row. (Deleting a row, or writing back an old copy of
    /// it, stays possible: that needs a record kept outside the database.)
    pub fn seal_record(&self, space: Space, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.records
            .seal(&record_aad(space, key), plain)
            .map_err(|_| KeyError::Corrupt)
    }

    /// Opens what [`Keyring::seal_record`] sealed for the same row;
    /// anything else (a forged, moved or clear record) is
    /// [`KeyError::Corrupt`].
    pub fn open_record(
        &self,
        space: Space,
        key: &[u8],
        stored: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.records
            .open(&record_aad(space, key), stored)
            .map_err(|_| KeyError::Corrupt)
    }

    pub fn meta(&self) -> &KeyMeta {
        &self.meta
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.token
    }

    /// The key new values are sealed under.
    pub fn active(&self) -> Result<&DataKey, KeyError> {
        self.version(self.meta.active)
    }

    /// The key of `v` whatever the minimum decryption version: to check a
    /// stored record, never to release one.
    pub fn version_for_checks(&self, v: u32) -> Option<&DataKey> {
        self.data.get(&v)
    }

    /// The key of `v`, unless `v` is below the minimum decryption version.
    pub fn version(&self, v: u32) -> Result<&DataKey, KeyError> {
        if v < self.meta.min_decryption_version {
            return Err(KeyError::BelowMinimum(v));
        }
        self.data.get(&v).ok_or(KeyError::UnknownVersion(v))
    }
}

fn seal_meta(kek: &DataKey, meta: &KeyMeta) -> Result<Vec<u8>, KeyError> {
    let json = serde_json::to_vec(meta).map_err(|_| KeyError::Corrupt)?;
    kek.seal(&wrap_aad(STATE_SLOT), &json)
        .map_err(|_| KeyError::Corrupt)
}

/// The sealed state record; anything else, the clear form included, is
/// [`KeyError::Corrupt`] (the root already opened the token key).
fn open_meta(kek: &DataKey, stored: &[u8]) -> Result<KeyMeta, KeyError> {
    let json = kek
        .open(&wrap_aad(STATE_SLOT), stored)
        .map_err(|_| KeyError::Corrupt)?;
    serde_json::from_slice(&json).map_err(|_| KeyError::Corrupt)
}

/// The keyring, or nothing while sealed. Readers take a cheap `Arc` clone so
/// a seal never waits for requests in flight, and they finish with the keys
/// they already hold. The subject-key cache goes with it: emptied and
/// closed by a seal, emptied again by every new keyring.
#[derive(Debug)]
pub struct KeyState {
    inner: RwLock<Option<Arc<Keyring>>>,
    cache: Arc<KeyCache>,
    /// Seals so far: an unseal that began before a seal installs nothing.
    seals: std::sync::atomic::AtomicU64,
}

impl Default for KeyState {
    fn default() -> Self {
        Self {
            inner: RwLock::new(None),
            cache: Arc::new(KeyCache::new(SUBJECT_KEY_CACHE)),
            seals: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The default of `keys.subject-key-cache`: subjects whose unwrapped key is
/// kept, with its derived value key (about 500 bytes each: 33 MB full).
pub const SUBJECT_KEY_CACHE: usize = 65_536;

impl KeyState {
    pub fn unsealed(keyring: Keyring) -> Self {
        let state = Self::default();
        state.install(keyring);
        state
    }

    pub fn get(&self) -> Result<Arc<Keyring>, KeyError> {
        match self.inner.read() {
            Ok(guard) => guard.clone().ok_or(KeyError::Sealed),
            Err(_) => Err(KeyError::Sealed),
        }
    }

    /// Unwrapped subject keys; see [`KeyCache`].
    pub fn cache(&self) -> &Arc<KeyCache> {
        &self.cache
    }

    pub fn is_sealed(&self) -> bool {
        self.get().is_err()
    }

    /// Drops the keyring and every cached subject key; the keyring's keys
    /// are zeroized once the last request holding it finishes.
    pub fn seal(&self) {
        if let Ok(mut guard) = self.inner.write() {
            self.seals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *guard = None;
            self.cache.reset(false);
        }
    }

    /// How many seals there have been: what [`KeyState::install_unless_sealed_since`]
    /// compares.
    pub fn seals(&self) -> u64 {
        self.seals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Installs `keyring` unless a seal came after `seals` was read (an
    /// officer sealed while the unseal was opening the keys): the seal wins.
    pub fn install_unless_sealed_since(&self, seals: u64, keyring: Keyring) -> bool {
        if let Ok(mut guard) = self.inner.write() {
            if self.seals.load(std::sync::atomic::Ordering::SeqCst) == seals {
                *guard = Some(Arc::new(keyring));
                self.cache.reset(true);
                return true;
            }
        }
        false
    }

    /// Swaps in a newer keyring (after a rotation) unless the vault was
    /// sealed meanwhile.
    pub fn replace_if_unsealed(&self, keyring: Keyring) {
        if let Ok(mut guard) = self.inner.write() {
            if guard.is_some() {
                *guard = Some(Arc::new(keyring));
                self.cache.reset(true);
            }
        }
    }

    pub fn install(&self, keyring: Keyring) {
        if let Ok(mut guard) = self.inner.write() {
            *guard = Some(Arc::new(keyring));
            self.cache.reset(true);
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
    // Taken once: no copy of the root stays behind in a static (through a
    // seal, say) once the keys it opens are built.
    let taken = {
        let mut t = taken_keys();
        t.iter()
            .position(|(name, _)| name == var)
            .map(|i| t.swap_remove(i).1)
    };
    if let Some(key) = taken {
        return Ok(key);
    }
    let text =
        Zeroizing::new(std::env::var(var).map_err(|_| KeyError::MissingEnv(var.to_string()))?);
    parse_master(&text, var)
}

/// Master keys moved out of the environment by [`take_master_env`], by the
/// name of the variable that held them.
fn taken_keys() -> std::sync::MutexGuard<'static, Vec<(String, SecretKey<32>)>> {
    static TAKEN: std::sync::Mutex<Vec<(String, SecretKey<32>)>> =
        std::sync::Mutex::new(Vec::new());
    TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Moves the master key out of the variable `var` before the server
/// starts: the key is parsed into wiped memory, the variable's bytes in
/// the environment are zeroed and the variable removed (see
/// `hardening::take_env`), and the next [`master_from_env`] of `var`
/// answers with the moved key (once). Call it while the process has one
/// thread.
pub fn take_master_env(var: &str) -> Result<(), KeyError> {
    let text =
        crate::hardening::take_env(var).ok_or_else(|| KeyError::MissingEnv(var.to_string()))?;
    let key = parse_master(&text, var)?;
    taken_keys().push((var.to_string(), key));
    Ok(())
}

/// The most a master-key command may print: the 64 hex characters with
/// room for whitespace around them. More is refused, not read.
const COMMAND_OUTPUT_MAX: usize = 256;

/// Runs a configured command (a hook for an HSM or KMS client) and reads
/// the master key, 64 hex characters, from its standard output. Its output
/// goes into one buffer allocated at full size before the command runs
/// and wiped after parsing (`Command::output` grows a `Vec` and probes
/// through a stack buffer, leaving freed copies of the key text behind);
/// its standard error is not kept.
pub fn master_from_command(argv: &[String]) -> Result<SecretKey<32>, KeyError> {
    master_from_command_within(argv, COMMAND_WAIT)
}

/// How long a master-key command may take to print the key and close its
/// output: a hung HSM client, or a helper whose background child keeps
/// the output open, would otherwise hold the start (or an unseal) for
/// ever. It is killed instead, and the start fails saying why.
const COMMAND_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn master_from_command_within(
    argv: &[String],
    wait: std::time::Duration,
) -> Result<SecretKey<32>, KeyError> {
    use std::process::{Command, Stdio};
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| KeyError::Command("empty command".into()))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| KeyError::Command(format!("cannot run {program}: {}", e.kind())))?;
    // One byte over the cap, to tell "exactly full" from "too much".
    let mut buf = Zeroizing::new(vec![0u8; COMMAND_OUTPUT_MAX + 1]);
    let deadline = std::time::Instant::now() + wait;
    let read = match child.stdout.take() {
        Some(mut out) => read_capped(&mut out, &mut buf, deadline),
        None => Err(std::io::ErrorKind::BrokenPipe.into()),
    };
    // The pipe is closed by now: a command still writing gets EPIPE, and
    // one that would not stop is killed, so the wait cannot hang on it.
    let too_long = matches!(read, Ok(n) if n > COMMAND_OUTPUT_MAX);
    if too_long || read.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| KeyError::Command(format!("{program}: {}", e.kind())))?;
    let len = read.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => KeyError::Command(format!(
            "{program} did not print the key and close its output within {} s; it was killed",
            wait.as_secs_f32()
        )),
        kind => KeyError::Command(format!("{program}: {kind}")),
    })?;
    if too_long {
        return Err(KeyError::Command(format!(
            "{program} printed more than {COMMAND_OUTPUT_MAX} bytes"
        )));
    }
    if !status.success() {
        return Err(KeyError::Command(format!("{program} exited with {status}")));
    }
    let text = buf
        .get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| KeyError::Malformed {
            source_name: program.to_string(),
        })?;
    parse_master(text, program)
}

/// Reads from `from` into `buf` until end of input or until `buf` is
/// full; returns how many bytes it holds, or `TimedOut` at `deadline`.
/// Nothing is copied elsewhere.
fn read_capped(
    from: &mut (impl std::io::Read + std::os::fd::AsFd),
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> std::io::Result<usize> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut len = 0;
    while let Some(rest) = buf.get_mut(len..).filter(|r| !r.is_empty()) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let timeout = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&*from, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(std::io::ErrorKind::TimedOut.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        match from.read(rest) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
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
    let key = SecretKey::<32>::generate();
    // Hex and a newline, in one wiped buffer (a string grown by a push
    // would leave its first copy unwiped).
    let mut text = Zeroizing::new([b'\n'; 65]);
    let encoding = || std::io::Error::other("encoding the key");
    let digits = text.get_mut(..64).ok_or_else(encoding)?;
    hex::encode_to_slice(key.expose_secret(), digits).map_err(|_| encoding())?;
    // Whole or not there after a power cut, its name synced: a master key
    // lost to a cut would have the next start make a new one, and every
    // value sealed under the old one could never be opened again; one cut
    // short would stop every start.
    crate::store::write_new_file(path, text.as_slice(), 0o600)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    /// A root key moved out of the environment is handed out once: the
    /// variable is gone at once, the first load gets the key, and nothing
    /// is left for a second (no copy stays in the process's static).
    #[test]
    fn a_key_taken_from_the_environment_is_gone_from_it_and_given_once() {
        let var = format!("VAULT_TEST_TAKE_ONCE_{}", std::process::id());
        let hex = "11".repeat(32);
        std::env::set_var(&var, &hex);
        take_master_env(&var).unwrap();
        assert!(std::env::var(&var).is_err());
        let key = master_from_env(&var).unwrap();
        assert_eq!(key.expose_secret(), &[0x11; 32]);
        assert!(matches!(
            master_from_env(&var),
            Err(KeyError::MissingEnv(_))
        ));
        // A name getenv would misread is refused, not looked up.
        assert!(take_master_env(&format!("{var}=x")).is_err());
    }
    use crate::classes::Class;
    use crate::store::MemoryStore;

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
        // Never overwrites an existing key, and leaves nothing beside it.
        let before = std::fs::read(&p).unwrap();
        assert!(write_new_master(&p).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A temporary file an attempt cut short left behind is replaced.
        let q = dir.path().join("other.key");
        std::fs::write(dir.path().join(".other.key.new"), "half").unwrap();
        write_new_master(&q).unwrap();
        assert!(master_from_file(&q).is_ok());
        assert!(!dir.path().join(".other.key.new").exists());
        std::fs::remove_file(&q).unwrap();

        std::fs::write(&p, "zz").unwrap();
        let err = master_from_file(&p).unwrap_err().to_string();
        assert!(err.contains("not 64 hex"), "{err}");
        assert!(!err.contains("zz"));
        assert!(matches!(
            master_from_file(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }

    fn root(b: u8) -> SecretKey<32> {
        SecretKey::from_slice(&[b; 32]).unwrap()
    }

    #[test]
    fn hierarchy_is_created_once_and_reopened_only_with_its_root() {
        let store = MemoryStore::new();
        let a = Keyring::open(&root(9), &store).unwrap();
        let t = a.token_key().token(Class::Phone, "+8613800138000");
        let again = Keyring::open(&root(9), &store).unwrap();
        assert_eq!(again.token_key().token(Class::Phone, "+8613800138000"), t);
        assert!(matches!(
            Keyring::open(&root(8), &store),
            Err(KeyError::WrongRoot)
        ));
        // Nothing stored is a key in the clear: the raw data key never
        // appears in the meta space.
        let rows = store.scan(Space::Meta, b"", None, 100).unwrap();
        assert!(rows.len() >= 3);
    }

    #[test]
    fn rotation_keeps_tokens_and_old_versions_and_min_version_refuses() {
        let store = MemoryStore::new();
        let one = Keyring::open(&root(9), &store).unwrap();
        let aad = b"aad";
        let old = one.active().unwrap().seal(aad, b"13800138000").unwrap();
        let (batch, v) = one.rotation(5).unwrap();
        assert_eq!(v, 2);
        store.write(batch).unwrap();
        // A second rotation from the stale keyring loses the race.
        assert!(matches!(
            store.write(one.rotation(6).unwrap().0),
            Err(StoreError::Conflict)
        ));
        let two = one.reload(&store).unwrap();
        assert_eq!(two.active().unwrap().version(), 2);
        assert_eq!(
            two.token_key().token(Class::Phone, "+8613800138000"),
            one.token_key().token(Class::Phone, "+8613800138000")
        );
        assert_eq!(
            &two.version(1).unwrap().open(aad, &old).unwrap()[..],
            b"13800138000"
        );
        store.write(two.min_decryption(2).unwrap()).unwrap();
        let three = two.reload(&store).unwrap();
        assert!(matches!(three.version(1), Err(KeyError::BelowMinimum(1))));
        assert!(matches!(
            three.min_decryption(3),
            Err(KeyError::UnknownVersion(3))
        ));
        // Reopened from the root, the state is the same.
        let reopened = Keyring::open(&root(9), &store).unwrap();
        assert_eq!(reopened.meta(), three.meta());
    }

    #[test]
    fn retirement_deletes_the_wrapped_key_and_refuses_the_active_one() {
        let store = MemoryStore::new();
        let one = Keyring::open(&root(9), &store).unwrap();
        let sealed = one.active().unwrap().seal(b"a", b"x").unwrap();
        store.write(one.rotation(1_000).unwrap().0).unwrap();
        let two = one.reload(&store).unwrap();
        assert!(matches!(
            two.retirement(2, 10_000, 0),
            Err(KeyError::UnknownVersion(2))
        ));
        assert!(matches!(
            two.retirement(7, 10_000, 0),
            Err(KeyError::UnknownVersion(7))
        ));
        assert!(matches!(
            two.retirement(1, 1_500, 1_000),
            Err(KeyError::TooRecent(1))
        ));
        store
            .write(two.retirement(1, 2_000, 1_000).unwrap())
            .unwrap();
        assert_eq!(store.get(Space::Meta, &data_slot(1)).unwrap(), None);
        let after = Keyring::open(&root(9), &store).unwrap();
        assert!(matches!(after.version(1), Err(KeyError::UnknownVersion(1))));
        assert!(after.version(2).unwrap().open(b"a", &sealed).is_err());
        assert_eq!(after.meta().versions.len(), 1);
    }

    #[test]
    fn a_tampered_wrap_does_not_open() {
        let store = MemoryStore::new();
        Keyring::open(&root(9), &store).unwrap();
        let mut w = store.get(Space::Meta, &data_slot(1)).unwrap().unwrap();
        *w.last_mut().unwrap() ^= 1;
        let mut b = Batch::default();
        b.put(Space::Meta, data_slot(1), w);
        store.write(b).unwrap();
        assert!(Keyring::open(&root(9), &store).is_err());
    }

    /// The key records as a vault made before the state was sealed
    /// wrote them: the token key bound to its slot, the state in the clear.
    fn legacy_hierarchy(store: &MemoryStore, root: &SecretKey<32>) {
        let kek = kek_from_root(root);
        let meta = KeyMeta {
            active: 1,
            min_decryption_version: 1,
            versions: BTreeMap::from([(1, 7)]),
        };
        let mut b = Batch::default();
        let token = SecretKey::<32>::from_slice(&[3; 32]).unwrap();
        let data = SecretKey::<64>::generate();
        b.put(
            Space::Meta,
            TOKEN_SLOT.to_vec(),
            wrap(&kek, TOKEN_SLOT, &token).unwrap(),
        );
        b.put(
            Space::Meta,
            data_slot(1),
            wrap(&kek, &data_slot(1), &data).unwrap(),
        );
        b.put(
            Space::Meta,
            STATE_SLOT.to_vec(),
            serde_json::to_vec(&meta).unwrap(),
        );
        store.write(b).unwrap();
    }

    fn put_meta(store: &MemoryStore, slot: &[u8], value: Vec<u8>) {
        let mut b = Batch::default();
        b.put(Space::Meta, slot.to_vec(), value);
        store.write(b).unwrap();
    }

    fn clear_state(active: u32, min: u32, versions: &[u32]) -> Vec<u8> {
        serde_json::to_vec(&KeyMeta {
            active,
            min_decryption_version: min,
            versions: versions.iter().map(|&v| (v, 1)).collect(),
        })
        .unwrap()
    }

    #[test]
    fn the_key_state_is_sealed_and_a_clear_one_is_refused() {
        let store = MemoryStore::new();
        let one = Keyring::open(&root(9), &store).unwrap();
        let stored = store.get(Space::Meta, STATE_SLOT).unwrap().unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&stored).is_err());
        assert!(!format!("{one:?}").contains(&format!("{:?}", &stored[..8])));
        store.write(one.rotation(5).unwrap().0).unwrap();
        let two = one.reload(&store).unwrap();
        store.write(two.min_decryption(2).unwrap()).unwrap();
        // Someone who can write the database but lacks the root: the old
        // version made active again, or allowed to decrypt, in the clear.
        for forged in [clear_state(1, 1, &[1, 2]), clear_state(2, 1, &[1, 2])] {
            put_meta(&store, STATE_SLOT, forged);
            assert!(matches!(
                Keyring::open(&root(9), &store),
                Err(KeyError::Corrupt)
            ));
            assert!(matches!(
                Keyring::open_existing(&root(9), &store),
                Err(KeyError::Corrupt)
            ));
        }
        // A sealed record changed by one bit is no better.
        let mut bad = stored.clone();
        *bad.last_mut().unwrap() ^= 1;
        put_meta(&store, STATE_SLOT, bad);
        assert!(matches!(
            Keyring::open(&root(9), &store),
            Err(KeyError::Corrupt)
        ));
    }

    #[test]
    fn an_older_key_state_written_back_is_refused() {
        let store = MemoryStore::new();
        let one = Keyring::open(&root(9), &store).unwrap();
        let before = store.get(Space::Meta, STATE_SLOT).unwrap().unwrap();
        store.write(one.rotation(5).unwrap().0).unwrap();
        let two = one.reload(&store).unwrap();
        assert_eq!(two.active().unwrap().version(), 2);
        // The copy from before the rotation names version 1 active, while
        // version 2's key is stored: refused, new values never go under 1.
        put_meta(&store, STATE_SLOT, before);
        assert!(matches!(
            Keyring::open(&root(9), &store),
            Err(KeyError::Corrupt)
        ));
    }

    #[test]
    fn a_vault_with_the_clear_key_state_is_sealed_on_first_open() {
        let store = MemoryStore::new();
        legacy_hierarchy(&store, &root(9));
        let token = |k: &Keyring| k.token_key().token(Class::Phone, "+8613800138000");
        // The wrong root neither opens nor migrates it.
        assert!(matches!(
            Keyring::open_existing(&root(8), &store),
            Err(KeyError::WrongRoot)
        ));
        assert!(serde_json::from_slice::<KeyMeta>(
            &store.get(Space::Meta, STATE_SLOT).unwrap().unwrap()
        )
        .is_ok());
        let first = Keyring::open_existing(&root(9), &store).unwrap();
        assert_eq!(first.meta().versions, BTreeMap::from([(1, 7)]));
        let stored = store.get(Space::Meta, STATE_SLOT).unwrap().unwrap();
        assert!(serde_json::from_slice::<KeyMeta>(&stored).is_err());
        // Same tokens, same keys; changes work on the migrated records.
        let again = Keyring::open(&root(9), &store).unwrap();
        assert_eq!(token(&again), token(&first));
        store.write(again.rotation(9).unwrap().0).unwrap();
        assert_eq!(again.reload(&store).unwrap().meta().active, 2);
        // And the clear form cannot be written back.
        put_meta(&store, STATE_SLOT, clear_state(1, 1, &[1]));
        assert!(matches!(
            Keyring::open(&root(9), &store),
            Err(KeyError::Corrupt)
        ));
    }

    #[test]
    fn a_value_is_the_value_of_its_token_under_old_rules_too() {
        let store = MemoryStore::new();
        let keys = Keyring::open(&root(9), &store).unwrap();
        let token = |form: &str| keys.token_key().token(Class::Email, form);
        // Today's form.
        let today = crate::classes::normalize(Class::Email, "Alice@Example.com").unwrap();
        assert!(keys.is_token_of(
            Class::Email,
            b"Alice@Example.com",
            &token(today.token_form())
        ));
        // Stored as it was, tokenized lower-cased before invisible
        // characters were refused (normalize rejects it now).
        let old = "Al\u{200B}ice@example.com";
        assert!(crate::classes::normalize(Class::Email, old).is_err());
        assert!(keys.is_token_of(Class::Email, old.as_bytes(), &token(&old.to_lowercase())));
        // Another value's token is not.
        assert!(!keys.is_token_of(Class::Email, b"bob@example.com", &token(today.token_form())));
        assert!(!keys.is_token_of(Class::Email, &[0xff, 0xfe], &token("x")));
    }

    #[test]
    fn key_command_is_read_and_its_failures_are_clear() {
        let hexkey = "ab".repeat(32);
        let k = master_from_command(&["echo".into(), hexkey]).unwrap();
        assert_eq!(k.expose_secret(), &[0xab; 32]);
        assert!(matches!(
            master_from_command(&["false".into()]),
            Err(KeyError::Command(_))
        ));
        assert!(matches!(
            master_from_command(&["/nonexistent/kms".into()]),
            Err(KeyError::Command(_))
        ));
        assert!(matches!(
            master_from_command(&[]),
            Err(KeyError::Command(_))
        ));
    }

    /// A command that hangs, or prints the key and leaves a background
    /// child holding its output, is killed at the deadline and the start
    /// fails saying so, rather than waiting for ever.
    #[test]
    fn a_key_command_that_does_not_finish_is_killed_at_its_deadline() {
        let hexkey = "ab".repeat(32);
        let wait = std::time::Duration::from_millis(300);
        for script in ["sleep 30".to_string(), format!("echo {hexkey}; sleep 30 &")] {
            let started = std::time::Instant::now();
            let err = master_from_command_within(&["sh".into(), "-c".into(), script.clone()], wait)
                .unwrap_err();
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{script}"
            );
            let KeyError::Command(m) = err else {
                panic!("{script}: {err:?}")
            };
            assert!(m.contains("within 0.3 s"), "{m}");
            assert!(!m.contains(&hexkey));
        }
        // Within its time it is read as before.
        let k = master_from_command_within(&["echo".into(), hexkey], wait).unwrap();
        assert_eq!(k.expose_secret(), &[0xab; 32]);
    }

    #[test]
    fn key_command_output_is_capped() {
        let hexkey = "cd".repeat(32);
        // Whitespace around the key is fine, up to the cap.
        let padded = format!("printf '%s\\n%s' '{hexkey}' \"$(printf '%150s' '')\"");
        let k = master_from_command(&["sh".into(), "-c".into(), padded]).unwrap();
        assert_eq!(k.expose_secret(), &[0xcd; 32]);
        // Exactly at the cap is read.
        let at_cap = format!("printf '%s%192s' '{hexkey}' ''");
        let k = master_from_command(&["sh".into(), "-c".into(), at_cap]).unwrap();
        assert_eq!(k.expose_secret(), &[0xcd; 32]);
        // More is refused as too long, not read and parsed.
        let err = master_from_command(&["sh".into(), "-c".into(), "head -c 300 /dev/zero".into()])
            .unwrap_err();
        assert!(
            matches!(&err, KeyError::Command(m) if m.contains("more than 256 bytes")),
            "{err:?}"
        );
    }

    #[test]
    fn key_command_that_never_stops_printing_is_cut_off() {
        // Read up to the cap, then killed: the start neither hangs nor
        // fills memory.
        let err = master_from_command(&["yes".into()]).unwrap_err();
        assert!(
            matches!(&err, KeyError::Command(m) if m.contains("more than 256 bytes")),
            "{err:?}"
        );
    }

    #[test]
    fn keys_are_never_created_over_stored_data() {
        for (space, key) in [
            (Space::Values, b"row".to_vec()),
            (Space::SubjectKeys, b"row".to_vec()),
            (Space::Audit, b"row".to_vec()),
            (Space::Meta, STATE_SLOT.to_vec()),
            (Space::Meta, data_slot(1)),
        ] {
            let store = MemoryStore::new();
            let mut b = Batch::default();
            b.put(space, key, b"x".to_vec());
            store.write(b).unwrap();
            assert!(matches!(
                Keyring::refuse_over_data(&store),
                Err(KeyError::KeysMissing)
            ));
            assert!(
                matches!(Keyring::open(&root(9), &store), Err(KeyError::KeysMissing)),
                "{space:?}"
            );
            assert!(!Keyring::exists(&store).unwrap());
        }
    }

    #[test]
    fn opening_an_existing_hierarchy_never_creates_one() {
        let store = MemoryStore::new();
        let root = SecretKey::<32>::from_slice(&[9; 32]).unwrap();
        assert!(matches!(
            Keyring::open_existing(&root, &store),
            Err(KeyError::Corrupt)
        ));
        assert!(!Keyring::exists(&store).unwrap());
        let made = Keyring::open(&root, &store).unwrap();
        let again = Keyring::open_existing(&root, &store).unwrap();
        assert_eq!(
            made.token_key().token(Class::Phone, "+8613800138000"),
            again.token_key().token(Class::Phone, "+8613800138000")
        );
        // Another root opens nothing.
        let other = SecretKey::<32>::from_slice(&[8; 32]).unwrap();
        assert!(Keyring::open_existing(&other, &store).is_err());
    }

    #[test]
    fn seal_drops_the_keyring() {
        let store = MemoryStore::new();
        let state = KeyState::unsealed(Keyring::open(&root(9), &store).unwrap());
        assert!(state.get().is_ok());
        state.seal();
        assert!(matches!(state.get(), Err(KeyError::Sealed)));
        assert!(state.is_sealed());
        let dbg = format!("{:?}", Keyring::open(&root(9), &store).unwrap());
        assert!(!dbg.contains("9, 9"), "{dbg}");
    }

    #[test]
    fn seal_empties_the_subject_key_cache_and_unseal_reopens_it() {
        let store = MemoryStore::new();
        let ring = Keyring::open(&root(9), &store).unwrap();
        let (_, b) = crate::subject_keys::create(&ring, "s1").unwrap();
        store.write(b).unwrap();
        let state = KeyState::unsealed(ring);
        let load = |state: &KeyState| {
            let ring = state.get().unwrap();
            crate::subject_keys::load_cached(&store, &ring, state.cache(), "s1")
                .unwrap()
                .unwrap();
        };
        load(&state);
        assert_eq!(state.cache().len(), 1);
        // A request still holding the old keyring cannot refill it sealed.
        let held = state.get().unwrap();
        state.seal();
        assert!(state.cache().is_empty());
        crate::subject_keys::load_cached(&store, &held, state.cache(), "s1").unwrap();
        assert!(state.cache().is_empty());
        state.install(Keyring::open(&root(9), &store).unwrap());
        load(&state);
        assert_eq!(state.cache().len(), 1);
        // A new keyring (a rotation) starts with an empty cache too.
        state.replace_if_unsealed(Keyring::open(&root(9), &store).unwrap());
        assert!(state.cache().is_empty());
    }
}
