//! Power loss: the crash test's rounds (`crash.rs`), with the data
//! directory on a file system that forgets every write not yet synced
//! (`lossyfs.rs`). Each round's SIGKILL is followed by a power cut, clean
//! or torn in turn, before anything reads the directory again; a 200 must
//! mean the write reached the disk, not the page cache.

use std::path::Path;

use crate::crash::kill_cycles;
use crate::lossyfs::{mount_in, Cut};

/// The files `vault dev` makes at its first start.
const DEV_FILES: [&str; 7] = [
    "master.key",
    "vault.toml",
    "tls/ca.pem",
    "tls/ca.key",
    "tls/server.pem",
    "tls/app.pem",
    "tls/app.key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_lose_nothing_acknowledged_and_half_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some((fs, backing, mnt)) = mount_in(dir.path()) else {
        return;
    };
    // The data directory exists before the first start (made on the disk
    // itself, so durable), private as `vault dev` wants it.
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(backing.join("vault"))
        .unwrap();
    let data = mnt.join("vault");
    let mut lost = 0u64;
    let mut restored = 0usize;
    let mut names = 0usize;
    // What `vault dev` wrote at its first start must outlive every cut:
    // a lost CA or key would be replaced by a new one at the next start,
    // locking out every app (or every value) that used the old.
    let read = |data: &Path| -> Vec<Option<Vec<u8>>> {
        DEV_FILES
            .iter()
            .map(|f| std::fs::read(data.join(f)).ok())
            .collect()
    };
    let mut first: Option<Vec<Option<Vec<u8>>>> = None;
    kill_cycles(&data, 6, |cycle, rng| {
        let before = first.get_or_insert_with(|| read(&data)).clone();
        let how = if cycle % 2 == 0 {
            Cut::Clean
        } else {
            Cut::Torn
        };
        let report = fs.cut(how, rng).unwrap();
        for (name, (was, is)) in DEV_FILES.iter().zip(before.iter().zip(read(&data))) {
            assert!(was.is_some(), "{name} missing before the cut");
            // Compared, never printed: these are keys.
            assert!(was == &is, "{name} lost or changed by power cut {cycle}");
        }
        eprintln!("cut {cycle} ({how:?}): {report:?}");
        lost += report.truncated;
        restored += report.restored;
        names += report.names;
    })
    .await;
    let (written, syncs) = fs.traffic();
    eprintln!("through the mount: {written} bytes written, {syncs} syncs; cuts dropped {lost} bytes, restored {restored} pages, undid {names} changes of names");
    // The vault's writes went through the lossy file system, and the cuts
    // did take away unsynced bytes (RocksDB's own LOG is never synced).
    assert!(
        syncs > 100 && written > 1 << 20,
        "{written} bytes, {syncs} syncs"
    );
    assert!(lost > 0, "no cut found anything unsynced to drop");
}
