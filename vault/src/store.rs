//! The storage interface. Nothing above this module names an engine: the
//! embedded RocksDB engine and the in-memory model implement the same
//! [`Store`] trait, and a shared engine on a distributed SQL database can slot
//! in beside them. The trait's three promises are what such a backend must
//! also keep: atomic multi-key batches, ordered range scans, and
//! compare-and-set preconditions checked atomically with the batch.

mod memory;
mod rocks;

pub use memory::MemoryStore;
pub use rocks::RocksStore;

/// Makes `path`'s name durable: syncs the directory that holds it. POSIX
/// makes a new, removed or renamed name survive a power cut only then;
/// syncing the file itself keeps its bytes, not its name
/// (`tests/integration/powerloss.rs` checks the vault's own files).
pub fn sync_parent(path: &std::path::Path) -> std::io::Result<()> {
    sync_dir(parent_dir(path))
}

/// Makes the names in directory `dir` durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Like [`sync_dir`], for a start that syncs directories it did not
/// necessarily make: one the file system or its permissions do not let
/// this process sync (read-only, unreadable, no directory sync) is logged,
/// not fatal. Names made in it may then not survive a power cut; the start
/// goes on as it did before it synced anything.
pub fn sync_dir_or_warn(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::ErrorKind::{InvalidInput, PermissionDenied, ReadOnlyFilesystem, Unsupported};
    match sync_dir(dir) {
        Err(e)
            if matches!(
                e.kind(),
                PermissionDenied | InvalidInput | ReadOnlyFilesystem | Unsupported
            ) =>
        {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "Could not sync a directory: names made in it may not survive a power cut"
            );
            Ok(())
        }
        r => r,
    }
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &std::path::Path) -> &std::path::Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// The temporary name [`write_new_file`] writes `path` under first.
fn leftover(path: &std::path::Path, name: &std::ffi::OsStr) -> std::path::PathBuf {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".new");
    path.with_file_name(tmp)
}

/// Removes what a [`write_new_file`] of `path` cut short left beside it
/// (after its link, a second copy of what `path` holds).
pub fn remove_leftover(path: &std::path::Path) -> std::io::Result<()> {
    let Some(name) = path.file_name() else {
        return Ok(());
    };
    match std::fs::remove_file(leftover(path, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates `path` holding `bytes`, with permissions `mode`, refusing a
/// name that exists; after a crash or power cut at any moment the name
/// holds all of the bytes or is not there. The bytes go to a temporary
/// file beside it first (`.NAME.new`, replaced if an earlier attempt left
/// one), synced, which is then linked under the name (on a file system
/// without hard links, renamed to it, still refusing an existing name);
/// the directory is synced last. Written in place, a cut could leave the
/// name holding nothing: a journal may commit a new name before its
/// file's bytes. (vfat's own rename is not atomic across a power cut;
/// nothing here can make it so.)
pub fn write_new_file(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let tmp = leftover(path, name);
    remove_leftover(path)?;
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // A link, not a plain rename: it refuses a name that exists.
        match std::fs::hard_link(&tmp, path) {
            Err(e) if no_links(&e) => rename_new(&tmp, path),
            r => r,
        }
    })();
    // Gone already after a rename.
    let removed = match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    written?;
    removed?;
    sync_parent(path)
}

/// A file system without hard links (vfat, exFAT, some shared folders)
/// answers a link so.
fn no_links(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{PermissionDenied, Unsupported};
    matches!(e.kind(), PermissionDenied | Unsupported)
        || e.raw_os_error() == Some(rustix::io::Errno::MLINK.raw_os_error())
}

/// Moves `from` to the new name `to`, refusing one that exists: in one
/// step where the file system can (`RENAME_NOREPLACE`), else by looking
/// first (the directory is the caller's own).
fn rename_new(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e)
            if [
                rustix::io::Errno::INVAL,
                rustix::io::Errno::NOSYS,
                rustix::io::Errno::OPNOTSUPP,
            ]
            .contains(&e) =>
        {
            // Free only when it is known to be: any other answer (an I/O
            // error of a network file system) is not a free name.
            match to.symlink_metadata() {
                Ok(_) => Err(std::io::ErrorKind::AlreadyExists.into()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::rename(from, to),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A keyspace (a column family in RocksDB, a table elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// token ‖ subject → sealed value record, or the tombstone a deleted
    /// value leaves (`schema::Tombstone`).
    Values,
    /// subject ‖ 0 ‖ token → empty: every value of a subject.
    Subjects,
    /// expiry (big-endian ms) ‖ token ‖ subject → empty: due values in
    /// order, and tombstones at the end of their keeping.
    Expiry,
    /// sequence (big-endian) → audit event.
    Audit,
    /// Small named settings: the audit head, key versions.
    Meta,
    /// subject ‖ 0 ‖ purpose ‖ 0 ‖ sequence → consent entry (append-only).
    Consents,
    /// approval id → approval of a legal-exception disclosure.
    Approvals,
    /// subject → its key material, wrapped. Erasure deletes it and purges
    /// the space, which makes every copy of the subject's ciphertexts
    /// unreadable (crypto-shredding).
    SubjectKeys,
}

impl Space {
    pub const ALL: [Space; 8] = [
        Space::Values,
        Space::Subjects,
        Space::Expiry,
        Space::Audit,
        Space::Meta,
        Space::Consents,
        Space::Approvals,
        Space::SubjectKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::Values => "values",
            Space::Subjects => "subjects",
            Space::Expiry => "expiry",
            Space::Audit => "audit",
            Space::Meta => "meta",
            Space::Consents => "consents",
            Space::Approvals => "approvals",
            Space::SubjectKeys => "subject_keys",
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition of the batch did not hold; nothing was written.
    #[error("a precondition of the write did not hold")]
    Conflict,
    /// The engine failed (I/O, disk full, corruption). The message comes from
    /// the engine and holds paths and status, never keys or values.
    #[error("storage engine error: {0}")]
    Engine(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Space, Vec<u8>, Vec<u8>),
    Delete(Space, Vec<u8>),
}

/// An expected current value: `None` means the key must be absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub space: Space,
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// Writes applied all together or not at all, after all checks pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub checks: Vec<Check>,
    /// The oldest data-key version this batch seals new values under, if
    /// it seals any: the committer refuses it when that is below its
    /// floor (see `raise_floor`). Engines ignore it.
    pub sealed_under: Option<u32>,
    /// Raises the committer's floor to this version once the batch is
    /// dequeued: later batches sealed under an older version are refused
    /// (`Conflict`), so they run again with the keys of now. What a
    /// rewrap fence and a retirement's count rely on. Engines ignore it.
    pub raise_floor: Option<u32>,
    /// The subjects (as [`subject_tag`]s) for which this batch makes a
    /// value unreleasable (erased, corrected, restricted, expired, its
    /// consent withdrawn, its key destroyed): a release that read one of
    /// them before this batch was dequeued is refused (see `reads`).
    /// Engines ignore it.
    pub touches: Vec<u64>,
    /// Touches every subject: every release read before this batch was
    /// dequeued is refused (a seal). Engines ignore it.
    pub touches_all: bool,
    /// The minimum decryption version from this batch on (a change of it,
    /// or the stored one after a change failed): the committer refuses
    /// (`Stale`) a release that decrypted under a lower minimum
    /// (`Reads::min_decryption`), whenever its reads began. Engines ignore
    /// it.
    pub raise_min_decryption: Option<u32>,
    /// For a batch that releases values: what they were read under. The
    /// committer refuses it ([`crate::commit::CommitError::Stale`]) when a
    /// batch touching one of the subjects was dequeued after the reads
    /// began, so nothing read before an erasure, a correction, a
    /// restriction or a withdrawal of consent is released after it was
    /// acknowledged. Engines ignore it. (The check is the committer's, in
    /// one process: a backend shared by several vaults would need it in
    /// the store, as a guarded version per subject.)
    pub reads: Option<Reads>,
}

/// What a release read: the committer's epoch taken before the first read
/// ([`crate::commit::Committer::epoch`]) and the subjects released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub epoch: u64,
    pub subjects: Vec<u64>,
    /// The minimum decryption version of the keyring it decrypted with.
    pub min_decryption: u32,
}

/// A subject's tag for [`Batch::touches`] and [`Reads`]: a keyed hash,
/// random per process, so a caller cannot aim collisions at a subject; a
/// collision only refuses a release that then runs again.
pub fn subject_tag(subject: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(subject)
}

impl Batch {
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op::Put(space, key, value));
    }

    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.ops.push(Op::Delete(space, key));
    }

    pub fn expect(&mut self, space: Space, key: Vec<u8>, expected: Option<Vec<u8>>) {
        self.checks.push(Check {
            space,
            key,
            expected,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.checks.is_empty()
    }

    /// Appends `other`'s operations and checks (used by group commit).
    pub fn absorb(&mut self, other: Batch) {
        self.ops.extend(other.ops);
        self.checks.extend(other.checks);
        self.sealed_under = match (self.sealed_under, other.sealed_under) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.raise_floor = self.raise_floor.max(other.raise_floor);
        self.touches.extend(other.touches);
        self.touches_all |= other.touches_all;
        // The later one is the minimum from then on.
        self.raise_min_decryption = other.raise_min_decryption.or(self.raise_min_decryption);
        self.reads = match (self.reads.take(), other.reads) {
            (Some(mut a), Some(b)) => {
                a.epoch = a.epoch.min(b.epoch);
                a.subjects.extend(b.subjects);
                a.min_decryption = a.min_decryption.min(b.min_decryption);
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }

    /// Marks the batch as changing what `subject`'s releases may read.
    pub fn touch(&mut self, subject: &str) {
        let tag = subject_tag(subject);
        if !self.touches.contains(&tag) {
            self.touches.push(tag);
        }
    }

    /// Marks the batch as sealing new values under `version`.
    pub fn seals_under(&mut self, version: u32) {
        self.sealed_under = Some(self.sealed_under.map_or(version, |v| v.min(version)));
    }
}

/// Key-value pairs in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A transactional ordered key-value store.
pub trait Store: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Rows with `from <= key < to` (no upper bound when `to` is `None`), in
    /// key order, at most `limit` of them.
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError>;

    /// The last `limit` rows with `from <= key < to`, in descending key
    /// order: the newest entries of a log keyed by time. This default pages
    /// forward through the whole range; engines that can iterate backwards
    /// override it.
    fn scan_rev(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        const PAGE: usize = 1024;
        let mut last = std::collections::VecDeque::new();
        let mut start = from.to_vec();
        loop {
            let page = self.scan(space, &start, to, PAGE)?;
            let full = page.len() == PAGE;
            if let Some((k, _)) = page.last() {
                start = k.clone();
                start.push(0);
            }
            for row in page {
                if last.len() == limit {
                    last.pop_front();
                }
                if limit > 0 {
                    last.push_back(row);
                }
            }
            if !full {
                return Ok(last.into_iter().rev().collect());
            }
        }
    }

    /// Applies `batch` atomically and durably: when this returns `Ok`, the
    /// batch survives a crash or power loss. Fails with
    /// [`StoreError::Conflict`] and writes nothing when a check fails.
    fn write(&self, batch: Batch) -> Result<(), StoreError>;

    /// Group commit: writes, as one atomic and durable batch, every batch
    /// of `group` whose checks hold (against the store, and against the
    /// keys the kept batches before it write), plus what `finish` adds for
    /// the kept ones (their audit events). Answers which were kept: a
    /// failed check leaves out only its own batch. On an engine error
    /// nothing is known to be written. Engines that hold their write lock
    /// across the checks and the write (RocksDB) check each key once; this
    /// default checks before and again inside [`Store::write`].
    fn write_group(
        &self,
        group: Vec<Batch>,
        finish: &mut dyn FnMut(&[bool]) -> Batch,
    ) -> Result<Vec<bool>, StoreError> {
        let kept = screen(&group, |space, keys| {
            keys.iter().map(|k| self.get(space, k)).collect()
        })?;
        let mut merged = Batch::default();
        for (b, keep) in group.into_iter().zip(&kept) {
            if *keep {
                merged.absorb(b);
            }
        }
        merged.absorb(finish(&kept));
        if !merged.is_empty() {
            self.write(merged)?;
        }
        Ok(kept)
    }

    /// Makes deletions in `space` physical: afterwards no file of the
    /// engine (table files, write-ahead log) still holds a deleted value.
    /// Erasure relies on it for subject keys. Engines without old versions
    /// (the in-memory model) have nothing to do.
    fn purge(&self, space: Space) -> Result<(), StoreError> {
        let _ = space;
        Ok(())
    }

    /// After a write failed with an engine error, makes the engine take
    /// writes again if it can (RocksDB reopens once the disk has room).
    /// `Ok` means writes may be tried; it changes nothing visible: every
    /// acknowledged write is still there, and a failed batch is either
    /// wholly present or wholly absent afterwards. Engines that cannot get
    /// stuck have nothing to do.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Which batches of a group to keep: each one whose checks hold against
/// the current values (`lookup` answers a space's keys, all at once) and
/// against the writes of the batches kept before it.
pub(crate) fn screen(
    group: &[Batch],
    mut lookup: impl FnMut(Space, &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError>,
) -> Result<Vec<bool>, StoreError> {
    use std::collections::{HashMap, HashSet};
    let mut current: HashMap<(Space, &[u8]), Option<Vec<u8>>> = HashMap::new();
    // The spaces some check reads: only ops there can matter (and need
    // hashing) below.
    let mut checked: Vec<Space> = Vec::new();
    for space in Space::ALL {
        let keys: Vec<&[u8]> = group
            .iter()
            .flat_map(|b| &b.checks)
            .filter(|c| c.space == space)
            .map(|c| c.key.as_slice())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if keys.is_empty() {
            continue;
        }
        checked.push(space);
        let found = lookup(space, &keys)?;
        current.extend(keys.into_iter().map(|k| (space, k)).zip(found));
    }
    // A key a kept batch writes fails every later check of it: checks
    // compare with what was read before the group, which that write
    // changes.
    let mut written: HashSet<(Space, &[u8])> = HashSet::new();
    let mut kept = Vec::with_capacity(group.len());
    for b in group {
        let holds = b.checks.iter().all(|c| {
            let k = (c.space, c.key.as_slice());
            !written.contains(&k) && current.get(&k).is_some_and(|cur| *cur == c.expected)
        });
        if holds {
            for op in &b.ops {
                let k = match op {
                    Op::Put(space, k, _) | Op::Delete(space, k) => (*space, k.as_slice()),
                };
                if checked.contains(&k.0) && current.contains_key(&k) {
                    written.insert(k);
                }
            }
        }
        kept.push(holds);
    }
    Ok(kept)
}

/// The smallest key greater than every key that starts with `prefix`, for
/// prefix scans; `None` when no such key exists (all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The last `limit` rows whose key starts with `prefix`, newest (greatest
/// key) first.
pub fn scan_prefix_rev(
    store: &dyn Store,
    space: Space,
    prefix: &[u8],
    limit: usize,
) -> Result<Rows, StoreError> {
    store.scan_rev(space, prefix, prefix_end(prefix).as_deref(), limit)
}

/// All rows whose key starts with `prefix`.
pub fn scan_prefix(
    store: &dyn Store,
    space: Space,
    prefix: &[u8],
    limit: usize,
) -> Result<Rows, StoreError> {
    store.scan(space, prefix, prefix_end(prefix).as_deref(), limit)
}

#[cfg(test)]
mod conformance;

/// Test doubles over the in-memory model.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Batch, MemoryStore, Rows, Space, Store, StoreError};

    /// The in-memory store with two hooks: `after_get` runs after each
    /// read of one key (to hold a request between its reads and its
    /// write), and the next `fail_writes` writes fail as a full disk
    /// would.
    pub(crate) struct HookedStore {
        pub inner: MemoryStore,
        pub after_get: Box<dyn Fn(Space) + Send + Sync>,
        pub fail_writes: AtomicUsize,
    }

    impl HookedStore {
        pub fn new(after_get: impl Fn(Space) + Send + Sync + 'static) -> HookedStore {
            HookedStore {
                inner: MemoryStore::new(),
                after_get: Box::new(after_get),
                fail_writes: AtomicUsize::new(0),
            }
        }

        fn failing(&self) -> bool {
            self.fail_writes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    impl Store for HookedStore {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let got = self.inner.get(space, key);
            (self.after_get)(space);
            got
        }
        fn scan(
            &self,
            space: Space,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Rows, StoreError> {
            self.inner.scan(space, from, to, limit)
        }
        fn write(&self, batch: Batch) -> Result<(), StoreError> {
            if self.failing() {
                return Err(StoreError::Engine("disk full".into()));
            }
            self.inner.write(batch)
        }
        fn write_group(
            &self,
            group: Vec<Batch>,
            finish: &mut dyn FnMut(&[bool]) -> Batch,
        ) -> Result<Vec<bool>, StoreError> {
            if self.failing() {
                return Err(StoreError::Engine("disk full".into()));
            }
            self.inner.write_group(group, finish)
        }
    }
}
