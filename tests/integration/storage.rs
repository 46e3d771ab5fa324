//! What lands on disk: no plaintext anywhere in the database directory, and
//! ciphertexts bound to their records.

use crate::harness::*;
use vault::store::{Batch, Space};
use vault_sdk::wire::Status;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn no_plaintext_in_any_file_of_the_database() {
    let mut v = TestVault::start().await;
    let c = v.client("app");
    let values = [
        ("cn_resident_id", "350102199003071234"),
        ("phone", "13800138000"),
        ("email", "chen.ming@example.com"),
        ("name", "陈明华"),
        ("address", "福建省福州市鼓楼区五四路一百号"),
        ("text", "secret complaint about the neighbour"),
    ];
    let mut fields = Vec::new();
    for i in 0..200 {
        let (class, value) = values[i % values.len()];
        fields.push(field(class, value));
    }
    c.tokenize(&tok_req("acct-disk", "respond_to_request", fields))
        .await
        .unwrap();
    // WAL only, then flushed tables too.
    for round in 0..2 {
        if round == 1 {
            v.restart().await;
            v.stop().await;
            vault::store::RocksStore::open(v.dir.path())
                .unwrap()
                .flush()
                .unwrap();
        }
        let mut all = Vec::new();
        files(v.dir.path(), &mut all);
        assert!(
            all.iter()
                .any(|p| p.extension().is_some_and(|e| e == "log")),
            "no WAL found"
        );
        for p in all {
            if p.starts_with(v.dir.path().join("tls"))
                || p.ends_with("vault.toml")
                || p.ends_with("master.key")
            {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            for (_, value) in values {
                let needle = value.as_bytes();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{value} found in {}",
                    p.display()
                );
            }
            for needle in [&b"+8613800138000"[..], b"13800138000"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "phone found in {}",
                    p.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_record_does_not_open() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let a = tokenize_one(&c, "acct-a", "notification", "phone", "13800138000").await;
    let b = tokenize_one(&c, "acct-b", "notification", "phone", "13900139000").await;
    let store = v.store();
    let key = value_key;
    let rec_a = store
        .get(Space::Values, &key(&a, "acct-a"))
        .unwrap()
        .unwrap();
    // Swap A's record (ciphertext included) into B's place.
    moved_record_does_not_open(&c, store.as_ref(), key(&b, "acct-b"), rec_a.clone(), &b, &a).await;
    // And under A's own token but another subject: also refused.
    let mut batch = Batch::default();
    batch.delete(Space::Values, key(&a, "acct-a"));
    batch.put(Space::Values, key(&a, "acct-z"), rec_a);
    store.write(batch).unwrap();
    let r = c
        .detokenize(&detok_req("notification", &[&a]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Unknown);
    let events = v
        .client("officer")
        .audit(None, None, None)
        .await
        .unwrap()
        .events;
    assert!(events.iter().any(|e| e.outcome == "integrity_failure"));
}

#[tokio::test]
async fn a_ciphertext_moved_under_another_token_of_the_same_subject_does_not_open() {
    let v = TestVault::start().await;
    let c = v.client("app");
    // Two phones of one subject: same subject, same class, same key.
    let a = tokenize_one(&c, "acct-a", "notification", "phone", "13800138000").await;
    let b = tokenize_one(&c, "acct-a", "notification", "phone", "13900139000").await;
    let store = v.store();
    let key = |t: &str| value_key(t, "acct-a");
    let rec_a = store.get(Space::Values, &key(&a)).unwrap().unwrap();
    assert_eq!(rec_a[0], 3, "records are written in format 3");
    // B's token no longer gives B's value, and does not give A's either:
    // the token is in the ciphertext's AAD.
    moved_record_does_not_open(&c, store.as_ref(), key(&b), rec_a, &b, &a).await;
}

/// Writes `record` (A's, ciphertext included) at `at` (B's place), then
/// checks that B's token gives nothing and A's token still gives A's value
/// (`+8613800138000`).
async fn moved_record_does_not_open(
    c: &vault_sdk::Client,
    store: &dyn vault::store::Store,
    at: Vec<u8>,
    record: Vec<u8>,
    b: &str,
    a: &str,
) {
    let mut batch = Batch::default();
    batch.put(Space::Values, at, record);
    store.write(batch).unwrap();
    let r = c
        .detokenize(&detok_req("notification", &[b, a]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Unknown);
    assert!(r.values[0].value.is_none());
    assert_eq!(r.values[1].value.as_deref(), Some("+8613800138000"));
}

#[tokio::test]
async fn many_tombstones_of_a_shared_value_do_not_hide_a_live_holder() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tok = tokenize_one(&c, "zz-live", "notification", "phone", "13800138000").await;
    // 300 holders of the same value, erased (their tombstones sort first).
    let store = v.store();
    let mut batch = Batch::default();
    for i in 0..300 {
        let tomb = vault::schema::Tombstone::new(vault::classes::Class::Phone, 1);
        batch.put(
            Space::Values,
            value_key(&tok, &format!("a{i:03}")),
            tomb.encode(),
        );
    }
    store.write(batch).unwrap();
    let r = c
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Ok);
    assert_eq!(r.values[0].value.as_deref(), Some("+8613800138000"));
}
