//! The embedded engine: RocksDB with one column family per [`Space`].
//! Invariants: every write is one `WriteBatch` written with `sync = true`, so an
//! acknowledged write survives power loss; checks and the batch they guard
//! run under one lock, so compare-and-set is atomic.
//!
//! After a failed write (disk full, I/O error) RocksDB stops taking writes
//! until it is resumed, and the crate cannot call `DB::Resume`; its own
//! recovery waits for a whole write buffer (64 MiB) of free space and polls
//! every 5 s. So [`Store::recover`] reopens the database instead, once the
//! disk has room for the reopen's flush: a reopen is exactly a restart after
//! a crash (the synced log replays every acknowledged batch, a torn batch at
//! its tail is dropped whole), without the process going away. Reads go on
//! against the stopped database until then; if the reopen itself fails, a
//! read-only instance keeps serving them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use super::{Batch, Op, Rows, Space, Store, StoreError};

/// Free space wanted beyond the write-ahead log before a reopen is tried:
/// the reopen flushes the replayed log into table files and writes a new
/// manifest and log. Too little only means the reopen fails and is tried
/// again; it costs a reopen, never data.
const REOPEN_MARGIN: u64 = 8 << 20;

/// Room a purge leaves beside its copy of the space it rewrites: the
/// flushes it starts with write the memtables out (a few of 8-64 MB).
const PURGE_MARGIN: u64 = 128 << 20;

/// Least time between two reopen attempts, so a disk that stays broken
/// costs at most a few reopens a second.
const REOPEN_EVERY: Duration = Duration::from_millis(250);

pub struct RocksStore {
    dir: PathBuf,
    read_only: bool,
    /// The open engine; `None` only while a reopen found no way to open
    /// it. Readers share it; a reopen replaces it.
    db: RwLock<Option<DB>>,
    /// Serializes check-then-write and reopens. Group commit funnels writes
    /// through one thread, so this lock is uncontended in the server.
    write_lock: Mutex<Health>,
}

/// What the last write said about the engine.
#[derive(Debug, Default)]
struct Health {
    /// A write failed and no write has succeeded since.
    failed: bool,
    last_reopen: Option<Instant>,
}

impl Health {
    /// Records a write's outcome: a conflict says nothing of the engine.
    fn note<T>(&mut self, result: &Result<T, StoreError>) {
        match result {
            Ok(_) => self.failed = false,
            Err(StoreError::Conflict) => {}
            Err(_) => self.failed = true,
        }
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.dir)
            .finish()
    }
}

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

fn poisoned() -> StoreError {
    StoreError::Engine("storage lock poisoned".into())
}

fn closed() -> StoreError {
    StoreError::Engine("the database is closed after a failed reopen".into())
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // The default column family is unused; each space sets its own (below).
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    // The subject-key space keeps its memtable in a hash table (below),
    // which takes one writer at a time; every write here is under the
    // store's write lock anyway.
    opts.set_allow_concurrent_memtable_write(false);
    // A write-ahead log retires once every space with writes in it has
    // flushed, and the small spaces fill their memtables slowly: under
    // sustained tokenize load the logs held 408 MB after 60 s and kept
    // growing (RocksDB's own bound here is 4 x all write buffers, about
    // 5 GB), all of it replayed after a crash and all of it what a reopen
    // after a full disk must find room for. Past this size the spaces
    // holding the oldest log are flushed and it is deleted.
    opts.set_max_total_wal_size(MAX_TOTAL_WAL);
    // Flushes and compactions write table files in bursts, and on a
    // single disk every log sync in flight queues behind them. During a
    // flush each group commit took 2-3 times as long (0.5-0.7 ms against
    // 0.25), and at half of peak load the clients then fell behind for a
    // few hundred milliseconds at a time. So their writes are paced: handed
    // out every millisecond, up to TABLE_WRITE_RATE, and written back to
    // the disk every TABLE_WRITE_BACK bytes as they go (not all at a table
    // file's final sync), so a log sync waits behind a small piece at most.
    // The rate is about twice the table data of this vault's peak batch
    // ingest (some 60 MB/s at 250 k fields/s, which compactions write
    // again): sustained batch load was slowed for moments, never stopped,
    // while 64 and 96 MB/s stopped writes for seconds.
    opts.set_ratelimiter(TABLE_WRITE_RATE, 1_000, 10);
    opts.set_bytes_per_sync(TABLE_WRITE_BACK);
    opts
}

/// Most bytes per second flushes and compactions write (see [`db_options`]).
const TABLE_WRITE_RATE: i64 = 128 << 20;
/// How much of a table file is written before it is pushed to the disk.
const TABLE_WRITE_BACK: u64 = 128 << 10;

/// Most write-ahead log bytes kept before the oldest log's spaces flush.
pub(super) const MAX_TOTAL_WAL: u64 = 256 << 20;

/// Memtable size of the spaces written at random keys, and how many of
/// them one flush merges into a table file (see [`cf_options`]).
const RANDOM_MEMTABLE: usize = 4 << 20;
const RANDOM_MEMTABLES_PER_FLUSH: i32 = 8;

/// `Values` keys begin with the token: the prefix detokenize seeks.
const VALUES_PREFIX: usize = crate::crypto::TOKEN_BYTES;

/// The spaces read by key (a value, a subject's key, a restriction or hold,
/// an approval) carry bloom filters in their table files and memtables
/// (whole keys, and in `Values` also the token prefix), so a read of an
/// absent key or a token's seek skips what cannot hold it instead of
/// searching each file: what keeps reads flat as a database grows. The
/// spaces only ever scanned in order (indexes, audit) go without, sparing
/// their inserts and flushes the filter work.
fn cf_options(space: Space) -> Options {
    let mut o = Options::default();
    // Ciphertext, wrapped keys and keys that are mostly a random token do
    // not compress: LZ4 over them only costs flushes and compactions CPU
    // (8.6% of the vault's CPU in a profile of batch tokenize while
    // compactions ran). The audit log's JSON and the small spaces keep it.
    let compress = !matches!(
        space,
        Space::Values | Space::SubjectKeys | Space::Subjects | Space::Expiry
    );
    o.set_compression_type(if compress {
        rocksdb::DBCompressionType::Lz4
    } else {
        rocksdb::DBCompressionType::None
    });
    if matches!(space, Space::Values | Space::Subjects) {
        // The two spaces written at random keys (a token, a subject): each
        // insert searches the memtable's skip list from the top, and in a
        // 64 MB memtable that walk misses the cache at every level (46% of
        // the committer thread's CPU on tokenize). A small memtable keeps
        // the walk in the cache; merging eight of them at a flush keeps the
        // table files as large as before, so compaction does no more work,
        // and room for another eight lets writes go on while they flush.
        o.set_write_buffer_size(RANDOM_MEMTABLE);
        o.set_min_write_buffer_number_to_merge(RANDOM_MEMTABLES_PER_FLUSH);
        o.set_max_write_buffer_number(2 * RANDOM_MEMTABLES_PER_FLUSH);
    }
    if matches!(space, Space::Subjects | Space::Expiry | Space::Audit) {
        return o;
    }
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&table);
    o.set_memtable_whole_key_filtering(true);
    o.set_memtable_prefix_bloom_ratio(0.02);
    if space == Space::Values {
        o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(VALUES_PREFIX));
    }
    if space == Space::SubjectKeys {
        // Only ever read and written by whole key (never scanned), and
        // read on every tokenize and detokenize of a subject not cached,
        // and checked in the committer for every tokenize: a hash table
        // finds a key with a cache miss or two, where the skip list of a
        // memtable holding every subject searched a dozen levels
        // (`FindGreaterOrEqual`, 7% of the vault's CPU on tokenize). The
        // prefix is the whole key; a flush sorts the table once.
        o.set_prefix_extractor(rocksdb::SliceTransform::create_noop());
        o.set_memtable_factory(rocksdb::MemtableFactory::HashLinkList {
            bucket_count: 1 << 18,
        });
    }
    o
}

/// How a scan reads: a token's rows in `Values` (exactly the range
/// `[token, prefix_end(token))`) seek by prefix, with the filters; every
/// other scan is total-order, which a prefix extractor would otherwise make
/// undefined past the first prefix.
fn scan_options(space: Space, from: &[u8], to: Option<&[u8]>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    let one_token = space == Space::Values
        && from.len() == VALUES_PREFIX
        && to.is_some()
        && to == crate::store::prefix_end(from).as_deref();
    if one_token {
        ro.set_prefix_same_as_start(true);
    } else {
        ro.set_total_order_seek(true);
    }
    if let Some(t) = to {
        ro.set_iterate_upper_bound(t.to_vec());
    }
    ro
}

fn open_read_write(dir: &Path) -> Result<DB, StoreError> {
    let cfs = Space::ALL
        .iter()
        .map(|s| ColumnFamilyDescriptor::new(s.name(), cf_options(*s)));
    DB::open_cf_descriptors(&db_options(), dir, cfs).map_err(engine)
}

fn open_read_only(dir: &Path) -> Result<DB, StoreError> {
    // RocksDB would create a missing directory even to read it: a typo in
    // `audit verify --data` must not leave one behind.
    if !dir.join("CURRENT").is_file() {
        return Err(StoreError::Engine(format!(
            "no database at {} (no CURRENT file)",
            dir.display()
        )));
    }
    let names = Space::ALL.iter().map(|s| s.name());
    DB::open_cf_for_read_only(&Options::default(), dir, names, false).map_err(engine)
}

/// The first `limit` rows an iterator gives, owned.
fn rows(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    limit: usize,
) -> Result<Rows, StoreError> {
    iter.take(limit)
        .map(|item| {
            let (k, v) = item.map_err(engine)?;
            Ok((k.into_vec(), v.into_vec()))
        })
        .collect()
}

fn cf(db: &DB, space: Space) -> Result<&rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(space.name())
        .ok_or_else(|| StoreError::Engine(format!("missing column family {}", space.name())))
}

/// Whether the disk under `dir` has room for a reopen: the live
/// write-ahead log files (what the reopen flushes) plus a margin.
fn room_to_reopen(dir: &Path) -> Result<bool, StoreError> {
    let io = |e: std::io::Error| StoreError::Engine(format!("{}: {e}", dir.display()));
    let mut wal = 0u64;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.path().extension().is_some_and(|e| e == "log") {
            wal = wal.saturating_add(entry.metadata().map_err(io)?.len());
        }
    }
    let fs = rustix::fs::statvfs(dir).map_err(|e| io(e.into()))?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    Ok(free >= wal.saturating_add(REOPEN_MARGIN))
}

impl RocksStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_read_write(dir)?;
        // RocksDB syncs the names in its directory, not the directory's
        // own name, which it made when it was missing.
        super::sync_dir_or_warn(super::parent_dir(dir)).map_err(|e| {
            StoreError::Engine(format!("syncing the directory holding the database: {e}"))
        })?;
        Ok(Self::with(dir, db, false))
    }

    /// Opens an existing database without taking its lock, for offline checks
    /// that may run beside a live server.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let db = open_read_only(dir)?;
        Ok(Self::with(dir, db, true))
    }

    fn with(dir: &Path, db: DB, read_only: bool) -> Self {
        Self {
            dir: dir.to_path_buf(),
            read_only,
            db: RwLock::new(Some(db)),
            write_lock: Mutex::new(Health::default()),
        }
    }

    /// The write lock. A panic while it was held (in a write, whatever
    /// panicked) leaves the engine's state unknown, so it counts as a
    /// failed write: the lock is taken back and the next
    /// [`Store::recover`] reopens the engine, where otherwise every write
    /// after would be refused until a restart.
    fn health(&self) -> MutexGuard<'_, Health> {
        self.write_lock.lock().unwrap_or_else(|poison| {
            self.write_lock.clear_poison();
            let mut health = poison.into_inner();
            health.failed = true;
            health.last_reopen = None;
            tracing::error!(path = %self.dir.display(), "A write panicked; the storage will be reopened");
            health
        })
    }

    /// Runs `f` on the open engine, sharing it with other readers.
    fn with_db<T>(&self, f: impl FnOnce(&DB) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().map_err(|_| poisoned())?;
        f(guard.as_ref().ok_or_else(closed)?)
    }

    /// Writes every memtable to table files (tests use this to prove what
    /// reaches SST files; the engine flushes by itself otherwise).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.with_db(|db| {
            for s in Space::ALL {
                db.flush_cf(cf(db, s)?).map_err(engine)?;
            }
            Ok(())
        })
    }

    /// Closes the engine and opens it again; on failure a read-only
    /// instance takes its place so reads go on.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.db.write().map_err(|_| poisoned())?;
        // The old instance must be closed (its lock released) first.
        drop(slot.take());
        match open_read_write(&self.dir) {
            Ok(db) => {
                *slot = Some(db);
                Ok(())
            }
            Err(e) => {
                *slot = open_read_only(&self.dir).ok();
                Err(e)
            }
        }
    }
}

fn checks_hold(db: &DB, batch: &Batch) -> Result<bool, StoreError> {
    // One batched lookup per space: a rewrap step checks thousands.
    for space in Space::ALL {
        let checks: Vec<_> = batch.checks.iter().filter(|c| c.space == space).collect();
        if checks.is_empty() {
            continue;
        }
        let keys: Vec<&[u8]> = checks.iter().map(|c| c.key.as_slice()).collect();
        let found = db.batched_multi_get_cf(cf(db, space)?, keys, false);
        for (check, cur) in checks.iter().zip(found) {
            let cur = cur.map_err(engine)?;
            let same = match (&cur, &check.expected) {
                (None, None) => true,
                (Some(c), Some(e)) => c.as_ref() == e.as_slice(),
                _ => false,
            };
            if !same {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn apply(db: &DB, batch: &Batch) -> Result<(), StoreError> {
    if !checks_hold(db, batch)? {
        return Err(StoreError::Conflict);
    }
    write_ops(db, [batch.ops.as_slice()])
}

/// Writes `ops` as one synced batch, checks already done. The ops go in
/// key order within each space (stable, so two ops on one key keep their
/// order and the batch means the same): random keys inserted in order walk
/// neighbouring paths of the memtable's skip list, which are still in the
/// cache, instead of a fresh path per key (batch tokenize: 9-17% less vault
/// CPU per request in an A/B on this machine).
fn write_ops<'a>(db: &DB, ops: impl IntoIterator<Item = &'a [Op]>) -> Result<(), StoreError> {
    let mut ops: Vec<&Op> = ops.into_iter().flatten().collect();
    ops.sort_by(|a, b| op_key(a).cmp(&op_key(b)));
    let mut wb = WriteBatch::default();
    for op in ops {
        match op {
            Op::Put(s, k, v) => wb.put_cf(cf(db, *s)?, k, v),
            Op::Delete(s, k) => wb.delete_cf(cf(db, *s)?, k),
        }
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(wb, &wo).map_err(engine)
}

fn op_key(op: &Op) -> (Space, &[u8]) {
    match op {
        Op::Put(s, k, _) | Op::Delete(s, k) => (*s, k.as_slice()),
    }
}

/// Group commit under the write lock: one batched lookup per space for all
/// the group's checks, and no second look inside the write.
fn apply_group(
    db: &DB,
    group: &[Batch],
    finish: &mut dyn FnMut(&[bool]) -> Batch,
) -> Result<Vec<bool>, StoreError> {
    let kept = crate::store::screen(group, |space, keys| {
        db.batched_multi_get_cf(cf(db, space)?, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(engine))
            .collect()
    })?;
    let extra = finish(&kept);
    let ops = group
        .iter()
        .zip(&kept)
        .filter(|(_, k)| **k)
        .map(|(b, _)| b.ops.as_slice())
        .chain([extra.ops.as_slice()]);
    // A group whose every job failed its check writes (and syncs) nothing.
    if kept.iter().any(|k| *k) || !extra.ops.is_empty() {
        write_ops(db, ops)?;
    }
    Ok(kept)
}

impl Store for RocksStore {
    fn purge(&self, space: Space) -> Result<(), StoreError> {
        // Flushing every column family retires the write-ahead log files
        // that still hold the old puts; a forced bottommost compaction of
        // the space drops the old versions behind each delete tombstone.
        //
        // The compaction's own outcome is not reported (the C API drops
        // it), so whether it happened is read from the files: every table
        // file the space had before must be gone, rewritten without the
        // old versions. One still there (a compaction that failed, on a
        // nearly full disk say) fails the purge, and its mark stays for
        // the next.
        //
        // The compaction rewrites the whole space: on a disk without room
        // for a copy of it (and a margin for the flushes), the purge fails
        // before it writes anything, rather than fill the disk under every
        // other write and fail anyway.
        self.with_db(|db| {
            let files = |db: &DB| -> Result<Vec<rocksdb::LiveFile>, StoreError> {
                Ok(db
                    .live_files()
                    .map_err(engine)?
                    .into_iter()
                    .filter(|f| f.column_family_name == space.name())
                    .collect())
            };
            let tables = |db: &DB| -> Result<std::collections::HashSet<String>, StoreError> {
                Ok(files(db)?.into_iter().map(|f| f.name).collect())
            };
            let size: u64 = files(db)?
                .iter()
                .map(|f| u64::try_from(f.size).unwrap_or(u64::MAX))
                .fold(0, u64::saturating_add);
            let fs = rustix::fs::statvfs(&self.dir)
                .map_err(|e| StoreError::Engine(format!("{}: {e}", self.dir.display())))?;
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            let need = size.saturating_add(PURGE_MARGIN);
            if free < need {
                return Err(StoreError::Engine(format!(
                    "no room to purge {}: {free} bytes free, {need} needed",
                    space.name()
                )));
            }
            let before = tables(db)?;
            for s in Space::ALL {
                db.flush_cf(cf(db, s)?).map_err(engine)?;
            }
            let mut co = rocksdb::CompactOptions::default();
            co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            db.compact_range_cf_opt(cf(db, space)?, None::<&[u8]>, None::<&[u8]>, &co);
            if tables(db)?.iter().any(|f| before.contains(f)) {
                return Err(StoreError::Engine(format!(
                    "the compaction of {} did not rewrite its table files",
                    space.name()
                )));
            }
            Ok(())
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| db.get_cf(cf(db, space)?, key).map_err(engine))
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.with_db(|db| {
            let ro = scan_options(space, from, to);
            let iter = db.iterator_cf_opt(
                cf(db, space)?,
                ro,
                IteratorMode::From(from, Direction::Forward),
            );
            rows(iter, limit)
        })
    }

    fn scan_rev(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.with_db(|db| {
            let mut ro = ReadOptions::default();
            ro.set_total_order_seek(true);
            ro.set_iterate_lower_bound(from.to_vec());
            if let Some(t) = to {
                ro.set_iterate_upper_bound(t.to_vec());
            }
            let iter = db.iterator_cf_opt(cf(db, space)?, ro, IteratorMode::End);
            rows(iter, limit)
        })
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut health = self.health();
        let result = self.with_db(|db| apply(db, &batch));
        health.note(&result);
        result
    }

    fn write_group(
        &self,
        group: Vec<Batch>,
        finish: &mut dyn FnMut(&[bool]) -> Batch,
    ) -> Result<Vec<bool>, StoreError> {
        let mut health = self.health();
        let result = self.with_db(|db| apply_group(db, &group, finish));
        health.note(&result);
        result
    }

    fn recover(&self) -> Result<(), StoreError> {
        let mut health = self.health();
        if !health.failed || self.read_only {
            return Ok(());
        }
        let not_yet = |why: &str| Err(StoreError::Engine(format!("storage not writable: {why}")));
        if health
            .last_reopen
            .is_some_and(|t| t.elapsed() < REOPEN_EVERY)
        {
            return not_yet("waiting to retry the reopen");
        }
        if !room_to_reopen(&self.dir)? {
            return not_yet("the disk is still full");
        }
        health.last_reopen = Some(Instant::now());
        self.reopen()?;
        health.failed = false;
        tracing::info!(path = %self.dir.display(), "Storage reopened after a failed write");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A section of the newest OPTIONS file RocksDB wrote on open: the
    /// options it really runs with, not the ones meant.
    fn options_section(dir: &Path, head: &str) -> String {
        let file = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("OPTIONS-"))
            })
            .max()
            .expect("an OPTIONS file");
        let text = std::fs::read_to_string(file).unwrap();
        let start = text.find(head).expect("the section") + head.len();
        let body = &text[start..];
        body[..body.find("\n[").unwrap_or(body.len())].to_string()
    }

    fn space_options(dir: &Path, space: Space) -> String {
        options_section(dir, &format!("[CFOptions \"{}\"]", space.name()))
    }

    /// A purge leaves a deleted key in no file of the database: not in the
    /// logs, not in the table files it had reached before its deletion
    /// (which the purge checks it rewrote).
    #[test]
    fn a_purge_leaves_a_deleted_key_in_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let secret = b"wrapped-subject-key-0123456789abcdef".to_vec();
        let mut b = Batch::default();
        b.put(Space::SubjectKeys, b"s1".to_vec(), secret.clone());
        b.put(Space::SubjectKeys, b"s2".to_vec(), b"another".to_vec());
        store.write(b).unwrap();
        // Into a table file first, as a key written long before its erasure.
        store.purge(Space::SubjectKeys).unwrap();
        let tables = |store: &RocksStore| {
            store
                .with_db(|db| db.live_files().map_err(engine))
                .unwrap()
                .into_iter()
                .filter(|f| f.column_family_name == Space::SubjectKeys.name())
                .map(|f| f.name)
                .collect::<Vec<_>>()
        };
        let first = tables(&store);
        assert!(!first.is_empty(), "the key reached a table file");
        let mut b = Batch::default();
        b.delete(Space::SubjectKeys, b"s1".to_vec());
        store.write(b).unwrap();
        store.purge(Space::SubjectKeys).unwrap();
        assert!(tables(&store).iter().all(|f| !first.contains(f)));
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(secret.len()).any(|w| w == secret.as_slice()) {
                found.push(path);
            }
        }
        assert!(found.is_empty(), "the deleted key survives in {found:?}");
        assert_eq!(
            store.get(Space::SubjectKeys, b"s2").unwrap().as_deref(),
            Some(b"another".as_slice())
        );
    }

    /// A panic inside a write (here in the closure that finishes a group,
    /// which runs under the write lock) poisons the lock: the store must
    /// count it as a failed write and recover by reopening, not refuse
    /// every write after it until a restart.
    #[test]
    fn a_write_that_panicked_is_recovered_from() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let mut b = Batch::default();
        b.put(Space::Values, b"before".to_vec(), b"1".to_vec());
        store.write(b).unwrap();
        let mut b = Batch::default();
        b.put(Space::Values, b"lost".to_vec(), b"2".to_vec());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_group(vec![b], &mut |_| -> Batch {
                #[allow(clippy::panic)]
                {
                    panic!("a bug while finishing the group")
                }
            })
        }));
        assert!(panicked.is_err());
        store.recover().unwrap();
        let mut b = Batch::default();
        b.put(Space::Values, b"after".to_vec(), b"3".to_vec());
        store.write(b).unwrap();
        assert_eq!(
            store.get(Space::Values, b"before").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(store.get(Space::Values, b"lost").unwrap(), None);
        assert_eq!(
            store.get(Space::Values, b"after").unwrap(),
            Some(b"3".to_vec())
        );
    }

    #[test]
    fn the_engine_runs_with_the_options_measured() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStore::open(dir.path()).unwrap());
        // Small memtables, merged eight to a flush, where keys are random.
        for space in [Space::Values, Space::Subjects] {
            let o = space_options(dir.path(), space);
            assert!(o.contains("write_buffer_size=4194304\n"), "{space:?}");
            assert!(
                o.contains("min_write_buffer_number_to_merge=8\n"),
                "{space:?}"
            );
            assert!(o.contains("max_write_buffer_number=16\n"), "{space:?}");
        }
        // The spaces written in key order keep RocksDB's default memtable.
        let audit = space_options(dir.path(), Space::Audit);
        assert!(audit.contains("write_buffer_size=67108864\n"));
        assert!(audit.contains("min_write_buffer_number_to_merge=1\n"));
        // Table files are pushed to the disk as they are written. (The
        // rate limiter is an object the OPTIONS file does not record.)
        let db = options_section(dir.path(), "[DBOptions]");
        assert!(db.contains("bytes_per_sync=131072\n"), "{db}");
    }
}
