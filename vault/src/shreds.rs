//! The shred log: every subject key the vault destroys (an erasure, the
//! end of a restriction, a closed account's last value), recorded in a file
//! outside the database (`server.shred-log`), so that a database restored
//! from a backup taken before an erasure does not bring the erased subject
//! back: at start, a subject key the log names is destroyed again, with the
//! subject's values, before anything is served. An erasure the law turned
//! into a restriction is logged too (`r` and its end), and restricted
//! again.
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

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::server::Vault;
use crate::store::{prefix_end, Batch, Space, Store, StoreError};

/// Pending rows in `Meta`: the prefix, then a fingerprint; the value is
/// the destruction's time (Unix ms, big-endian).
pub const PENDING: &[u8] = b"shred/pending/";
/// The log length (bytes, big-endian) and the SHA-256 of those bytes that
/// the database is known to reflect.
pub const SEEN: &[u8] = b"shred/seen";
/// Set by `vault operator accept-shred-log`: the next start checks every
/// subject key against the log it accepted.
pub const CHECK: &[u8] = b"shred/check";

/// Pending rows moved to the log at a time.
const PAGE: usize = 4096;

/// How long an erasure, or the sweeper, waits for the log before leaving
/// the record pending for a later pass (a log on storage that hangs must
/// not hold them up).
const WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Adds to `b` the pending row of an erasure that the law turned into a
/// restriction of `subject` (its key `wrapped`) until `until`: a database
/// restored from before it gets the restriction again at start.
pub fn mark_restricted(b: &mut Batch, subject: &str, wrapped: &[u8], until: u64, now_ms: u64) {
    b.put(
        Space::Meta,
        [PENDING, &fingerprint(subject, wrapped)].concat(),
        [now_ms.to_be_bytes(), until.to_be_bytes()].concat(),
    );
}

/// What the log says of a key: destroyed (`None`), or restricted until a
/// time. A destruction outranks a restriction of the same key.
type Known = std::collections::HashMap<Fingerprint, Option<u64>>;

fn note(known: &mut Known, fp: Fingerprint, until: Option<u64>) {
    match (known.get(&fp), until) {
        (Some(None), _) => {}
        (Some(Some(old)), Some(new)) if *old >= new => {}
        _ => {
            known.insert(fp, until);
        }
    }
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
    #[error("shred log {0}: no answer within the wait; the record stays pending")]
    Slow(String),
}

/// The log file and what it holds.
#[derive(Debug)]
pub struct ShredLog {
    path: PathBuf,
    state: Arc<tokio::sync::Mutex<State>>,
    /// A sweeper's recorder task is under way (one at a time).
    recorder: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Open for reading and appending, and locked, for the process's life.
    file: std::fs::File,
    /// The file's length in bytes, and the hash of those bytes.
    len: u64,
    hash: Sha256,
    /// The file ends in a line cut short (a crash or a failed write
    /// mid-append): the next append starts on a new line.
    torn: bool,
    /// The file lost bytes this process had counted, was replaced, or
    /// grew by bytes this process did not write, while the vault ran:
    /// nothing more is appended and no pending row goes (they wait for
    /// the next start, which refuses the log until it is put right).
    lost: bool,
    /// A write failed: the bytes it may have left are this process's own,
    /// and are read and counted before the next.
    dirty: bool,
    /// The log as the database's `seen` last said, when the database
    /// reflects everything in it up to there and nothing but what this
    /// process appended since: `seen` may then move to the log as it is
    /// once no row is pending. `None`: `seen` stays until the next start.
    synced: Option<Seen>,
    /// Lines appended whose pending rows may not be deleted yet (a pass
    /// cut short), with the row each was appended for: that row is not
    /// appended again (another row of the key, its destruction after its
    /// restriction, is).
    appended: HashMap<Fingerprint, Vec<u8>>,
}

/// What `shred/seen` holds: a length and the SHA-256 of that many bytes.
type Seen = (u64, [u8; 32]);

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ShredError + '_ {
    move |e| ShredError::Io {
        path: path.display().to_string(),
        kind: e.kind(),
    }
}

/// Reads `file` from `from` to its end with positioned reads (the offset
/// appends move is never used): calls `line` with every complete line
/// (without its newline), feeds every byte to `hash`, and returns how many
/// bytes it read and whether they end mid-line.
fn read_from(
    file: &std::fs::File,
    from: u64,
    hash: &mut Sha256,
    mut line: impl FnMut(&[u8]),
) -> std::io::Result<(u64, bool)> {
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = from;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let n = file.read_at(&mut buf, pos)?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        hash.update(chunk);
        pos += n as u64;
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(i);
            partial.extend_from_slice(head);
            line(&partial);
            partial.clear();
            rest = tail.get(1..).unwrap_or_default();
        }
        partial.extend_from_slice(rest);
    }
    Ok((pos - from, !partial.is_empty()))
}

impl State {
    fn seen(&self) -> Seen {
        (self.len, self.hash.clone().finalize().into())
    }

    /// Brings the counted length and hash up to what the file holds: the
    /// bytes a failed write left, read, not guessed. A file shorter than
    /// counted, or another file now at the path, is `lost`.
    fn catch_up(&mut self, path: &Path) -> std::io::Result<()> {
        let meta = self.file.metadata()?;
        let replaced = match std::fs::metadata(path) {
            Ok(p) => (p.dev(), p.ino()) != (meta.dev(), meta.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let foreign = meta.len() > self.len && !self.dirty;
        if replaced || meta.len() < self.len || foreign {
            self.lost = true;
        }
        self.dirty = false;
        if meta.len() < self.len {
            // Counted again from the start: appends go on, and the
            // database's `seen` no longer moves.
            self.hash = Sha256::new();
            let (n, torn) = read_from(&self.file, 0, &mut self.hash, |_| {})?;
            (self.len, self.torn) = (n, torn);
        } else if meta.len() > self.len {
            let (n, torn) = read_from(&self.file, self.len, &mut self.hash, |_| {})?;
            self.len += n;
            self.torn = torn;
        }
        Ok(())
    }
}

/// A line: the fingerprint, and the end of a restriction when it is one.
fn parse(line: &[u8]) -> Option<(Fingerprint, Option<u64>)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    let fp = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    let until = match parts.next() {
        None => None,
        Some(r) => Some(r.strip_prefix('r')?.parse::<u64>().ok()?),
    };
    parts.next().is_none().then_some((fp, until))
}

/// One line of the log: the fingerprint in hex, a space, the time; for a
/// restriction, a space and `r` with its end.
fn line(fp: &Fingerprint, time_ms: u64, until: Option<u64>) -> String {
    match until {
        None => format!("{} {time_ms}\n", hex::encode(fp)),
        Some(u) => format!("{} {time_ms} r{u}\n", hex::encode(fp)),
    }
}

impl ShredLog {
    /// How many hold the log's state (and with it the open, locked file):
    /// the vault, and any append under way.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.state)
    }

    /// Opens the log at `path` for reading and appending, creating it
    /// (owner-only) when absent, locks it, and counts it. A log that cannot
    /// be created, written or locked stops the start: erasures would go
    /// unrecorded.
    pub fn open(path: &Path) -> Result<Self, ShredError> {
        let shown = path.display().to_string();
        let io = io_err(path);
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
            .map_err(&io)?;
        if !file.metadata().map_err(&io)?.is_file() {
            return Err(ShredError::NotAFile(shown));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(ShredError::Locked(shown)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Every start, not only the one that made it: a start cut short
        // before this sync leaves a name only a later sync makes durable.
        // The start that made it must sync it; a later one tries.
        let dir = crate::store::parent_dir(path);
        if created {
            crate::store::sync_dir(dir).map_err(&io)?;
        } else {
            crate::store::sync_dir_or_warn(dir).map_err(&io)?;
        }
        let mut hash = Sha256::new();
        let (len, torn) = read_from(&file, 0, &mut hash, |_| {}).map_err(&io)?;
        Ok(ShredLog {
            path: path.to_path_buf(),
            recorder: std::sync::atomic::AtomicBool::new(false),
            state: Arc::new(tokio::sync::Mutex::new(State {
                file,
                len,
                hash,
                torn,
                lost: false,
                dirty: false,
                synced: None,
                appended: HashMap::new(),
            })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    /// Every fingerprint the log names (lines that do not read are skipped
    /// with a warning: only a line cut short by a crash is expected).
    fn fingerprints(&self, st: &State) -> Result<Known, ShredError> {
        let mut known = Known::new();
        let mut unread = 0usize;
        read_from(&st.file, 0, &mut Sha256::new(), |l| {
            if l.is_empty() {
                return;
            }
            match parse(l) {
                Some((fp, until)) => note(&mut known, fp, until),
                None => unread += 1,
            }
        })
        .map_err(io_err(&self.path))?;
        if unread > 0 {
            tracing::warn!(
                path = %self.shown(),
                lines = unread,
                "Shred log lines that do not read were skipped"
            );
        }
        Ok(known)
    }

    /// The SHA-256 of the log's first `len` bytes; `None` when it is shorter.
    fn prefix_hash(&self, st: &State, len: u64) -> Result<Option<[u8; 32]>, ShredError> {
        if len > st.len {
            return Ok(None);
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = 0u64;
        while pos < len {
            let want = usize::try_from((len - pos).min(buf.len() as u64)).unwrap_or(buf.len());
            let slot = buf.get_mut(..want).unwrap_or_default();
            let n = st.file.read_at(slot, pos).map_err(io_err(&self.path))?;
            let Some(read) = slot.get(..n).filter(|r| !r.is_empty()) else {
                return Ok(None);
            };
            h.update(read);
            pos += n as u64;
        }
        Ok(Some(h.finalize().into()))
    }
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

type Guard = tokio::sync::OwnedMutexGuard<State>;

/// Moves the database's pending rows into the log; how many rows went.
/// Without a log they stay (counted in `vault_shred_log_pending`) for the
/// log a later start may have. Waits for the log at most 2 s: an
/// append under way goes on to its end, and its rows wait for the next
/// pass. Called after every destruction, by the sweeper and at start.
pub async fn record(v: &Vault) -> Result<usize, ShredError> {
    let Some(log) = &v.shreds else {
        let n = pending_rows(v.store.as_ref())?.len();
        v.metrics
            .shred_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        return Ok(0);
    };
    // Only the wait for the log is bounded: a pass that has begun goes on
    // (a caller that stops waiting leaves its append to finish; the rows
    // it did not delete are not appended twice).
    let guard = tokio::time::timeout(WAIT, log.state.clone().lock_owned())
        .await
        .map_err(|_| ShredError::Slow(log.shown()))?;
    record_locked(v, log, guard, None).await.map(|(n, _)| n)
}

/// [`record`], a failure logged: the erasure stands, its record waits in
/// the database for the next pass.
pub async fn record_logged(v: &Vault) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // The whole pass within the wait: one cut short leaves its append to
    // finish and be counted, and its rows to the next pass.
    let done = match tokio::time::timeout(WAIT, record(v)).await {
        Ok(r) => r,
        Err(_) => Err(ShredError::Slow(
            v.shreds.as_ref().map_or_else(String::new, |l| l.shown()),
        )),
    };
    if let Err(e) = done {
        // At most once a minute: the sweeper tries every pass.
        let now = crate::api::now_ms();
        let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000 {
            LAST.store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "Recording destroyed subject keys in the shred log failed; tried again with the next sweep (logged at most once a minute)");
        }
    }
}

/// The sweeper's pass: [`record_logged`] on a task of its own (a log on
/// storage that hangs holds that task, not the sweeper), one at a time.
pub fn spawn_recorder(v: &Arc<Vault>) {
    /// Lets the next recorder start when this one ends, however it ends.
    struct Running(Arc<Vault>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(log) = &self.0.shreds {
                log.recorder
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }
    }
    if let Some(log) = &v.shreds {
        if log.recorder.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
    }
    // Without a log this only counts the records waiting for one.
    let running = Running(v.clone());
    tokio::spawn(async move {
        record_logged(&running.0).await;
        drop(running);
    });
}

/// Appends `text` under `guard`, off the runtime; the append and what it
/// counts cannot be cut apart (a caller that stops waiting leaves it to
/// finish, the lock with it). The guard back, and the outcome.
async fn append(
    log: &ShredLog,
    mut guard: Guard,
    text: Vec<u8>,
    fresh: Vec<(Fingerprint, Vec<u8>)>,
) -> (Guard, std::io::Result<()>) {
    let path = log.path.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let st = &mut *guard;
        let r = (|| {
            st.catch_up(&path)?;
            if st.lost {
                return Err(std::io::Error::other(
                    "the log lost bytes, was replaced, or grew by bytes the vault did not write",
                ));
            }
            let mut text = text;
            if st.torn {
                text.insert(0, b'\n');
            }
            st.dirty = true;
            (&st.file).write_all(&text)?;
            st.file.sync_all()?;
            st.dirty = false;
            st.len += text.len() as u64;
            st.hash.update(&text);
            st.torn = false;
            // Counted with the append: a pass cut short after it does
            // not append these lines again.
            st.appended.extend(fresh);
            Ok(())
        })();
        (guard, r)
    })
    .await;
    match joined {
        Ok(x) => x,
        // The blocking pool is gone (the runtime stops): nothing to count.
        Err(_) => (
            log.state.clone().lock_owned().await,
            Err(std::io::Error::other("append task lost")),
        ),
    }
}

/// Moves the pending rows (skipping fingerprints in `known`, and those
/// appended by a pass cut short); then moves `seen` along to the log as
/// it is, when the database was in step ([`State::synced`]).
async fn record_locked(
    v: &Vault,
    log: &ShredLog,
    mut guard: Guard,
    known: Option<&Known>,
) -> Result<(usize, Guard), ShredError> {
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
        let mut fresh: Vec<(Fingerprint, Vec<u8>)> = Vec::new();
        for (k, val) in &rows {
            let fp = k
                .get(PENDING.len()..)
                .and_then(|f| Fingerprint::try_from(f).ok());
            let field = |i: usize| {
                val.get(i..i + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
            };
            let (time, until) = (field(0).unwrap_or(0), field(8));
            // Already in the log: the destruction, or a restriction as long.
            let logged = |fp: &Fingerprint| match (known.and_then(|k| k.get(fp)), until) {
                (Some(None), _) => true,
                (Some(Some(have)), Some(new)) => *have >= new,
                _ => false,
            };
            let new = |fp: &Fingerprint| {
                !logged(fp)
                    && guard.appended.get(fp) != Some(val)
                    && !fresh.iter().any(|(f, _)| f == fp)
            };
            if let Some(fp) = fp.filter(new) {
                text.extend_from_slice(line(&fp, time, until).as_bytes());
                fresh.push((fp, val.clone()));
            }
        }
        if !text.is_empty() {
            let (g, written) = append(log, guard, text, fresh).await;
            guard = g;
            if let Err(e) = written {
                v.metrics.shred_append_failures.inc();
                return Err(io_err(&log.path)(e));
            }
        }
        let mut b = Batch::default();
        for (k, val) in &rows {
            b.expect(Space::Meta, k.clone(), Some(val.clone()));
            b.delete(Space::Meta, k.clone());
        }
        commit(v, b).await?;
        for (k, val) in &rows {
            if let Some(fp) = k
                .get(PENDING.len()..)
                .and_then(|f| Fingerprint::try_from(f).ok())
            {
                if guard.appended.get(&fp) == Some(val) {
                    guard.appended.remove(&fp);
                }
            }
        }
        moved += rows.len();
    }
    // Every line appended since `synced` names a key this database
    // destroyed or restricted.
    if let Some(synced) = guard.synced.filter(|_| !guard.lost) {
        let now = guard.seen();
        if now != synced && read_seen(v.store.as_ref())? == Some(synced) {
            let mut b = Batch::default();
            b.expect(Space::Meta, SEEN.to_vec(), Some(seen_bytes(synced)));
            b.put(Space::Meta, SEEN.to_vec(), seen_bytes(now));
            commit(v, b).await?;
            if read_seen(v.store.as_ref())? == Some(now) {
                guard.synced = Some(now);
            }
        }
    }
    Ok((moved, guard))
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

/// At start, before anything is served. First, whether the log is the one
/// the database saw: refused ([`ShredError::NotSeen`]) when it is shorter
/// or its first bytes differ, with the pending rows left where they are.
/// Then the pending rows a crash left go to the log (refusing the start
/// when it cannot take them). When the database has not seen the whole
/// log (restored from a backup), or an operator accepted a log, every
/// subject key the log names is destroyed again, with the subject's
/// values. How many subjects were erased again.
pub async fn reapply(v: &Vault) -> Result<u64, ShredError> {
    let Some(log) = &v.shreds else {
        let n = pending_rows(v.store.as_ref())?.len();
        if n > 0 {
            tracing::warn!(
                keys = n,
                "Destroyed subject keys wait in the database for a shred log (server.shred-log is not set)"
            );
        }
        v.metrics
            .shred_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        return Ok(0);
    };
    let guard = log.state.clone().lock_owned().await;
    let seen = read_seen(v.store.as_ref())?;
    let check = v.store.get(Space::Meta, CHECK)?.is_some();
    let now = guard.seen();
    match seen {
        Some(s) if s == now && !check => {
            let mut guard = guard;
            guard.synced = Some(now);
            record_locked(v, log, guard, None).await?;
            return Ok(0);
        }
        Some((len, hash)) if log.prefix_hash(&guard, len)? != Some(hash) => {
            return Err(ShredError::NotSeen(log.shown()));
        }
        _ => {}
    }
    let known = log.fingerprints(&guard)?;
    let (_, guard) = record_locked(v, log, guard, Some(&known)).await?;
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
            let again = match known.get(&fingerprint(&subject, &wrapped)) {
                None => continue,
                Some(Some(until)) => {
                    crate::api::lifecycle::restrict_again(v, &subject, &wrapped, *until).await
                }
                Some(None) => crate::api::lifecycle::erase_again(v, &subject, &wrapped)
                    .await
                    .map(|()| true),
            };
            if again.map_err(|e| ShredError::Erase(e.to_string()))? {
                erased += 1;
            }
        }
        if !full {
            break;
        }
    }
    // The re-erasures' own pending rows name keys the log has.
    let (_, mut guard) = record_locked(v, log, guard, Some(&known)).await?;
    let mut b = Batch::default();
    b.put(Space::Meta, SEEN.to_vec(), seen_bytes(guard.seen()));
    b.delete(Space::Meta, CHECK.to_vec());
    commit(v, b).await?;
    guard.synced = Some(guard.seen());
    if erased > 0 {
        // The keys leave the engine's files with the start's purge; the
        // restrictions' values are dealt with once the keys are at hand.
        tracing::warn!(
            subjects = erased,
            "Subjects the shred log says were erased or restricted were in the database as they were before (restored from an older copy?): erased or restricted again"
        );
        crate::api::lifecycle::redo_restrictions(v).await;
    }
    Ok(erased)
}

/// `vault operator accept-shred-log`: the database takes `log` as it is
/// now as the one it saw, and its next start checks every subject key
/// against it. For a log lost or replaced: erasures it no longer names
/// cannot be made again. The caller audits it.
pub fn accept(b: &mut Batch, log: &ShredLog) -> Option<(u64, String)> {
    let st = log.state.try_lock().ok()?;
    let seen = st.seen();
    b.put(Space::Meta, SEEN.to_vec(), seen_bytes(seen));
    b.put(Space::Meta, CHECK.to_vec(), vec![1]);
    Some((seen.0, hex::encode(seen.1)))
}

/// What the database says it saw of the log: length and hash (hex).
pub fn seen_in(store: &dyn Store) -> Result<Option<(u64, String)>, StoreError> {
    Ok(read_seen(store)?.map(|(len, hash)| (len, hex::encode(hash))))
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

    fn raw(path: &Path, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn the_log_is_counted_read_back_and_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shred.log");
        let log = ShredLog::open(&path).unwrap();
        assert_eq!(log.state.try_lock().unwrap().len, 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Held: a second opener is refused.
        assert!(matches!(ShredLog::open(&path), Err(ShredError::Locked(_))));
        drop(log);
        let a = fingerprint("s1", b"k1");
        let b = fingerprint("s2", b"k2");
        raw(&path, line(&a, 5, None).as_bytes());
        // A crash mid-line.
        raw(&path, &line(&b, 6, None).as_bytes()[..20]);
        let log = ShredLog::open(&path).unwrap();
        let st = log.state.try_lock().unwrap();
        assert!(st.torn);
        assert_eq!(st.len, line(&a, 5, None).len() as u64 + 20);
        let known = log.fingerprints(&st).unwrap();
        assert!(known.contains_key(&a) && !known.contains_key(&b));
        assert_eq!(
            st.seen().1,
            <[u8; 32]>::from(Sha256::digest(std::fs::read(&path).unwrap()))
        );
        drop(st);
        drop(log);
        // A stray line is skipped, the rest still read.
        raw(&path, b"\nnot a line\n");
        raw(&path, line(&b, 7, Some(9)).as_bytes());
        // A destruction outranks a restriction of the same key.
        raw(&path, line(&a, 8, Some(99)).as_bytes());
        raw(&path, b"00 1 r2 extra\n");
        let log = ShredLog::open(&path).unwrap();
        let st = log.state.try_lock().unwrap();
        let known = log.fingerprints(&st).unwrap();
        assert_eq!(known.get(&a), Some(&None));
        assert_eq!(known.get(&b), Some(&Some(9)));
        assert!(!st.torn);
        // The first bytes' hash, as a database would have seen them.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            log.prefix_hash(&st, 30).unwrap(),
            Some(<[u8; 32]>::from(Sha256::digest(&bytes[..30])))
        );
        assert_eq!(log.prefix_hash(&st, bytes.len() as u64 + 1).unwrap(), None);
    }

    /// Bytes that reach the file behind the count (a write cut short) are
    /// read and counted; a file cut below the count, or replaced, is lost.
    #[test]
    fn catching_up_reads_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shred.log");
        let log = ShredLog::open(&path).unwrap();
        let mut st = log.state.try_lock().unwrap();
        // What this process's own failed write left.
        st.dirty = true;
        raw(&path, b"0123");
        st.catch_up(&path).unwrap();
        assert_eq!((st.len, st.torn, st.lost), (4, true, false));
        assert_eq!(st.seen().1, <[u8; 32]>::from(Sha256::digest(b"0123")));
        // Bytes no write of this process left.
        raw(&path, b"45\n");
        st.catch_up(&path).unwrap();
        assert!(st.lost, "grown behind the vault's back");
        st.lost = false;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2)
            .unwrap();
        st.catch_up(&path).unwrap();
        assert!(st.lost, "cut");
        assert_eq!(st.seen().1, <[u8; 32]>::from(Sha256::digest(b"01")));
        drop(st);
        drop(log);
        let log = ShredLog::open(&path).unwrap();
        let mut st = log.state.try_lock().unwrap();
        std::fs::rename(&path, dir.path().join("old")).unwrap();
        raw(&path, b"");
        st.catch_up(&path).unwrap();
        assert!(st.lost, "another file at the path");
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
