//! The reference model of [`Store`]: a `BTreeMap` per space behind a mutex.
//! It defines what the trait means; the conformance suite and the property
//! test hold every real engine to it. Not durable, so only for tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{Batch, Op, Rows, Space, Store, StoreError};

type Map = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    maps: Mutex<Map>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Map>, StoreError> {
        self.maps
            .lock()
            .map_err(|_| StoreError::Engine("memory store poisoned".into()))
    }
}

/// The rows of `space` with `from <= key < to` (to the space's end
/// without `to`), in key order either way.
fn in_space<'m>(
    map: &'m Map,
    space: Space,
    from: &[u8],
    to: Option<&[u8]>,
) -> impl DoubleEndedIterator<Item = (&'m (Space, Vec<u8>), &'m Vec<u8>)> {
    let lower = Bound::Included((space, from.to_vec()));
    let upper = match to {
        Some(t) => Bound::Excluded((space, t.to_vec())),
        None => Bound::Unbounded,
    };
    map.range((lower, upper))
        .filter(move |((s, _), _)| *s == space)
}

impl Store for MemoryStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&(space, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let map = self.lock()?;
        Ok(in_space(&map, space, from, to)
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_rev(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let map = self.lock()?;
        Ok(in_space(&map, space, from, to)
            .rev()
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for check in &batch.checks {
            if map.get(&(check.space, check.key.clone())) != check.expected.as_ref() {
                return Err(StoreError::Conflict);
            }
        }
        for op in batch.ops {
            match op {
                Op::Put(s, k, v) => {
                    map.insert((s, k), v);
                }
                Op::Delete(s, k) => {
                    map.remove(&(s, k));
                }
            }
        }
        Ok(())
    }
}
