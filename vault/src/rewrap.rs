//! Background re-encryption of every stored value under the active data-key
//! version. Invariants: plaintext exists only inside one step, in zeroizing
//! buffers, and is never returned; each step is one atomic write that
//! re-seals a run of values (each guarded by compare-and-set, so a value a
//! request rewrote meanwhile is left alone and looked at again) together
//! with the cursor, so a crash or restart resumes exactly where the last
//! durable step stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use vault_sdk::wire::RewrapStatus;

use crate::crypto::{tagged_value_aad_into, value_aad_into};
use crate::keys::Keyring;
use crate::schema::{subject_of_value_key, Record};
use crate::secret::SecretKey;
use crate::server::Vault;
use crate::store::{Batch, Space, Store, StoreError};

/// Meta key of the job's cursor.
const CURSOR_KEY: &[u8] = b"rewrap/cursor";
/// Meta key of the proof a finished job leaves (see [`proven_floor`]).
const PROOF_KEY: &[u8] = b"rewrap/proof";

/// The durable state of a rewrap job.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Cursor {
    target: u32,
    /// The next value key to look at (hex).
    next: String,
    scanned: u64,
    rewrapped: u64,
    /// Values that needed moving but were not moved (changed outside the
    /// vault, their key version refused, their subject's key gone, or a
    /// format-1 value not matched to its token): they stay under their
    /// version, which then cannot be retired.
    #[serde(default)]
    left_behind: u64,
    done: bool,
    /// Set by [`fence`] (which restarts a scan already begun): from then
    /// on the committer refuses any write sealed under a version below the
    /// target, and whatever was queued before was written first. So
    /// nothing lands behind the cursor under an older version, and a
    /// fenced job that leaves nothing behind proves it (see
    /// [`proven_floor`]).
    #[serde(default)]
    fenced: bool,
}

/// The rewrap job's settings and wake-up signal.
#[derive(Debug)]
pub struct Rewrap {
    batch: usize,
    pause: Duration,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum RewrapError {
    #[error("the vault is sealed")]
    Sealed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rewrap cursor is unreadable")]
    Corrupt,
    #[error("the commit queue failed")]
    Commit,
    #[error("the job is not fenced")]
    Unfenced,
}

impl Rewrap {
    pub fn new(batch: usize, pause_ms: u64) -> Self {
        Self {
            batch,
            pause: Duration::from_millis(pause_ms),
            wake: Notify::new(),
        }
    }

    /// The batch that starts a job towards `target`, replacing any job
    /// before it; commit it, then call [`Rewrap::kick`].
    pub fn start_batch(keys: &Keyring, target: u32) -> Result<Batch, RewrapError> {
        let cursor = Cursor {
            target,
            ..Cursor::default()
        };
        let mut b = Batch::default();
        b.put(Space::Meta, CURSOR_KEY.to_vec(), encode(keys, &cursor)?);
        Ok(b)
    }

    /// Wakes the background job.
    pub fn kick(&self) {
        self.wake.notify_one();
    }
}

/// The cursor as stored: sealed with the records key for its row, since
/// what it says (where the scan is, what was left behind, whether it was
/// fenced) decides whether a finished job proves a floor.
fn encode(keys: &Keyring, c: &Cursor) -> Result<Vec<u8>, RewrapError> {
    let json = serde_json::to_vec(c).map_err(|_| RewrapError::Corrupt)?;
    keys.seal_record(Space::Meta, CURSOR_KEY, &json)
        .map_err(|_| RewrapError::Corrupt)
}

/// A stored cursor: a sealed one opened with `keys`, or clear JSON (a job
/// of a vault from before cursors were sealed, or a forgery), which is
/// trusted with nothing: it is read as never fenced, so it proves nothing
/// until fenced afresh. Without keys (a sealed vault) only clear JSON reads.
fn decode(keys: Option<&Keyring>, stored: &[u8]) -> Option<Cursor> {
    if let Some(plain) = keys.and_then(|k| k.open_record(Space::Meta, CURSOR_KEY, stored).ok()) {
        return serde_json::from_slice(&plain).ok();
    }
    serde_json::from_slice::<Cursor>(stored)
        .ok()
        .map(|c| Cursor { fenced: false, ..c })
}

/// The job's cursor as stored (`None`: no job ever), for a write that must
/// hold only while the job is as it was read (a key retirement).
pub fn cursor_bytes(store: &dyn Store) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(Space::Meta, CURSOR_KEY)
}

/// Adds to `b` the check that the job's cursor is still `bytes`.
pub fn guard_cursor(b: &mut Batch, bytes: Option<Vec<u8>>) {
    b.expect(Space::Meta, CURSOR_KEY.to_vec(), bytes);
}

/// The job's cursor and its bytes as stored (`None`: no job ever).
fn load(store: &dyn Store, keys: &Keyring) -> Result<Option<(Cursor, Vec<u8>)>, RewrapError> {
    match store.get(Space::Meta, CURSOR_KEY)? {
        None => Ok(None),
        Some(b) => decode(Some(keys), &b)
            .map(|c| Some((c, b)))
            .ok_or(RewrapError::Corrupt),
    }
}

/// The version no stored value is below, as a fenced job that finished
/// with nothing left behind proved it (it moved every value under an older
/// version, and nothing writes under those any more). Sealed with the
/// records key and bound to its row: a forged, moved or clear proof is no
/// proof. A true proof stays true, so an older one written back only
/// proves less.
pub fn proven_floor(store: &dyn Store, keys: &Keyring) -> Result<Option<u32>, StoreError> {
    let Some(stored) = store.get(Space::Meta, PROOF_KEY)? else {
        return Ok(None);
    };
    Ok(keys
        .open_record(Space::Meta, PROOF_KEY, &stored)
        .ok()
        .and_then(|p| <[u8; 4]>::try_from(p.as_slice()).ok())
        .map(u32::from_be_bytes))
}

/// What [`fence`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fence {
    /// Nothing: no job, a finished or fenced one, or one whose target the
    /// keys in use have not reached.
    Nothing,
    /// Fenced the job (from the start).
    Fenced,
}

/// Fences the pending job before it scans: writes its cursor back as
/// fenced, from the start, through the commit queue, with the order to
/// raise the committer's floor to the job's target. Whatever requests
/// queued before is written first; any write sealed under a version below
/// the target that comes after is refused (the request runs again with
/// the keys of now). So no value under an older version lands behind the
/// cursor, with no assumption on how long a request may hold old keys.
/// A conflict (the job changed meanwhile) is an error to retry.
pub async fn fence(v: &Vault, keys: &Keyring) -> Result<Fence, RewrapError> {
    let Some((cursor, stored)) = load(v.store.as_ref(), keys)? else {
        return Ok(Fence::Nothing);
    };
    if cursor.done || cursor.fenced {
        return Ok(Fence::Nothing);
    }
    // A floor above the keys in use would refuse every collection. Such a
    // target (a cursor written back from elsewhere) is never run.
    if keys.meta().active < cursor.target {
        tracing::warn!(
            target_version = cursor.target,
            active = keys.meta().active,
            "The rewrap job targets a key version above the active one; it will not run"
        );
        return Ok(Fence::Nothing);
    }
    let target = cursor.target;
    let fenced = Cursor {
        fenced: true,
        next: String::new(),
        left_behind: 0,
        ..cursor
    };
    let mut b = Batch::default();
    b.expect(Space::Meta, CURSOR_KEY.to_vec(), Some(stored));
    b.put(Space::Meta, CURSOR_KEY.to_vec(), encode(keys, &fenced)?);
    b.raise_floor = Some(target);
    v.committer
        .commit(b, Vec::new())
        .await
        .map_err(|e| match e {
            crate::commit::CommitError::Store(e) => RewrapError::Store(e),
            _ => RewrapError::Commit,
        })?;
    Ok(Fence::Fenced)
}

/// The job's progress as the API shows it; `keys` `None` while sealed,
/// when a sealed cursor cannot be read (the job is only said to be
/// paused).
pub fn status(store: &dyn Store, keys: Option<&Keyring>) -> Result<RewrapStatus, RewrapError> {
    let Some(stored) = store.get(Space::Meta, CURSOR_KEY)? else {
        return Ok(RewrapStatus {
            state: "idle".into(),
            ..RewrapStatus::default()
        });
    };
    let sealed = keys.is_none();
    let floor = match keys {
        Some(k) => proven_floor(store, k)?,
        None => None,
    };
    Ok(match decode(keys, &stored) {
        None if sealed => RewrapStatus {
            state: "paused_sealed".into(),
            ..RewrapStatus::default()
        },
        None => return Err(RewrapError::Corrupt),
        Some(c) => RewrapStatus {
            state: if c.done {
                "done"
            } else if sealed {
                "paused_sealed"
            } else {
                "running"
            }
            .into(),
            target_version: c.target,
            scanned: c.scanned,
            rewrapped: c.rewrapped,
            left_behind: c.left_behind,
            fenced: c.fenced,
            proven_floor: floor,
        },
    })
}

/// One step's work, done but not yet written: the re-sealed values, each
/// guarded by compare-and-set, and the cursor after them.
struct Prepared {
    batch: Batch,
    cursor: Cursor,
    /// The cursor as this step writes it: what the next step is guarded on.
    stored: Vec<u8>,
    rewrapped: u64,
}

/// One step: re-seals up to `limit` values after the cursor and moves the
/// cursor, in one atomic write. Returns whether the job is finished and how
/// many values it re-sealed.
/// A conflicting concurrent write makes the step fail without effect; the
/// caller simply runs it again.
pub fn step(store: &dyn Store, keys: &Keyring, limit: usize) -> Result<(bool, u64), RewrapError> {
    run(store, keys, limit, 1)
}

/// Up to `steps` steps, each written while the next one is prepared, so
/// the write of one run of values (compare-and-set reads, the synced
/// batch) overlaps the crypto of the next. Each step is still its own
/// atomic write with its cursor; when one fails, the step prepared after
/// it is dropped unwritten and the error returned, and the next call
/// starts again from the durable cursor.
pub fn run(
    store: &dyn Store,
    keys: &Keyring,
    limit: usize,
    steps: usize,
) -> Result<(bool, u64), RewrapError> {
    run_while(store, keys, limit, steps, false, &|| true)
}

/// As [`run`], preparing a next step only while `go` says so: a seal stops
/// a run between two steps, so no step starts decrypting after it. With
/// `fenced_only`, a job not fenced yet (one started after the runner's
/// fence) is left for the next fence rather than run unfenced.
fn run_while(
    store: &dyn Store,
    keys: &Keyring,
    limit: usize,
    steps: usize,
    fenced_only: bool,
    go: &(dyn Fn() -> bool + Sync),
) -> Result<(bool, u64), RewrapError> {
    let Some((cursor, stored)) = load(store, keys)? else {
        return Ok((true, 0));
    };
    if cursor.done {
        return Ok((true, 0));
    }
    if fenced_only && !cursor.fenced {
        return Err(RewrapError::Unfenced);
    }
    let mut current = prepare(store, keys, cursor, stored, limit)?;
    let mut total = 0;
    for i in 1..=steps.max(1) {
        let Prepared {
            batch,
            cursor,
            stored,
            rewrapped,
        } = current;
        if cursor.done || i == steps.max(1) || !go() {
            store.write(batch)?;
            return Ok((cursor.done, total + rewrapped));
        }
        let (written, next) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || store.write(batch));
            let next = prepare(store, keys, cursor, stored, limit);
            (writer.join(), next)
        });
        written.unwrap_or(Err(StoreError::Conflict))?;
        total += rewrapped;
        current = next?;
    }
    Ok((false, total))
}

/// Scans the next run of values after `cursor` (stored as `started_from`)
/// and re-seals it.
fn prepare(
    store: &dyn Store,
    keys: &Keyring,
    mut cursor: Cursor,
    started_from: Vec<u8>,
    limit: usize,
) -> Result<Prepared, RewrapError> {
    // The step holds only while the cursor is still the one it started
    // from: a new job started meanwhile (or a step of another runner) wins,
    // and this one is dropped unwritten.
    let from = hex::decode(&cursor.next).map_err(|_| RewrapError::Corrupt)?;
    let rows = store.scan(Space::Values, &from, None, limit)?;
    let target = keys
        .version(cursor.target)
        .map_err(|_| RewrapError::Corrupt)?;
    // The crypto of a step is spread over the cores; each worker keeps its
    // own cache of subject keys and returns the re-sealed records.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = rows.len().div_ceil(workers).max(1);
    let version = cursor.target;
    // Workers return (index into rows, new record); the rows themselves are
    // then moved into the batch, not copied per value.
    let mut resealed: Vec<(usize, Vec<u8>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                scope.spawn(move || {
                    let mut out = reseal(store, keys, target, version, part);
                    for (i, _) in &mut out {
                        *i += n * chunk;
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    resealed.sort_unstable_by_key(|(i, _)| *i);
    let rewrapped = resealed.len() as u64;
    let needed = rows
        .iter()
        .filter_map(|(_, b)| Record::decode(b))
        .filter(|r| r.key_version < version || (r.key_version == version && r.tag.is_none()))
        .count() as u64;
    let scanned = rows.len();
    let last = rows.last().map(|(k, _)| k.clone());
    let mut batch = Batch::default();
    let mut news = resealed.into_iter().peekable();
    for (i, (key, old)) in rows.into_iter().enumerate() {
        if let Some((_, new)) = news.next_if(|(j, _)| *j == i) {
            batch.expect(Space::Values, key.clone(), Some(old));
            batch.put(Space::Values, key, new);
        }
    }
    cursor.scanned += scanned as u64;
    cursor.rewrapped += rewrapped;
    cursor.left_behind += needed.saturating_sub(rewrapped);
    match last {
        Some(mut next) if scanned == limit => {
            next.push(0);
            cursor.next = hex::encode(next);
        }
        _ => cursor.done = true,
    }
    if cursor.done && cursor.fenced && cursor.left_behind == 0 {
        let proof = keys
            .seal_record(Space::Meta, PROOF_KEY, &cursor.target.to_be_bytes())
            .map_err(|_| RewrapError::Corrupt)?;
        batch.put(Space::Meta, PROOF_KEY.to_vec(), proof);
    }
    let stored = encode(keys, &cursor)?;
    // What was opened, was opened under the keys of when the step began: a
    // minimum decryption version raised since refuses some of it, and a
    // step written anyway would re-seal refused values under the active
    // version, readable again. So the step holds only while the keys are
    // as they were; else it is dropped and the runner takes the new keys.
    keys.guard_state(&mut batch);
    batch.expect(Space::Meta, CURSOR_KEY.to_vec(), Some(started_from));
    batch.put(Space::Meta, CURSOR_KEY.to_vec(), stored.clone());
    Ok(Prepared {
        batch,
        cursor,
        stored,
        rewrapped,
    })
}

/// Re-seals the values of `rows` under a version older than `version`: (index in
/// `rows`, new record bytes) for each. A value that does not open
/// (tampered, its version refused, its subject erased) is left as it is:
/// rewrap never makes data readable again.
fn reseal<'r>(
    store: &dyn Store,
    keys: &Keyring,
    target: &crate::crypto::DataKey,
    version: u32,
    rows: &'r [(Vec<u8>, Vec<u8>)],
) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::with_capacity(rows.len());
    // Per subject (borrowed from the rows): its key and the target
    // version's value key; per subject and old version, the opening key.
    let mut subject_keys: HashMap<&'r str, Option<(SecretKey<32>, crate::crypto::DataKey)>> =
        HashMap::new();
    let mut old_keys: HashMap<(&'r str, u32), crate::crypto::DataKey> = HashMap::new();
    // Per subject: restricted by a pending erasure (read for records of an
    // older format, whose header could not say so).
    let mut restricted: HashMap<&'r str, Option<bool>> = HashMap::new();
    let mut aad = Vec::with_capacity(64);
    // The key-encryption key's cipher, set up once for the whole part.
    let mut kek = keys.subject_key_opener().ok();
    for (i, (key, bytes)) in rows.iter().enumerate() {
        let Some(mut rec) = Record::decode(bytes) else {
            continue;
        };
        let Some(subject) = subject_of_value_key(key) else {
            continue;
        };
        // Under a newer version already: a job that outlived a rotation
        // must not move values back to an older key. Under the target: done,
        // unless the record is of an older format (no token in its AAD, or
        // no tag on its header), which this moves to format 3.
        if rec.key_version > version || (rec.key_version == version && rec.tag.is_some()) {
            continue;
        }
        let Some(token) = key
            .get(..crate::crypto::TOKEN_BYTES)
            .and_then(|t| crate::crypto::TokenBytes::try_from(t).ok())
        else {
            continue;
        };
        // A header changed outside the vault is not tagged anew.
        if !rec.header_ok(keys.header_key(), subject, &token) {
            continue;
        }
        let entry = subject_keys.entry(subject).or_insert_with(|| {
            let sk = crate::subject_keys::load_with(store, kek.as_mut()?, subject).ok()??;
            let t = target.for_subject(&sk);
            Some((sk, t))
        });
        let Some((sk, target_key)) = entry.as_ref() else {
            continue;
        };
        let old_key = match old_keys.entry((subject, rec.key_version)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let Ok(old) = keys.version(rec.key_version) else {
                    continue;
                };
                e.insert(old.for_subject(sk))
            }
        };
        if rec.tag.is_some() {
            tagged_value_aad_into(&mut aad, subject, rec.class, rec.key_version, &token);
        } else {
            let old_token = rec.token_bound.then_some(&token);
            value_aad_into(&mut aad, subject, rec.class, rec.key_version, old_token);
        }
        let Ok(plain) = old_key.open(&aad, &rec.ciphertext) else {
            continue;
        };
        // Format 1 bound no token: a ciphertext moved under another token
        // of the subject and class would open here, and must not be bound
        // to the token it was moved under.
        if !rec.token_bound && !keys.is_token_of(rec.class, &plain, &token) {
            continue;
        }
        if rec.tag.is_none() {
            // Restricted before headers could carry it: it does from now on.
            // (A restriction written meanwhile changes the record, so this
            // step's write, guarded on it, fails and is made again.)
            let Some(r) = *restricted.entry(subject).or_insert_with(|| {
                crate::api::lifecycle::Standing::read(store, subject)
                    .ok()
                    .map(|s| s.restricted())
            }) else {
                continue;
            };
            rec.restricted = r;
        }
        tagged_value_aad_into(&mut aad, subject, rec.class, version, &token);
        let Ok(sealed) = target_key.seal(&aad, &plain) else {
            continue;
        };
        drop(plain);
        rec.ciphertext = sealed;
        rec.key_version = version;
        rec.token_bound = true;
        out.push((i, rec.encode_tagged(keys.header_key(), subject, &token)));
    }
    out
}

/// Runs the job whenever one is pending and the vault is unsealed, until
/// `stop`. Resumes a job left unfinished by a crash at start.
pub async fn supervise(v: Arc<Vault>, mut stop: watch::Receiver<bool>) {
    loop {
        run_pending(&v, &stop).await;
        tokio::select! {
            _ = v.rewrap.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn run_pending(v: &Arc<Vault>, stop: &watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Ok(keys) = v.keys.get() else { return };
        match fence(v, &keys).await {
            Ok(_) => {}
            Err(RewrapError::Store(StoreError::Conflict)) => {
                // Another writer of the cursor: try again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "Rewrap fence failed; will retry");
                break;
            }
        }
        let (store, limit) = (v.store.clone(), v.rewrap.batch);
        // Unthrottled, steps run in pipelined runs; with a pause configured,
        // one step at a time so the pause falls between every two.
        let steps = if v.rewrap.pause.is_zero() { 8 } else { 1 };
        let vault = v.clone();
        let job = tokio::task::spawn_blocking(move || {
            let unsealed = || !vault.keys.is_sealed();
            run_while(store.as_ref(), &keys, limit, steps, true, &unsealed)
        });
        v.metrics.rewrap_running.set(1);
        let result = job.await.unwrap_or(Err(RewrapError::Corrupt));
        if let Ok((_, n)) = result {
            v.metrics.rewrap_values.inc_by(n);
        }
        match result {
            Ok((true, _)) => break,
            Ok((false, _)) => {}
            // Started after the fence, or never to be fenced: the next
            // kick or tick fences it (or says why not).
            Err(RewrapError::Unfenced) => break,
            Err(RewrapError::Store(StoreError::Conflict)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Rewrap step failed; will retry");
                break;
            }
        }
        if !v.rewrap.pause.is_zero() {
            tokio::time::sleep(v.rewrap.pause).await;
        }
    }
    v.metrics.rewrap_running.set(0);
}

/// Counts stored values per key version (for `GET /v1/admin/keys`).
pub fn count_by_version(
    store: &dyn Store,
) -> Result<std::collections::BTreeMap<u32, u64>, StoreError> {
    count_by_version_until(store, None).map(|(counts, _)| counts)
}

/// As [`count_by_version`], stopping at `deadline` if one is given (a
/// large vault takes longer to count than a request may): the counts so
/// far, and whether they are complete.
pub fn count_by_version_until(
    store: &dyn Store,
    deadline: Option<std::time::Instant>,
) -> Result<(std::collections::BTreeMap<u32, u64>, bool), StoreError> {
    let mut counts = std::collections::BTreeMap::new();
    let mut from = Vec::new();
    loop {
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok((counts, false));
        }
        let rows = store.scan(Space::Values, &from, None, 4096)?;
        for (_, bytes) in &rows {
            if let Some(rec) = Record::decode(bytes) {
                *counts.entry(rec.key_version).or_insert(0) += 1;
            }
        }
        match rows.last() {
            Some((last, _)) if rows.len() == 4096 => {
                from = last.clone();
                from.push(0);
            }
            _ => return Ok((counts, true)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::classes::Class;
    use crate::crypto::value_aad;
    use crate::schema::value_key;
    use crate::secret::SecretKey;
    use crate::store::RocksStore;

    /// `n` values of `n` subjects under the active version, as format-1
    /// records (no token in the AAD), as a vault before format 2 wrote
    /// them.
    fn put_values(store: &dyn Store, keys: &Keyring, n: u32) {
        let mut b = Batch::default();
        let dk = keys.active().unwrap();
        for i in 0..n {
            let value = format!("1380013{i:04}");
            let token = keys.token_key().token(Class::Phone, &value);
            let subject = format!("s{i}");
            let (sk, create) = crate::subject_keys::create(keys, &subject).unwrap();
            b.absorb(create);
            let rec = Record {
                class: Class::Phone,
                key_version: dk.version(),
                collected_ms: 1,
                expires_ms: None,
                purpose: "notification".into(),
                ciphertext: dk
                    .for_subject(&sk)
                    .seal(
                        &value_aad(&subject, Class::Phone, dk.version(), None),
                        value.as_bytes(),
                    )
                    .unwrap(),
                token_bound: false,
                restricted: false,
                tag: None,
            };
            b.put(Space::Values, value_key(&token, &subject), rec.encode());
        }
        store.write(b).unwrap();
    }

    /// Every value opens under the version its record names; returns the
    /// count per version.
    fn check_all(store: &dyn Store, keys: &Keyring) -> std::collections::BTreeMap<u32, u64> {
        for (k, bytes) in store.scan(Space::Values, b"", None, 100_000).unwrap() {
            let rec = Record::decode(&bytes).unwrap();
            let subject = subject_of_value_key(&k).unwrap();
            let token =
                crate::crypto::TokenBytes::try_from(&k[..crate::crypto::TOKEN_BYTES]).unwrap();
            let aad = rec.aad(subject, &token);
            let plain = crate::subject_keys::value_key(store, keys, subject, rec.key_version)
                .unwrap()
                .unwrap()
                .open(&aad, &rec.ciphertext)
                .unwrap();
            assert_eq!(plain.len(), 11);
        }
        count_by_version(store).unwrap()
    }

    /// A cursor as `fence` leaves it: the job from the start, fenced.
    fn start_fenced(store: &dyn Store, keys: &Keyring, target: u32) {
        let c = Cursor {
            target,
            fenced: true,
            ..Cursor::default()
        };
        let mut b = Batch::default();
        b.put(Space::Meta, CURSOR_KEY.to_vec(), encode(keys, &c).unwrap());
        store.write(b).unwrap();
    }

    /// Only a fenced job that leaves nothing behind writes a proof, sealed
    /// for its row: a value that would not open (left behind) or a job run
    /// unfenced proves nothing, and a proof moved from another row or
    /// written in clear is none.
    #[test]
    fn only_a_fenced_job_that_leaves_nothing_behind_proves_a_floor() {
        let (_dir, store, k2) = rotated(11, 300);
        // Unfenced: moves everything, proves nothing.
        while !step(&store, &k2, 100).unwrap().0 {}
        assert_eq!(check_all(&store, &k2), [(2, 300)].into());
        assert_eq!(proven_floor(&store, &k2).unwrap(), None);
        // Fenced, with one value under version 1 that does not open.
        let (_dir, store, k2) = rotated(12, 300);
        let (key, bytes) = store
            .scan(Space::Values, b"", None, 1)
            .unwrap()
            .pop()
            .unwrap();
        let mut rec = Record::decode(&bytes).unwrap();
        rec.ciphertext[0] ^= 1;
        let mut b = Batch::default();
        b.put(Space::Values, key.clone(), rec.encode());
        store.write(b).unwrap();
        start_fenced(&store, &k2, 2);
        while !step(&store, &k2, 100).unwrap().0 {}
        assert_eq!(status(&store, Some(&k2)).unwrap().left_behind, 1);
        assert_eq!(proven_floor(&store, &k2).unwrap(), None);
        // Gone (erased, say), a fenced job again: the floor is proven.
        let mut b = Batch::default();
        b.delete(Space::Values, key);
        store.write(b).unwrap();
        start_fenced(&store, &k2, 2);
        while !step(&store, &k2, 100).unwrap().0 {}
        assert_eq!(proven_floor(&store, &k2).unwrap(), Some(2));
        let shown = status(&store, Some(&k2)).unwrap();
        assert!(shown.fenced && shown.proven_floor == Some(2), "{shown:?}");
        // Sealed: neither the cursor nor the proof can be read.
        let sealed = status(&store, None).unwrap();
        assert_eq!(
            (sealed.state.as_str(), sealed.proven_floor),
            ("paused_sealed", None)
        );
        // A cursor in clear, however it claims to be fenced (a forgery by
        // someone who can write the database but has no keys), is read
        // as never fenced: the job it describes proves nothing.
        let (_dir3, store3, k3) = rotated(13, 50);
        let forged = serde_json::to_vec(&Cursor {
            target: 2,
            next: "ff".repeat(40),
            fenced: true,
            ..Cursor::default()
        })
        .unwrap();
        let mut b = Batch::default();
        b.put(Space::Meta, CURSOR_KEY.to_vec(), forged);
        store3.write(b).unwrap();
        while !step(&store3, &k3, 100).unwrap().0 {}
        assert_eq!(proven_floor(&store3, &k3).unwrap(), None);
        // A proof sealed for another row, or in clear, is none.
        let moved = k2
            .seal_record(Space::Meta, CURSOR_KEY, &9u32.to_be_bytes())
            .unwrap();
        for forged in [moved, 9u32.to_be_bytes().to_vec()] {
            let mut b = Batch::default();
            b.put(Space::Meta, PROOF_KEY.to_vec(), forged);
            store.write(b).unwrap();
            assert_eq!(proven_floor(&store, &k2).unwrap(), None);
        }
    }

    /// The background runner runs only fenced jobs: an unfenced one is
    /// handed back (to be fenced at the next kick or tick), not stepped,
    /// however often it is asked, so a job that can never be fenced (its
    /// target above the keys in use) costs nothing.
    #[test]
    fn the_runner_hands_back_a_job_it_has_not_fenced() {
        let (_dir, store, k2) = rotated(14, 50);
        for _ in 0..3 {
            assert!(matches!(
                run_while(&store, &k2, 100, 8, true, &|| true),
                Err(RewrapError::Unfenced)
            ));
        }
        assert_eq!(status(&store, Some(&k2)).unwrap().scanned, 0);
        start_fenced(&store, &k2, 2);
        assert_eq!(
            run_while(&store, &k2, 100, 8, true, &|| true).unwrap(),
            (true, 50)
        );
    }

    #[test]
    fn rewrap_resumes_after_a_crash_where_the_last_step_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let root = SecretKey::<32>::from_slice(&[3; 32]).unwrap();
        {
            let store = RocksStore::open(dir.path()).unwrap();
            let k1 = Keyring::open(&root, &store).unwrap();
            put_values(&store, &k1, 2500);
            store.write(k1.rotation(2).unwrap().0).unwrap();
            let k2 = k1.reload(&store).unwrap();
            assert_eq!(status(&store, Some(&k2)).unwrap().state, "idle");
            store.write(Rewrap::start_batch(&k2, 2).unwrap()).unwrap();
            assert_eq!(step(&store, &k2, 1000).unwrap(), (false, 1000));
            let s = status(&store, Some(&k2)).unwrap();
            assert_eq!(
                (s.state.as_str(), s.scanned, s.rewrapped),
                ("running", 1000, 1000)
            );
            // The process dies here: nothing but the store survives.
        }
        let store = RocksStore::open(dir.path()).unwrap();
        let keys = Keyring::open(&root, &store).unwrap();
        assert_eq!(check_all(&store, &keys), [(1, 1500), (2, 1000)].into());
        let mut steps = 0;
        while !step(&store, &keys, 1000).unwrap().0 {
            steps += 1;
        }
        assert_eq!(steps, 1);
        let s = status(&store, Some(&keys)).unwrap();
        assert_eq!(
            (s.state.as_str(), s.scanned, s.rewrapped),
            ("done", 2500, 2500)
        );
        assert_eq!(check_all(&store, &keys), [(2, 2500)].into());
        // Done is done: another step changes nothing.
        assert_eq!(step(&store, &keys, 1000).unwrap(), (true, 0));
    }

    #[test]
    fn a_job_never_moves_values_to_an_older_version_nor_outlives_a_newer_job() {
        let (_dir, store, k2) = rotated(5, 300);
        assert_eq!(step(&store, &k2, 1000).unwrap(), (true, 300));
        // A job towards version 1 (one that outlived a rotation) leaves the
        // values under 2 alone.
        store.write(Rewrap::start_batch(&k2, 1).unwrap()).unwrap();
        assert_eq!(step(&store, &k2, 1000).unwrap(), (true, 0));
        assert_eq!(check_all(&store, &k2), [(2, 300)].into());

        // A step prepared before a new job started is not written over it.
        store.write(k2.rotation(3).unwrap().0).unwrap();
        let k3 = k2.reload(&store).unwrap();
        store.write(Rewrap::start_batch(&k3, 3).unwrap()).unwrap();
        let (cursor, stored) = load(&store, &k3).unwrap().unwrap();
        let stale = prepare(&store, &k3, cursor, stored, 100).unwrap();
        store.write(Rewrap::start_batch(&k3, 3).unwrap()).unwrap();
        let (mut restarted, _) = load(&store, &k3).unwrap().unwrap();
        restarted.scanned = 7;
        store
            .write({
                let mut b = Batch::default();
                b.put(
                    Space::Meta,
                    CURSOR_KEY.to_vec(),
                    encode(&k3, &restarted).unwrap(),
                );
                b
            })
            .unwrap();
        assert!(matches!(
            store.write(stale.batch),
            Err(StoreError::Conflict)
        ));
        assert_eq!(status(&store, Some(&k3)).unwrap().scanned, 7);
        assert_eq!(check_all(&store, &k3), [(2, 300)].into());
    }

    /// A store with `n` format-1 values under version 1, version 2 active
    /// and a job towards it started (the directory must outlive the store).
    /// A step prepared with the keys of before a new minimum decryption
    /// version (a runner that took its keyring before the officer's
    /// change) must not write: it would re-seal values of the refused
    /// version under the active one, readable again. It is refused; the
    /// next step, with the keys of now, leaves them as they are.
    #[test]
    fn a_step_with_keys_older_than_a_new_minimum_moves_nothing() {
        let (_dir, store, k2) = rotated(21, 50);
        store.write(k2.min_decryption(2).unwrap()).unwrap();
        assert!(matches!(
            step(&store, &k2, 100),
            Err(RewrapError::Store(StoreError::Conflict))
        ));
        assert_eq!(count_by_version(&store).unwrap(), [(1, 50)].into());
        let now = k2.reload(&store).unwrap();
        assert_eq!(step(&store, &now, 100).unwrap(), (true, 0));
        assert_eq!(count_by_version(&store).unwrap(), [(1, 50)].into());
    }

    fn rotated(seed: u8, n: u32) -> (tempfile::TempDir, RocksStore, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let root = SecretKey::<32>::from_slice(&[seed; 32]).unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let k1 = Keyring::open(&root, &store).unwrap();
        put_values(&store, &k1, n);
        store.write(k1.rotation(2).unwrap().0).unwrap();
        let k2 = k1.reload(&store).unwrap();
        store.write(Rewrap::start_batch(&k2, 2).unwrap()).unwrap();
        (dir, store, k2)
    }

    /// How many records bind their token in the AAD and tag their header
    /// (format 3), checking each tag.
    fn bound(store: &dyn Store, keys: &Keyring) -> usize {
        store
            .scan(Space::Values, b"", None, 100_000)
            .unwrap()
            .iter()
            .filter(|(k, b)| {
                let rec = Record::decode(b).unwrap();
                let token =
                    crate::crypto::TokenBytes::try_from(&k[..crate::crypto::TOKEN_BYTES]).unwrap();
                let subject = subject_of_value_key(k).unwrap();
                rec.token_bound
                    && rec.tag.is_some()
                    && rec.header_ok(keys.header_key(), subject, &token)
            })
            .count()
    }

    #[test]
    fn rewrap_moves_format_1_records_to_format_3_under_the_same_version() {
        let dir = tempfile::tempdir().unwrap();
        let root = SecretKey::<32>::from_slice(&[7; 32]).unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let keys = Keyring::open(&root, &store).unwrap();
        put_values(&store, &keys, 300);
        assert_eq!(bound(&store, &keys), 0);
        // A job towards the version they already have.
        store.write(Rewrap::start_batch(&keys, 1).unwrap()).unwrap();
        assert_eq!(step(&store, &keys, 1000).unwrap(), (true, 300));
        assert_eq!(bound(&store, &keys), 300);
        assert_eq!(check_all(&store, &keys), [(1, 300)].into());
        // Now a ciphertext moved under another token of the same subject
        // and class no longer opens.
        let rows = store.scan(Space::Values, b"", None, 2).unwrap();
        let (k0, b0) = &rows[0];
        let moved = [
            &[9u8; crate::crypto::TOKEN_BYTES][..],
            &k0[crate::crypto::TOKEN_BYTES..],
        ]
        .concat();
        let rec = Record::decode(b0).unwrap();
        let subject = subject_of_value_key(k0).unwrap();
        let key = crate::subject_keys::value_key(&store, &keys, subject, 1)
            .unwrap()
            .unwrap();
        let token =
            crate::crypto::TokenBytes::try_from(&moved[..crate::crypto::TOKEN_BYTES]).unwrap();
        assert!(key
            .open(&rec.aad(subject, &token), &rec.ciphertext)
            .is_err());
        // Done is done.
        assert_eq!(step(&store, &keys, 1000).unwrap(), (true, 0));
        // A tagged header changed outside the vault is not tagged anew:
        // a rewrap to the next version leaves that record as it is.
        let (k1, b1) = &rows[1];
        let mut changed = Record::decode(b1).unwrap();
        changed.expires_ms = Some(u64::MAX - 1);
        let mut b = Batch::default();
        b.put(Space::Values, k1.clone(), changed.encode());
        store.write(b).unwrap();
        assert_eq!(bound(&store, &keys), 299);
        store.write(keys.rotation(9).unwrap().0).unwrap();
        let keys = keys.reload(&store).unwrap();
        store.write(Rewrap::start_batch(&keys, 2).unwrap()).unwrap();
        assert_eq!(step(&store, &keys, 1000).unwrap(), (true, 299));
        assert_eq!(bound(&store, &keys), 299);
        assert_eq!(status(&store, Some(&keys)).unwrap().left_behind, 1);
        assert_eq!(count_by_version(&store).unwrap(), [(1, 1), (2, 299)].into());
        // Out of time before the first page: nothing counted, and said so.
        let (counts, complete) =
            count_by_version_until(&store, Some(std::time::Instant::now())).unwrap();
        assert_eq!((counts.len(), complete), (0, false));
    }

    #[test]
    fn a_format_1_ciphertext_moved_under_another_token_is_not_bound_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = SecretKey::<32>::from_slice(&[8; 32]).unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let keys = Keyring::open(&root, &store).unwrap();
        put_values(&store, &keys, 3);
        // s0's record copied under the token of another phone of s0: its
        // format-1 AAD does not name the token, so it would open there.
        let own = keys.token_key().token(Class::Phone, "13800130000");
        let other = keys.token_key().token(Class::Phone, "13800139999");
        let bytes = store
            .get(Space::Values, &value_key(&own, "s0"))
            .unwrap()
            .unwrap();
        let mut b = Batch::default();
        b.put(Space::Values, value_key(&other, "s0"), bytes);
        store.write(b).unwrap();
        store.write(Rewrap::start_batch(&keys, 1).unwrap()).unwrap();
        assert_eq!(step(&store, &keys, 1000).unwrap(), (true, 3));
        let moved = Record::decode(
            &store
                .get(Space::Values, &value_key(&other, "s0"))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert!(!moved.token_bound && moved.tag.is_none());
        assert_eq!(bound(&store, &keys), 3);
    }

    #[test]
    fn a_run_stops_between_steps_once_told_to() {
        let (_dir, store, k2) = rotated(6, 2500);
        // Sealed after the first step was prepared: it is written, and no
        // other step is prepared.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let go = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == usize::MAX;
        assert_eq!(
            run_while(&store, &k2, 1000, 8, false, &go).unwrap(),
            (false, 1000)
        );
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(check_all(&store, &k2), [(1, 1500), (2, 1000)].into());
    }

    #[test]
    fn a_pipelined_run_writes_every_step_with_its_cursor() {
        let (_dir, store, k2) = rotated(4, 2500);
        // Two steps of 1000 in one run: the cursor of the second is durable.
        assert_eq!(run(&store, &k2, 1000, 2).unwrap(), (false, 2000));
        let s = status(&store, Some(&k2)).unwrap();
        assert_eq!((s.scanned, s.rewrapped), (2000, 2000));
        assert_eq!(check_all(&store, &k2), [(1, 500), (2, 2000)].into());
        // The rest, with steps to spare.
        assert_eq!(run(&store, &k2, 1000, 8).unwrap(), (true, 500));
        assert_eq!(check_all(&store, &k2), [(2, 2500)].into());
        assert_eq!(status(&store, Some(&k2)).unwrap().state, "done");
    }
}
