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
//! - A destruction writes, in its own atomic write, a pending row in the
//!   database; only once the log holds the fingerprint (appended and
//!   synced) does that row go. A crash between the two leaves the row,
//!   which the next start appends.
//! - `shred/seen` in the database is the log's length that the database is
//!   known to reflect: it moves with the log only while the two agree, and
//!   after a start's check. When it differs from the log's length (a
//!   restored database, a log replaced), the start checks every subject
//!   key against the log.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::server::Vault;
use crate::store::{prefix_end, Batch, Space, StoreError};

/// Pending rows in `Meta`: the prefix, then a fingerprint; the value is
/// the destruction's time (Unix ms, big-endian).
pub const PENDING: &[u8] = b"shred/pending/";
/// The log length (bytes, big-endian) the database is known to reflect.
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
    #[error("storage: {0}")]
    Store(#[from] StoreError),
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
    known: HashSet<Fingerprint>,
    /// The file's length in bytes.
    len: u64,
    /// The file ends in a line cut short (a crash mid-append): the next
    /// append starts on a new line.
    torn: bool,
}

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
    /// Reads the log at `path` (absent: empty; it is created on the first
    /// entry). Lines that do not read are skipped with a warning: only a
    /// line cut short by a crash is expected.
    pub fn open(path: &Path) -> Result<Self, ShredError> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| ShredError::Io {
            path: shown.clone(),
            kind: e.kind(),
        };
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => {
                if !f.metadata().map_err(io)?.is_file() {
                    return Err(ShredError::NotAFile(shown));
                }
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let torn = bytes.last().is_some_and(|&b| b != b'\n');
        let mut known = HashSet::new();
        let mut unread = 0usize;
        let mut lines = bytes.split(|&b| b == b'\n');
        // The piece after the last newline: empty, or the torn line.
        lines.next_back();
        for l in lines {
            match parse(l) {
                Some(fp) => {
                    known.insert(fp);
                }
                None => unread += 1,
            }
        }
        if unread > 0 {
            tracing::warn!(
                path = %shown,
                lines = unread,
                "Shred log lines that do not read were skipped"
            );
        }
        Ok(ShredLog {
            path: path.to_path_buf(),
            state: tokio::sync::Mutex::new(State {
                known,
                len: bytes.len() as u64,
                torn,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Appends `text` to the file at `path` (created owner-only) and syncs
/// it, and its directory when the file is new; the file's new length.
fn append(path: &Path, text: &[u8]) -> std::io::Result<u64> {
    let created = !path.exists();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text)?;
    f.sync_all()?;
    if created {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(f.metadata()?.len())
}

fn read_seen(v: &Vault) -> Result<u64, StoreError> {
    Ok(v.store
        .get(Space::Meta, SEEN)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Moves the database's pending rows into the log (when one is set; else
/// they only go); how many rows went. Called after every destruction, by
/// the sweeper (a failed append is tried again) and at start.
pub async fn record(v: &Vault) -> Result<usize, ShredError> {
    let end = prefix_end(PENDING);
    let mut moved = 0;
    loop {
        let rows = v.store.scan(Space::Meta, PENDING, end.as_deref(), PAGE)?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let full = rows.len() == PAGE;
        let mut b = Batch::default();
        for (k, val) in &rows {
            b.expect(Space::Meta, k.clone(), Some(val.clone()));
            b.delete(Space::Meta, k.clone());
        }
        let Some(log) = &v.shreds else {
            commit(v, b).await?;
            moved += rows.len();
            if !full {
                return Ok(moved);
            }
            continue;
        };
        let mut st = log.state.lock().await;
        let seen = read_seen(v)?;
        let mut text = Vec::new();
        let mut fresh = Vec::new();
        for (k, val) in &rows {
            let fp = k
                .get(PENDING.len()..)
                .and_then(|f| Fingerprint::try_from(f).ok());
            let time = <[u8; 8]>::try_from(val.as_slice()).map_or(0, u64::from_be_bytes);
            if let Some(fp) = fp {
                if !st.known.contains(&fp) && !fresh.contains(&fp) {
                    text.extend_from_slice(line(&fp, time).as_bytes());
                    fresh.push(fp);
                }
            }
        }
        let before = st.len;
        if !fresh.is_empty() {
            if st.torn {
                text.insert(0, b'\n');
            }
            let path = log.path.clone();
            let len = tokio::task::spawn_blocking(move || append(&path, &text))
                .await
                .map_err(|_| ShredError::Io {
                    path: log.path.display().to_string(),
                    kind: std::io::ErrorKind::Other,
                })?
                .map_err(|e| ShredError::Io {
                    path: log.path.display().to_string(),
                    kind: e.kind(),
                })?;
            st.len = len;
            st.torn = false;
            st.known.extend(fresh);
        }
        // The database reflects the whole log only if it did before.
        if seen == before && seen != st.len {
            b.put(Space::Meta, SEEN.to_vec(), st.len.to_be_bytes().to_vec());
        }
        commit(v, b).await?;
        moved += rows.len();
        drop(st);
        if !full {
            return Ok(moved);
        }
    }
}

/// [`record`] after a destruction: a failure is logged, and the sweeper's
/// next pass (or the next start) tries again; the erasure stands.
pub async fn record_logged(v: &Vault) {
    if let Err(e) = record(v).await {
        tracing::error!(error = %e, "Recording destroyed subject keys in the shred log failed; tried again with the next sweep");
    }
}

async fn commit(v: &Vault, b: Batch) -> Result<(), ShredError> {
    match v.committer.commit(b, Vec::new()).await {
        // A row written again meanwhile (the same key destroyed twice
        // cannot be; a restart's replay can): the next pass takes it.
        Ok(()) | Err(crate::commit::CommitError::Store(StoreError::Conflict)) => Ok(()),
        Err(crate::commit::CommitError::Store(e)) => Err(e.into()),
        Err(e) => Err(ShredError::Erase(e.to_string())),
    }
}

/// At start, before anything is served: records what a crash left
/// pending, then, when the database does not reflect the whole log (it
/// was restored from a backup, or the log was replaced), destroys again
/// every subject key the log names, with the subject's values, and
/// purges. How many subjects were erased again.
pub async fn reapply(v: &Vault) -> Result<u64, ShredError> {
    let Some(log) = &v.shreds else {
        record(v).await?;
        return Ok(0);
    };
    record(v).await?;
    let seen = read_seen(v)?;
    let len = log.state.lock().await.len;
    if seen == len {
        return Ok(0);
    }
    if seen > len {
        tracing::error!(
            path = %log.path.display(),
            "The shred log is shorter than this database has seen: it was replaced or cut, and the erasures it no longer names cannot be made again if this database is an older copy"
        );
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
        let hits: Vec<(String, Vec<u8>)> = {
            let st = log.state.lock().await;
            page.into_iter()
                .filter_map(|(k, w)| Some((String::from_utf8(k).ok()?, w)))
                .filter(|(s, w)| st.known.contains(&fingerprint(s, w)))
                .collect()
        };
        for (subject, wrapped) in hits {
            crate::api::lifecycle::erase_again(v, &subject, &wrapped)
                .await
                .map_err(|e| ShredError::Erase(e.to_string()))?;
            erased += 1;
        }
        if !full {
            break;
        }
    }
    // The re-erasures' own pending rows name keys the log has.
    record(v).await?;
    let st = log.state.lock().await;
    let mut b = Batch::default();
    b.put(Space::Meta, SEEN.to_vec(), st.len.to_be_bytes().to_vec());
    commit(v, b).await?;
    drop(st);
    if erased > 0 {
        tracing::warn!(
            subjects = erased,
            "Subjects the shred log says were erased were in the database (restored from an older copy?): erased again"
        );
        crate::api::lifecycle::purge_subject_keys(v).await;
    }
    Ok(erased)
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
        let a = fingerprint("s1", b"k1");
        let b = fingerprint("s2", b"k2");
        append(&path, line(&a, 5).as_bytes()).unwrap();
        // A crash mid-line.
        append(&path, &line(&b, 6).as_bytes()[..20]).unwrap();
        let log = ShredLog::open(&path).unwrap();
        let st = log.state.try_lock().unwrap();
        assert!(st.known.contains(&a) && !st.known.contains(&b));
        assert!(st.torn);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A stray line is skipped, the rest still read.
        drop(st);
        append(&path, b"\nnot a line\n").unwrap();
        append(&path, line(&b, 7).as_bytes()).unwrap();
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
