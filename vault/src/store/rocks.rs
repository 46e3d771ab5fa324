//! The embedded engine: RocksDB with one column family per [`Space`].
//! Invariants: every write is one `WriteBatch` written with `sync = true`, so an
//! acknowledged write survives power loss; checks and the batch they guard
//! run under one lock, so compare-and-set is atomic.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use super::{Batch, Op, Rows, Space, Store, StoreError};

pub struct RocksStore {
    db: DB,
    /// Serializes check-then-write. Group commit funnels writes through one
    /// thread, so this lock is uncontended in the server.
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn engine(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Values are ciphertext and do not compress; keys and indexes do a little.
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_keep_log_file_num(4);
    opts.increase_parallelism(2);
    opts
}

impl RocksStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let opts = db_options();
        let cfs = Space::ALL
            .iter()
            .map(|s| ColumnFamilyDescriptor::new(s.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(engine)?;
        Ok(Self {
            db,
            write_lock: Mutex::new(()),
        })
    }

    /// Opens an existing database without taking its lock, for offline checks
    /// that may run beside a live server.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let opts = Options::default();
        let names = Space::ALL.iter().map(|s| s.name());
        let db = DB::open_cf_for_read_only(&opts, dir, names, false).map_err(engine)?;
        Ok(Self {
            db,
            write_lock: Mutex::new(()),
        })
    }

    /// Writes every memtable to table files (tests use this to prove what
    /// reaches SST files; the engine flushes by itself otherwise).
    pub fn flush(&self) -> Result<(), StoreError> {
        for s in Space::ALL {
            self.db.flush_cf(self.cf(s)?).map_err(engine)?;
        }
        Ok(())
    }

    fn cf(&self, space: Space) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StoreError::Engine(format!("missing column family {}", space.name())))
    }

    fn checks_hold(&self, batch: &Batch) -> Result<bool, StoreError> {
        // One batched lookup per space: a rewrap step checks thousands.
        for space in Space::ALL {
            let checks: Vec<_> = batch.checks.iter().filter(|c| c.space == space).collect();
            if checks.is_empty() {
                continue;
            }
            let keys: Vec<&[u8]> = checks.iter().map(|c| c.key.as_slice()).collect();
            let found = self.db.batched_multi_get_cf(self.cf(space)?, keys, false);
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
}

impl Store for RocksStore {
    fn purge(&self, space: Space) -> Result<(), StoreError> {
        // Flushing every column family retires the write-ahead log files
        // that still hold the old puts; a forced bottommost compaction of
        // the space drops the old versions behind each delete tombstone.
        for s in Space::ALL {
            self.db.flush_cf(self.cf(s)?).map_err(engine)?;
        }
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(self.cf(space)?, None::<&[u8]>, None::<&[u8]>, &co);
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(space)?, key).map_err(engine)
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let mut ro = ReadOptions::default();
        if let Some(t) = to {
            ro.set_iterate_upper_bound(t.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.cf(space)?,
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut rows = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(engine)?;
            rows.push((k.into_vec(), v.into_vec()));
        }
        Ok(rows)
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let _guard = self
            .write_lock
            .lock()
            .map_err(|_| StoreError::Engine("write lock poisoned".into()))?;
        if !self.checks_hold(&batch)? {
            return Err(StoreError::Conflict);
        }
        let mut wb = WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(s, k, v) => wb.put_cf(self.cf(*s)?, k, v),
                Op::Delete(s, k) => wb.delete_cf(self.cf(*s)?, k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(wb, &wo).map_err(engine)
    }
}
