//! One suite, every engine: what the [`Store`] trait promises, checked against
//! the in-memory model and RocksDB alike, plus a property test that drives
//! RocksDB and the `BTreeMap` model with the same random operations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

fn engines() -> Vec<(Box<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    vec![
        (Box::new(MemoryStore::new()), None),
        (Box::new(rocks), Some(dir)),
    ]
}

fn put(s: Space, k: &[u8], v: &[u8]) -> Batch {
    let mut b = Batch::default();
    b.put(s, k.to_vec(), v.to_vec());
    b
}

#[test]
fn get_put_delete() {
    for (store, _dir) in engines() {
        assert_eq!(store.get(Space::Values, b"k").unwrap(), None);
        store.write(put(Space::Values, b"k", b"v")).unwrap();
        assert_eq!(store.get(Space::Values, b"k").unwrap(), Some(b"v".to_vec()));
        // Spaces are separate.
        assert_eq!(store.get(Space::Meta, b"k").unwrap(), None);
        let mut b = Batch::default();
        b.delete(Space::Values, b"k".to_vec());
        store.write(b).unwrap();
        assert_eq!(store.get(Space::Values, b"k").unwrap(), None);
    }
}

#[test]
fn scans_are_ordered_bounded_and_limited() {
    for (store, _dir) in engines() {
        let mut b = Batch::default();
        for k in [&b"b2"[..], b"a1", b"b1", b"c1", b"b\xff"] {
            b.put(Space::Subjects, k.to_vec(), k.to_vec());
        }
        b.put(Space::Values, b"b0".to_vec(), vec![]);
        store.write(b).unwrap();
        let keys = |rows: Rows| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(scan_prefix(store.as_ref(), Space::Subjects, b"b", 10).unwrap()),
            vec![b"b1".to_vec(), b"b2".to_vec(), b"b\xff".to_vec()]
        );
        assert_eq!(
            keys(store.scan(Space::Subjects, b"a", None, 2).unwrap()).len(),
            2
        );
        assert_eq!(
            keys(store.scan(Space::Subjects, b"c", None, 10).unwrap()),
            vec![b"c1".to_vec()]
        );
        assert!(store
            .scan(Space::Subjects, b"d", None, 10)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn reverse_scans_give_the_last_rows_newest_first() {
    for (store, _dir) in engines() {
        let paged = Paged(MemoryStore::new());
        let mut b = Batch::default();
        for i in 0u16..3000 {
            let k = [&b"c\0"[..], &i.to_be_bytes()].concat();
            b.put(Space::Consents, k, i.to_be_bytes().to_vec());
        }
        // Neighbours on both sides, and the same keys in another space.
        b.put(Space::Consents, b"b\xff".to_vec(), vec![]);
        b.put(Space::Consents, b"d".to_vec(), vec![]);
        b.put(Space::Meta, b"c\0\xff\xff".to_vec(), vec![]);
        paged.write(b.clone()).unwrap();
        store.write(b).unwrap();
        let vals = |rows: Rows| {
            rows.into_iter()
                .map(|(_, v)| u16::from_be_bytes([v[0], v[1]]))
                .collect::<Vec<_>>()
        };
        let last = scan_prefix_rev(store.as_ref(), Space::Consents, b"c\0", 3).unwrap();
        assert_eq!(vals(last), [2999, 2998, 2997]);
        let all = scan_prefix_rev(store.as_ref(), Space::Consents, b"c\0", 5000).unwrap();
        assert_eq!(all.len(), 3000);
        assert_eq!(vals(all), (0..3000).rev().collect::<Vec<_>>());
        assert!(scan_prefix_rev(store.as_ref(), Space::Consents, b"e", 9)
            .unwrap()
            .is_empty());
        // No upper bound: up to the end of the space, not into the next.
        let tail = store.scan_rev(Space::Consents, b"c", None, 2).unwrap();
        assert_eq!(tail[0].0, b"d".to_vec());
        assert_eq!(tail.len(), 2);
        // The trait's default (forward pages) agrees with the engine's own.
        for limit in [0, 1, 1023, 1024, 1025, 3000, 4000] {
            assert_eq!(
                paged
                    .scan_rev(Space::Consents, b"c\0", Some(b"c\x01"), limit)
                    .unwrap(),
                store
                    .scan_rev(Space::Consents, b"c\0", Some(b"c\x01"), limit)
                    .unwrap(),
                "limit {limit}"
            );
        }
    }
}

/// A store that keeps the trait's default `scan_rev`.
struct Paged(MemoryStore);

impl Store for Paged {
    fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(s, k)
    }
    fn scan(&self, s: Space, f: &[u8], t: Option<&[u8]>, l: usize) -> Result<Rows, StoreError> {
        self.0.scan(s, f, t, l)
    }
    fn write(&self, b: Batch) -> Result<(), StoreError> {
        self.0.write(b)
    }
}

#[test]
fn batches_are_atomic_under_failed_checks() {
    for (store, _dir) in engines() {
        store.write(put(Space::Meta, b"head", b"1")).unwrap();
        let mut b = Batch::default();
        b.put(Space::Values, b"x".to_vec(), b"y".to_vec());
        b.expect(Space::Meta, b"head".to_vec(), Some(b"0".to_vec()));
        assert!(matches!(store.write(b), Err(StoreError::Conflict)));
        assert_eq!(store.get(Space::Values, b"x").unwrap(), None);

        let mut b = Batch::default();
        b.put(Space::Values, b"x".to_vec(), b"y".to_vec());
        b.put(Space::Meta, b"head".to_vec(), b"2".to_vec());
        b.expect(Space::Meta, b"head".to_vec(), Some(b"1".to_vec()));
        b.expect(Space::Meta, b"absent".to_vec(), None);
        store.write(b).unwrap();
        assert_eq!(store.get(Space::Values, b"x").unwrap(), Some(b"y".to_vec()));
        assert_eq!(
            store.get(Space::Meta, b"head").unwrap(),
            Some(b"2".to_vec())
        );
    }
}

#[test]
fn ops_on_one_key_apply_in_batch_order() {
    for (store, _dir) in engines() {
        let mut b = Batch::default();
        b.put(Space::Values, b"k".to_vec(), b"1".to_vec());
        b.put(Space::Values, b"j".to_vec(), b"0".to_vec());
        b.delete(Space::Values, b"k".to_vec());
        b.put(Space::Values, b"k".to_vec(), b"2".to_vec());
        b.put(Space::Meta, b"k".to_vec(), b"m".to_vec());
        b.put(Space::Values, b"m".to_vec(), b"x".to_vec());
        b.delete(Space::Values, b"m".to_vec());
        store.write(b).unwrap();
        assert_eq!(store.get(Space::Values, b"k").unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get(Space::Values, b"j").unwrap(), Some(b"0".to_vec()));
        assert_eq!(store.get(Space::Values, b"m").unwrap(), None);
        assert_eq!(store.get(Space::Meta, b"k").unwrap(), Some(b"m".to_vec()));
    }
}

#[test]
fn a_group_write_keeps_each_batch_whose_checks_hold_and_only_those() {
    for (store, _dir) in engines() {
        store.write(put(Space::SubjectKeys, b"s2", b"w2")).unwrap();
        let guarded = |key: &[u8], expected: Option<&[u8]>, value: &[u8]| {
            let mut b = put(Space::Values, value, value);
            b.expect(
                Space::SubjectKeys,
                key.to_vec(),
                expected.map(<[u8]>::to_vec),
            );
            b
        };
        let mut create = guarded(b"s1", None, b"v1");
        create.put(Space::SubjectKeys, b"s1".to_vec(), b"w1".to_vec());
        let group = vec![
            create,
            // Held before the group, but the batch before writes it.
            guarded(b"s1", None, b"v2"),
            guarded(b"s2", Some(b"wrong"), b"v3"),
            guarded(b"s2", Some(b"w2"), b"v4"),
            put(Space::Values, b"v5", b"v5"),
        ];
        let mut seen = Vec::new();
        let kept = store
            .write_group(group, &mut |kept| {
                seen = kept.to_vec();
                put(Space::Audit, b"e", b"kept")
            })
            .unwrap();
        assert_eq!(kept, vec![true, false, false, true, true]);
        assert_eq!(seen, kept);
        let values = store.scan(Space::Values, b"", None, 10).unwrap();
        let keys: Vec<&[u8]> = values.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"v1"[..], b"v4", b"v5"]);
        assert_eq!(
            store.get(Space::SubjectKeys, b"s1").unwrap(),
            Some(b"w1".to_vec())
        );
        assert_eq!(
            store.get(Space::Audit, b"e").unwrap(),
            Some(b"kept".to_vec())
        );
        // Nothing kept: only what `finish` adds is written.
        let kept = store
            .write_group(vec![guarded(b"s9", Some(b"x"), b"v9")], &mut |_| {
                Batch::default()
            })
            .unwrap();
        assert_eq!(kept, vec![false]);
        assert_eq!(store.get(Space::Values, b"v9").unwrap(), None);
    }
}

#[test]
fn rocks_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RocksStore::open(dir.path()).unwrap();
        s.write(put(Space::Audit, b"1", b"e")).unwrap();
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.get(Space::Audit, b"1").unwrap(), Some(b"e".to_vec()));
    drop(s);
    let ro = RocksStore::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.get(Space::Audit, b"1").unwrap(), Some(b"e".to_vec()));
}

/// The bound on the write-ahead logs reaches the engine: RocksDB records
/// the options it runs with in an `OPTIONS-*` file beside the data.
#[test]
fn rocks_bounds_its_write_ahead_logs() {
    let dir = tempfile::tempdir().unwrap();
    let _s = RocksStore::open(dir.path()).unwrap();
    let options = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .unwrap();
    let text = std::fs::read_to_string(options).unwrap();
    assert!(
        text.lines()
            .any(|l| l.trim() == format!("max_total_wal_size={}", rocks::MAX_TOTAL_WAL)),
        "{text}"
    );
}

#[test]
fn prefix_end_edges() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
}

#[derive(Clone, Debug)]
enum ModelOp {
    Put(u8, Vec<u8>),
    Delete(u8),
    CasPut(u8, Option<Vec<u8>>, Vec<u8>),
    Scan(u8, usize),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let val = proptest::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        (any::<u8>(), val.clone()).prop_map(|(k, v)| ModelOp::Put(k % 16, v)),
        any::<u8>().prop_map(|k| ModelOp::Delete(k % 16)),
        (any::<u8>(), proptest::option::of(val.clone()), val)
            .prop_map(|(k, e, v)| ModelOp::CasPut(k % 16, e, v)),
        (any::<u8>(), 0usize..20).prop_map(|(k, n)| ModelOp::Scan(k % 16, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn rocks_matches_the_model(ops in proptest::collection::vec(model_op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        let model = MemoryStore::new();
        for op in ops {
            match op {
                ModelOp::Scan(from, n) => {
                    let a = rocks.scan(Space::Values, &[from], None, n).unwrap();
                    let b = model.scan(Space::Values, &[from], None, n).unwrap();
                    prop_assert_eq!(a, b);
                }
                other => {
                    let mut b = Batch::default();
                    match other {
                        ModelOp::Put(k, v) => b.put(Space::Values, vec![k], v),
                        ModelOp::Delete(k) => b.delete(Space::Values, vec![k]),
                        ModelOp::CasPut(k, e, v) => {
                            b.expect(Space::Values, vec![k], e);
                            b.put(Space::Values, vec![k], v);
                        }
                        ModelOp::Scan(..) => unreachable!(),
                    }
                    let ra = rocks.write(b.clone()).is_ok();
                    let rb = model.write(b).is_ok();
                    prop_assert_eq!(ra, rb);
                }
            }
        }
    }
}

/// `Values` seeks a token's rows by prefix (with bloom filters); every other
/// read of it must stay total-order. Checked against the model with rows in
/// table files and in the memtable, tokens that share all but their last
/// byte, a token of all 0xff (no prefix end), and deletions.
#[test]
fn token_prefix_seeks_and_total_order_scans_agree_with_the_model() {
    use crate::crypto::TOKEN_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let model = MemoryStore::new();
    let mut tokens: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut t = vec![i / 4; TOKEN_BYTES];
            t[TOKEN_BYTES - 1] = i % 4;
            t
        })
        .collect();
    tokens.push(vec![0xff; TOKEN_BYTES]);
    let subjects: [&[u8]; 3] = [b"a", b"s-1", b"zz"];
    for (half, chunk) in tokens.chunks(21).enumerate() {
        let mut b = Batch::default();
        for t in chunk {
            for s in subjects {
                b.put(Space::Values, [t.as_slice(), s].concat(), vec![half as u8]);
            }
        }
        b.delete(Space::Values, [chunk[0].as_slice(), subjects[1]].concat());
        rocks.write(b.clone()).unwrap();
        model.write(b).unwrap();
        if half == 0 {
            rocks.flush().unwrap();
        }
    }
    for store in [&rocks as &dyn Store, &model] {
        for t in &tokens {
            let rows = scan_prefix(store, Space::Values, t, 10).unwrap();
            let want = scan_prefix(&model, Space::Values, t, 10).unwrap();
            assert_eq!(rows, want);
            assert!(rows.iter().all(|(k, _)| k.starts_with(t)));
        }
        assert_eq!(
            store.scan(Space::Values, b"", None, 1000).unwrap(),
            model.scan(Space::Values, b"", None, 1000).unwrap()
        );
        // A scan that starts inside one token and runs on past it.
        let from = [tokens[9].as_slice(), b"b"].concat();
        assert_eq!(
            store.scan(Space::Values, &from, None, 20).unwrap(),
            model.scan(Space::Values, &from, None, 20).unwrap()
        );
        let absent = vec![0x77; TOKEN_BYTES];
        assert!(scan_prefix(store, Space::Values, &absent, 10)
            .unwrap()
            .is_empty());
    }
    assert_eq!(
        model.scan(Space::Values, b"", None, 1000).unwrap().len(),
        41 * 3 - 2
    );
    // Offline tools open the same files read-only, without the options.
    rocks.flush().unwrap();
    drop(rocks);
    let ro = RocksStore::open_read_only(dir.path()).unwrap();
    assert_eq!(
        ro.scan(Space::Values, b"", None, 1000).unwrap(),
        model.scan(Space::Values, b"", None, 1000).unwrap()
    );
    for t in &tokens {
        assert_eq!(
            scan_prefix(&ro, Space::Values, t, 10).unwrap(),
            scan_prefix(&model, Space::Values, t, 10).unwrap()
        );
    }
}

/// A store whose reads fail: a group's checks cannot be screened.
struct Unreadable(MemoryStore);

impl Store for Unreadable {
    fn get(&self, _: Space, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Err(StoreError::Engine("read failed".into()))
    }
    fn scan(&self, s: Space, f: &[u8], t: Option<&[u8]>, l: usize) -> Result<Rows, StoreError> {
        self.0.scan(s, f, t, l)
    }
    fn write(&self, b: Batch) -> Result<(), StoreError> {
        self.0.write(b)
    }
}

#[test]
fn a_group_whose_checks_cannot_be_read_writes_nothing() {
    let store = Unreadable(MemoryStore::new());
    let mut b = put(Space::Values, b"v", b"v");
    b.expect(Space::SubjectKeys, b"s".to_vec(), None);
    let mut asked = false;
    let r = store.write_group(vec![b], &mut |_| {
        asked = true;
        put(Space::Audit, b"e", b"e")
    });
    assert!(matches!(r, Err(StoreError::Engine(_))));
    assert!(!asked);
    assert!(store
        .0
        .scan(Space::Values, b"", None, 10)
        .unwrap()
        .is_empty());
    assert!(store
        .0
        .scan(Space::Audit, b"", None, 10)
        .unwrap()
        .is_empty());
}
