//! The shred log: every subject key the vault destroys (an erasure, the
//! end of a restriction, a closed account's last value), recorded in a file
//! outside the database (`server.shred-log`), so that a database restored
//! from a backup taken before an erasure does not bring the erased subject
//! back: at start, a subject key the log names is destroyed again, with the
//! subject's values, before anything is served.
//!
//! Invariants:
//! - An entry is a fingerprint of the subject and of its wrapped key, never
//!   the subject: the log says which keys are gone to someone who holds
//!   them (a backup), and nothing to anyone else. A key created for the
//!   subject since (a later collection) has another fingerprint and stays.
//!   (Subject keys are never wrapped again; a change that did would have
//!   to keep old fingerprints matching.)
//! - A destruction writes, in its own atomic write, a pending row in the
//!   database; only once the log holds the fingerprint (appended and
//!   synced) does that row go. A crash between the two leaves the row,
//!   which the next start appends; a start that cannot append refuses.
//! - `shred/seen` in the database is the log's length and the SHA-256 of
//!   its bytes that the database is known to reflect: it moves with the
//!   log only while the two agree, and after a start's check. When the log
//!   has grown past it (a restored database), the start checks every
//!   subject key against the log; when the log is shorter, or its first
//!   bytes are not the ones seen (lost, cut or replaced), the start refuses
//!   until an operator accepts the log as it is.
//! - One process at a time holds the log (an advisory lock).

use std::collections::HashSet;
use std::io::{BufRead, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::server::Vault;
use crate::store::{prefix_end, Batch, Space, Store, StoreError};

/// Pending rows in `Meta`: the prefix, then a fingerprint; the value is
/// the destruction's time (Unix ms, big-endian).
pub const PENDING: &[u8] = b"shred/pending/";
/// The log length (bytes, big-endian) and the SHA-256 of those bytes that
/// the database is known to reflect.
pub const SEEN: &[u8] = b"shred/seen";

/// Pending rows moved to the log at a time.
const PAGE: usize = 4096;

pub type Fingerprint = [u8; 32];

/// What one log entry names: `subject`'s key as `wrapped` in the database.
pub fn fingerprint(subject: &str, wrapped: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"vault/shred/v1\0");
    h.update(subject.as_bytes());
    h.update([0]);
    h.update(wrapped);
    h.finalize().into()
}

/// Adds to `b` the pending row of the destruction of `subject`'s key
/// `wrapped` at `now_ms`.
pub fn mark(b: &mut Batch, subject: &str, wrapped: &[u8], now_ms: u64) {
    b.put(
        Space::Meta,
        [PENDING, &fingerprint(subject, wrapped)].concat(),
        now_ms.to_be_bytes().to_vec(),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    #[error("shred log {path}: {kind}")]
    Io {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("shred log {0}: not a file")]
    NotAFile(String),
    #[error("shred log {0}: another process holds it (is another vault running with it?)")]
    Locked(String),
    #[error(
        "shred log {0} is not the one this database last saw (shorter, or its first bytes changed): erasures it named may be lost, and a database restored from an older copy would bring them back. Put the right log back; or, to go on with the log as it is, stop the vault and run `vault operator accept-shred-log --config FILE` (audited)"
    )]
    NotSeen(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("commit: {0}")]
    Commit(String),
    #[error("the re-erasure of a restored subject failed: {0}")]
    Erase(String),
}

/// The log file and what it holds, read once at start.
#[derive(Debug)]
pub struct ShredLog {
    path: PathBuf,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Open for reading and appending, and locked, for the process's life.
    file: std::fs::File,
    /// The fingerprints the log names: read at start for its check, and
    /// let go after it (later appends only need the pending rows).
    known: HashSet<Fingerprint>,
    /// The file's length in bytes, and the hash of those bytes.
    len: u64,
    hash: Sha256,
    /// The file ends in a line cut short (a crash or a failed write
    /// mid-append): the next append starts on a new line.
    torn: bool,
    /// An append failed: what the file holds is read again before the next.
    failed: bool,
}

impl State {
    fn seen(&self) -> Seen {
        (self.len, self.hash.clone().finalize().into())
    }

    /// Reads the whole file again: its length, hash, entries and whether
    /// it ends mid-line.
    fn read(&mut self, shown: &str) -> Result<(), ShredError> {
        let io = |e: std::io::Error| ShredError::Io {
            path: shown.to_string(),
            kind: e.kind(),
        };
        (&self.file).rewind().map_err(io)?;
        let mut reader = std::io::BufReader::new(&self.file);
        let (mut len, mut hash, mut torn, mut unread) = (0u64, Sha256::new(), false, 0usize);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            len += n as u64;
            hash.update(&line);
            match line.strip_suffix(b"\n") {
                None => torn = true,
                Some([]) => {}
                Some(l) => match parse(l) {
                    Some(fp) => {
                        self.known.insert(fp);
                    }
                    None => unread += 1,
                },
            }
        }
        if unread > 0 {
            tracing::warn!(
                path = %shown,
                lines = unread,
                "Shred log lines that do not read were skipped"
            );
        }
        (self.len, self.hash, self.torn, self.failed) = (len, hash, torn, false);
        Ok(())
    }
}

/// What `shred/seen` holds: a length and the SHA-256 of that many bytes.
type Seen = (u64, [u8; 32]);

/// One line of the log: the fingerprint in hex, a space, the time.
fn line(fp: &Fingerprint, time_ms: u64) -> String {
    format!("{} {time_ms}\n", hex::encode(fp))
}

fn parse(line: &[u8]) -> Option<Fingerprint> {
    let text = std::str::from_utf8(line).ok()?;
    let (fp, time) = text.split_once(' ')?;
    time.parse::<u64>().ok()?;
    hex::decode(fp).ok()?.try_into().ok()
}

impl ShredLog {
    /// Opens the log at `path` for reading and appending, creating it
    /// (owner-only) when absent, locks it, and reads it. A log that cannot
    /// be created, written or locked stops the start: erasures would go
    /// unrecorded. Lines that do not read are skipped with a warning: only
    /// a line cut short by a crash is expected.
    pub fn open(path: &Path) -> Result<Self, ShredError> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| ShredError::Io {
            path: shown.clone(),
            kind: e.kind(),
        };
        if path.is_dir() {
            return Err(ShredError::NotAFile(shown));
        }
        let created = !path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(ShredError::NotAFile(shown));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(ShredError::Locked(shown)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if created {
            sync_dir(path).map_err(io)?;
        }
        let mut state = State {
            file,
            known: HashSet::new(),
            len: 0,
            hash: Sha256::new(),
            torn: false,
            failed: false,
        };
        state.read(&shown)?;
        Ok(ShredLog {
            path: path.to_path_buf(),
            state: tokio::sync::Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// The SHA-256 of the log's first `len` bytes; `None` when it is shorter.
    fn prefix_hash(&self, st: &State, len: u64) -> Result<Option<[u8; 32]>, ShredError> {
        if len > st.len {
            return Ok(None);
        }
        let io = |e: std::io::Error| ShredError::Io {
            path: self.shown(),
            kind: e.kind(),
        };
        (&st.file).rewind().map_err(io)?;
        let mut h = Sha256::new();
        let copied =
            std::io::copy(&mut (&st.file).take(len), &mut HashWriter(&mut h)).map_err(io)?;
        Ok((copied == len).then(|| h.finalize().into()))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}

/// Appends `text` to `file` and syncs it.
fn append(mut file: &std::fs::File, text: &[u8]) -> std::io::Result<()> {
    file.write_all(text)?;
    file.sync_all()
}

fn read_seen(store: &dyn Store) -> Result<Option<Seen>, StoreError> {
    Ok(store.get(Space::Meta, SEEN)?.and_then(|b| {
        let len = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        Some((len, b.get(8..40)?.try_into().ok()?))
    }))
}

fn seen_bytes((len, hash): Seen) -> Vec<u8> {
    [&len.to_be_bytes()[..], &hash].concat()
}

fn pending_rows(store: &dyn Store) -> Result<crate::store::Rows, StoreError> {
    let end = prefix_end(PENDING);
    store.scan(Space::Meta, PENDING, end.as_deref(), PAGE)
}

/// Moves the database's pending rows into the log (when one is set; else
/// they only go); how many rows went. Called after every destruction and
/// at start; the sweeper calls [`record_if_free`].
pub async fn record(v: &Vault) -> Result<usize, ShredError> {
    match &v.shreds {
        Some(log) => {
            let mut st = log.state.lock().await;
            record_locked(v, log, &mut st).await
        }
        None => drop_pending(v).await,
    }
}

/// [`record`] unless another is under way (a log on storage that hangs
/// must not stall the sweeper's other work).
pub async fn record_if_free(v: &Vault) {
    let done = match &v.shreds {
        Some(log) => match log.state.try_lock() {
            Ok(mut st) => record_locked(v, log, &mut st).await,
            Err(_) => return,
        },
        None => drop_pending(v).await,
    };
    if let Err(e) = done {
        tracing::error!(error = %e, "Recording destroyed subject keys in the shred log failed; tried again with the next sweep");
    }
}

/// [`record`] after a destruction: a failure is logged and counted
/// (`vault_shred_log_pending`), and the sweeper tries again; the erasure
/// stands.
pub async fn record_logged(v: &Vault) {
    if let Err(e) = record(v).await {
        tracing::error!(error = %e, "Recording destroyed subject keys in the shred log failed; tried again with the next sweep");
    }
}

/// Without a log, pending rows only go.
async fn drop_pending(v: &Vault) -> Result<usize, ShredError> {
    let mut moved = 0;
    loop {
        let rows = pending_rows(v.store.as_ref())?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let mut b = Batch::default();
        for (k, val) in &rows {
            b.expect(Space::Meta, k.clone(), Some(val.clone()));
            b.delete(Space::Meta, k.clone());
        }
        commit(v, b).await?;
        moved += rows.len();
    }
}

async fn record_locked(v: &Vault, log: &ShredLog, st: &mut State) -> Result<usize, ShredError> {
    let seen = read_seen(v.store.as_ref())?;
    let before = st.seen();
    let mut moved = 0;
    loop {
        let rows = pending_rows(v.store.as_ref())?;
        v.metrics
            .shred_pending
            .set(i64::try_from(rows.len()).unwrap_or(i64::MAX));
        if rows.is_empty() {
            break;
        }
        let mut text = Vec::new();
        let mut fresh = Vec::new();
        for (k, val) in &rows {
            let fp = k
                .get(PENDING.len()..)
                .and_then(|f| Fingerprint::try_from(f).ok());
            let time = <[u8; 8]>::try_from(val.as_slice()).map_or(0, u64::from_be_bytes);
            if let Some(fp) = fp.filter(|fp| !st.known.contains(fp) && !fresh.contains(fp)) {
                text.extend_from_slice(line(&fp, time).as_bytes());
                fresh.push(fp);
            }
        }
        if !text.is_empty() {
            if st.failed {
                // What a failed write left is read, not guessed: its bytes
                // count in the hash, and a cut line is ended first.
                st.read(&log.shown())?;
            }
            if st.torn {
                text.insert(0, b'\n');
            }
            let file = st.file.try_clone().map_err(|e| ShredError::Io {
                path: log.shown(),
                kind: e.kind(),
            })?;
            let (text, written) = tokio::task::spawn_blocking(move || {
                let r = append(&file, &text);
                (text, r)
            })
            .await
            .map_err(|_| ShredError::Io {
                path: log.shown(),
                kind: std::io::ErrorKind::Other,
            })?;
            if let Err(e) = written {
                st.failed = true;
                v.metrics.shred_append_failures.inc();
                return Err(ShredError::Io {
                    path: log.shown(),
                    kind: e.kind(),
                });
            }
            st.len += text.len() as u64;
            st.hash.update(&text);
            st.torn = false;
            st.known.extend(fresh);
        }
        let mut b = Batch::default();
        for (k, val) in &rows {
            b.expect(Space::Meta, k.clone(), Some(val.clone()));
            b.delete(Space::Meta, k.clone());
        }
        commit(v, b).await?;
        moved += rows.len();
    }
    // The database reflects the whole log only if it did before: every
    // line appended since names a key it destroyed.
    let in_step = match seen {
        Some(s) => s == before,
        None => before.0 == 0,
    };
    if in_step && st.seen() != before {
        let mut b = Batch::default();
        b.put(Space::Meta, SEEN.to_vec(), seen_bytes(st.seen()));
        commit(v, b).await?;
    }
    Ok(moved)
}

/// Commits `b`; a conflict is not an error (a row written again meanwhile
/// stays for the next pass).
async fn commit(v: &Vault, b: Batch) -> Result<(), ShredError> {
    match v.committer.commit(b, Vec::new()).await {
        Ok(()) | Err(crate::commit::CommitError::Store(StoreError::Conflict)) => Ok(()),
        Err(crate::commit::CommitError::Store(e)) => Err(e.into()),
        Err(e) => Err(ShredError::Commit(e.to_string())),
    }
}

/// At start, before anything is served: records what a crash left
/// pending (refusing the start when the log cannot take it), then, when
/// the database has not seen the whole log (it was restored from a
/// backup), destroys again every subject key the log names, with the
/// subject's values. Refuses a log that is not the one the database saw
/// ([`ShredError::NotSeen`]). How many subjects were erased again.
pub async fn reapply(v: &Vault) -> Result<u64, ShredError> {
    let Some(log) = &v.shreds else {
        drop_pending(v).await?;
        return Ok(0);
    };
    let mut st = log.state.lock().await;
    record_locked(v, log, &mut st).await?;
    let now = st.seen();
    match read_seen(v.store.as_ref())? {
        Some(seen) if seen == now => {
            st.known = HashSet::new();
            return Ok(0);
        }
        Some((len, hash)) if log.prefix_hash(&st, len)? != Some(hash) => {
            return Err(ShredError::NotSeen(log.shown()));
        }
        _ => {}
    }
    let mut erased = 0u64;
    let mut from = Vec::new();
    loop {
        let page = v.store.scan(Space::SubjectKeys, &from, None, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((k, _)) = page.last() {
            from = k.clone();
            from.push(0);
        }
        for (k, wrapped) in page {
            let Ok(subject) = String::from_utf8(k) else {
                continue;
            };
            if st.known.contains(&fingerprint(&subject, &wrapped)) {
                crate::api::lifecycle::erase_again(v, &subject, &wrapped)
                    .await
                    .map_err(|e| ShredError::Erase(e.to_string()))?;
                erased += 1;
            }
        }
        if !full {
            break;
        }
    }
    // The re-erasures' own pending rows name keys the log has.
    record_locked(v, log, &mut st).await?;
    let mut b = Batch::default();
    b.put(Space::Meta, SEEN.to_vec(), seen_bytes(st.seen()));
    commit(v, b).await?;
    st.known = HashSet::new();
    if erased > 0 {
        // The keys leave the engine's files with the start's purge.
        tracing::warn!(
            subjects = erased,
            "Subjects the shred log says were erased were in the database (restored from an older copy?): erased again"
        );
    }
    Ok(erased)
}

/// `vault operator accept-shred-log`: forgets which log the database saw,
/// so the next start checks every subject key against the log as it is
/// and goes on from there. For a log lost or replaced: erasures it no
/// longer names cannot be made again. The caller audits it.
pub fn forget_seen(b: &mut Batch) {
    b.delete(Space::Meta, SEEN.to_vec());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn fingerprints_tell_subjects_and_keys_apart() {
        let a = fingerprint("s1", b"key");
        assert_eq!(a, fingerprint("s1", b"key"));
        assert_ne!(a, fingerprint("s2", b"key"));
        assert_ne!(a, fingerprint("s1", b"kez"));
        // The separator keeps "s1"+"0key" from being "s10"+"key".
        assert_ne!(fingerprint("s1", b"0key"), fingerprint("s10", b"key"));
    }

    #[test]
    fn the_log_reads_back_what_was_appended_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shred.log");
        let log = ShredLog::open(&path).unwrap();
        assert_eq!(log.state.try_lock().unwrap().len, 0);
        // Held: a second opener is refused.
        assert!(matches!(ShredLog::open(&path), Err(ShredError::Locked(_))));
        drop(log);
        let a = fingerprint("s1", b"k1");
        let b = fingerprint("s2", b"k2");
        let raw = |bytes: &[u8]| {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            append(&f, bytes).unwrap();
        };
        raw(line(&a, 5).as_bytes());
        // A crash mid-line.
        raw(&line(&b, 6).as_bytes()[..20]);
        let log = ShredLog::open(&path).unwrap();
        let st = log.state.try_lock().unwrap();
        assert!(st.known.contains(&a) && !st.known.contains(&b));
        assert!(st.torn);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(st.len, line(&a, 5).len() as u64 + 20);
        // A stray line is skipped, the rest still read.
        drop(st);
        drop(log);
        raw(b"\nnot a line\n");
        raw(line(&b, 7).as_bytes());
        let log = ShredLog::open(&path).unwrap();
        let st = log.state.try_lock().unwrap();
        assert!(st.known.contains(&a) && st.known.contains(&b));
        assert!(!st.torn);
    }

    #[test]
    fn a_directory_is_not_a_log() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            ShredLog::open(dir.path()),
            Err(ShredError::NotAFile(_) | ShredError::Io { .. })
        ));
    }
}
