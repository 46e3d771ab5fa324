//! Disk full: a child `vault dev` runs on a small tmpfs that a filler file
//! fills up under a tokenize load. While the disk is full every refused
//! request is a clean 503 `unavailable`, reads that append no audit event
//! keep working, detokenize releases nothing (its audit event cannot land)
//! and `/readyz` and `vault_store_writable` say storage is not writable.
//! Once the filler is gone, writes succeed again within seconds without a
//! restart, and every acknowledged write, before, during and after, is
//! readable then and after a SIGKILL and restart; the audit chain verifies.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`); where the mount is refused the
//! test says why and passes without running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vault_sdk::wire::Status;
use vault_sdk::Client;

use crate::durability::{client, spawn, ChildVault};
use crate::harness::*;

/// Small enough that the write-ahead log cannot preallocate past it and the
/// fill is quick; large enough that the database, once the filler is gone,
/// flushes its memtables beside the log with room to spare.
const TMPFS_MB: u64 = 40;
/// Space the filler leaves: a handful of large requests' worth.
const SLACK: u64 = 1 << 20;
/// Fields per tokenize request during the fill.
const BIG: u64 = 250;
/// How long after the filler is gone writes must succeed again.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

/// The tmpfs mount and the child on it: the child is killed and the
/// filesystem unmounted however the test ends.
struct Mounted {
    dir: tempfile::TempDir,
    child: Option<ChildVault>,
}

impl Mounted {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.kill();
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file: detach it anyway.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A fresh tmpfs of `TMPFS_MB`, or why there cannot be one here.
fn mount_tmpfs() -> Result<Mounted, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={TMPFS_MB}m,mode=0700"))
        .arg("tmpfs")
        .arg(dir.path())
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Mounted { dir, child: None })
}

/// Fills the filesystem of `path` to the last byte, then gives back
/// `leave` bytes.
fn fill(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filler: {e}"),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
}

async fn writable_gauge(ops: &str) -> String {
    let (_, text) = ops_get_at(ops, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with("vault_store_writable "))
        .unwrap_or("vault_store_writable missing")
        .to_string()
}

fn phone(request: u64, k: u64) -> String {
    format!("137{:08}", request * 1000 + k)
}

fn subject(request: u64) -> String {
    format!("full-{request}")
}

/// Acknowledged requests: request number to its tokens.
type Acked = Arc<Mutex<Vec<(u64, Vec<String>)>>>;

/// One tokenize request of `n` fields: `Ok(true)` acknowledged,
/// `Ok(false)` a clean 503 `unavailable`; anything else fails the test.
async fn tokenize(c: &Client, acked: &Acked, r: u64, n: u64) -> bool {
    let fields = (0..n).map(|k| field("phone", &phone(r, k))).collect();
    match c
        .tokenize(&tok_req(&subject(r), "notification", fields))
        .await
    {
        Ok(out) => {
            let toks = out.tokens.into_iter().map(|t| t.token).collect();
            acked.lock().unwrap().push((r, toks));
            true
        }
        Err(e) if e.status() == Some(503) && e.code() == Some("unavailable") => false,
        Err(e) => panic!("request {r}: not a clean 503: {e}"),
    }
}

/// Every acknowledged token detokenizes to its value.
async fn check_acked(c: &Client, acked: &[(u64, Vec<String>)]) {
    for (r, toks) in acked {
        let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
        let out = c
            .detokenize(&detok_req("notification", &refs))
            .await
            .unwrap();
        assert_eq!(out.values.len(), toks.len());
        for (k, v) in out.values.into_iter().enumerate() {
            assert_eq!(v.status, Status::Ok, "acknowledged write {r}/{k} lost");
            assert_eq!(
                v.value.as_deref().unwrap(),
                format!("+86{}", phone(*r, k as u64))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_gives_clean_503s_and_recovers_when_space_returns() {
    let mut m = match mount_tmpfs() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("diskfull: skipped, no tmpfs here: {why}");
            return;
        }
    };
    let dir: PathBuf = m.path().to_path_buf();
    let filler = dir.join("filler");
    let child = spawn(&dir);
    let ops = child.ops.clone();
    let c = client(&dir, &child.api);
    m.child = Some(child);
    let acked: Acked = Arc::default();

    // Before: a few ordinary writes.
    for r in 0..4 {
        assert!(tokenize(&c, &acked, r, 50).await);
    }
    let before: Vec<String> = acked.lock().unwrap()[0].1.clone();
    assert_eq!(ops_get_at(&ops, "/readyz").await.0, 200);

    // During: fill the disk, then load it with large batches until
    // writes are refused.
    fill(&filler, SLACK);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(100));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (c, acked, next, refused) = (c.clone(), acked.clone(), next.clone(), refused.clone());
        workers.push(tokio::spawn(async move {
            while refused.load(std::sync::atomic::Ordering::SeqCst) < 6 && Instant::now() < deadline
            {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if !tokenize(&c, &acked, r, BIG).await {
                    refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 6,
        "the disk never filled up"
    );
    // Refusal is steady, not a fluke of one write.
    for r in 900..903 {
        assert!(
            !tokenize(&c, &acked, r, 1).await,
            "write {r} landed on a full disk"
        );
    }
    let (status, body) = ops_get_at(&ops, "/readyz").await;
    assert_eq!(status, 503, "readyz while full: {body}");
    assert_eq!(writable_gauge(&ops).await, "vault_store_writable 0");
    // Detokenize releases only once its audit event is durable: nothing now.
    let e = c
        .detokenize(&detok_req("notification", &[before[0].as_str()]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(503), Some("unavailable")),
        "{e}"
    );
    // Reads that append nothing keep working.
    c.access_log(&subject(0)).await.unwrap();
    let during = acked.lock().unwrap().len();
    eprintln!(
        "diskfull: {during} requests acknowledged, {} refused before the disk was full",
        refused.load(std::sync::atomic::Ordering::SeqCst)
    );

    // After: space returns; writes succeed again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut r = 1000;
    loop {
        if tokenize(&c, &acked, r, 1).await {
            break;
        }
        r += 1;
        assert!(
            freed.elapsed() < RECOVERY_BOUND,
            "still not writable {:?} after space returned",
            freed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "diskfull: writable again {:?} after space returned",
        freed.elapsed()
    );
    assert_eq!(ops_get_at(&ops, "/readyz").await.0, 200);
    assert_eq!(writable_gauge(&ops).await, "vault_store_writable 1");
    for r in 2000..2004 {
        assert!(tokenize(&c, &acked, r, 50).await);
    }
    let acked_all = acked.lock().unwrap().clone();
    assert!(
        during > 4,
        "no write was acknowledged while the disk filled: {during}"
    );
    check_acked(&c, &acked_all).await;

    // Everything acknowledged survives a SIGKILL and restart, and the audit
    // chain (with the refused requests' events absent) is intact.
    m.kill();
    let child = spawn(&dir);
    let c = client(&dir, &child.api);
    m.child = Some(child);
    check_acked(&c, &acked_all).await;
    m.kill();
    let (code, out, err) = run_vault(&[
        std::ffi::OsStr::new("audit"),
        "verify".as_ref(),
        "--data".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A shred log on a full filesystem: the erasure still answers (its key
/// is gone), the failed append is counted and its row waits in the
/// database; an append cut short mid-line is read back, not written over,
/// and once space returns the sweeper appends the entry on a line of its
/// own. A restart then finds the database in step with the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_log_on_a_full_disk_catches_up_when_space_returns() {
    let m = match mount_tmpfs() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("diskfull: skipped, no tmpfs here: {why}");
            return;
        }
    };
    let log = m.path().join("shred.log");
    // 30 bytes short of a page: the next line fits only in part.
    std::fs::write(&log, vec![b'\n'; 4096 - 30]).unwrap();
    let shred_log = log.clone();
    let mut v = TestVault::start_with(move |cfg| {
        cfg.server.shred_log = Some(shred_log);
        cfg.retention.sweep_interval_ms = 100;
    })
    .await;
    let app = v.client("app");
    tokenize_one(&app, "acct-f", "notification", "phone", "13800138000").await;
    let wrapped = v
        .store()
        .get(vault::store::Space::SubjectKeys, b"acct-f")
        .unwrap()
        .unwrap();
    fill(&m.path().join("filler"), 0);
    assert_eq!(app.erase_subject("acct-f").await.unwrap().values_erased, 1);
    let (_, metrics) = v.ops_get("/metrics").await;
    assert!(metrics.contains("vault_shred_log_pending 1"), "{metrics}");
    assert!(
        !metrics.contains("vault_shred_log_append_failures_total 0"),
        "{metrics}"
    );
    assert!(
        std::fs::metadata(&log).unwrap().len() > 4096 - 30,
        "a part went in"
    );
    std::fs::remove_file(m.path().join("filler")).unwrap();
    let fp = hex::encode(vault::shreds::fingerprint("acct-f", &wrapped));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text
            .lines()
            .any(|l| l.split(' ').next() == Some(fp.as_str()))
        {
            break;
        }
        let tail = text.get(text.len().saturating_sub(200)..);
        assert!(Instant::now() < deadline, "never appended: {tail:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pending row goes (and the gauge with it) just after the append.
    loop {
        let (_, metrics) = v.ops_get("/metrics").await;
        if metrics.contains("vault_shred_log_pending 0") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same log at the next start: in step, nothing erased again.
    v.stop().await;
    let mut cfg = config(v.dir.path());
    cfg.server.shred_log = Some(log);
    let again = vault::server::start(&cfg).await.unwrap();
    let n = vault::shreds::reapply(&again.vault).await.unwrap();
    assert_eq!(n, 0);
    again.shutdown().await;
}
