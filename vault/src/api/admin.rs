//! Officer key operations: status, rotate, minimum decryption version,
//! rewrap, seal and unseal. Invariants: only officers reach them; each
//! state change and its audit event are one durable write; every attempt,
//! failed unseals included, is audited; no answer carries key material or
//! says which share was wrong.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use vault_sdk::wire::{
    KeyVersion, KeysConfigRequest, KeysStatus, RetireRequest, RewrapStatus, UnsealRequest,
};

use super::{now_ms, parse_json, require_officer, ApiError, Ctx};
use crate::audit::Draft;
use crate::keys::{
    KeyError, Keyring, RootSource, UnsealMeta, RESUME_OFFICERS, SEAL_MARK, UNSEAL_SLOT,
};
use crate::rewrap::{self, Rewrap};
use crate::server::Vault;
use crate::shares::{Progress, ShareError};
use crate::store::{Batch, Space, StoreError};

fn draft(ctx: &Ctx, action: &'static str, outcome: &'static str) -> Draft {
    Draft {
        request_id: ctx.request_id.clone(),
        caller: ctx.caller.to_string(),
        action,
        outcome,
        ..Draft::default()
    }
}

async fn commit(v: &Vault, batch: Batch, event: Draft) -> Result<(), ApiError> {
    v.committer
        .commit(batch, vec![event])
        .await
        .map_err(|e| match e {
            crate::commit::CommitError::Store(StoreError::Conflict) => ApiError::Conflict,
            _ => ApiError::Unavailable,
        })
}

/// Records an officer action that changed nothing (a refused attempt).
async fn audit_only(
    v: &Vault,
    ctx: &Ctx,
    action: &'static str,
    outcome: &'static str,
) -> Result<(), ApiError> {
    commit(v, Batch::default(), draft(ctx, action, outcome)).await
}

/// The seal's event, which touches every subject: a release that read
/// (and decrypted) before it and reaches the log after it is refused, and
/// reads again into the sealed vault.
async fn audit_seal(v: &Vault, ctx: &Ctx) -> Result<(), ApiError> {
    let mut batch = Batch {
        touches_all: true,
        ..Batch::default()
    };
    // The vault starts sealed while this mark is there: a restart or a
    // crash does not undo the seal. Random, so an unseal that read an
    // older mark cannot clear this one.
    batch.put(
        Space::Meta,
        SEAL_MARK.to_vec(),
        rand::random::<[u8; 16]>().to_vec(),
    );
    commit(v, batch, draft(ctx, "seal", "ok")).await
}

fn unseal_meta(v: &Vault) -> Result<Option<UnsealMeta>, ApiError> {
    match v
        .store
        .get(Space::Meta, UNSEAL_SLOT)
        .map_err(|_| ApiError::Unavailable)?
    {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|_| ApiError::Internal),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    crate::api::joined(tokio::task::spawn_blocking(f).await)
}

/// The stored values per key version, counted until a fifth of the
/// request's time before its deadline; whether the count is complete.
async fn count_in_time(
    v: &Arc<Vault>,
    ctx: &Ctx,
) -> Result<(std::collections::BTreeMap<u32, u64>, bool), ApiError> {
    let store = v.store.clone();
    let timeout = v.limits.request_timeout;
    let end = ctx
        .deadline
        .unwrap_or_else(|| std::time::Instant::now() + timeout);
    let cutoff = end.checked_sub(timeout / 5).unwrap_or(end);
    blocking(move || rewrap::count_by_version_until(store.as_ref(), Some(cutoff)))
        .await?
        .map_err(|_| ApiError::Unavailable)
}

/// `GET /v1/admin/keys`.
pub async fn keys_status(v: &Arc<Vault>, ctx: &Ctx) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    status(v, ctx).await
}

async fn status(v: &Arc<Vault>, ctx: &Ctx) -> Result<KeysStatus, ApiError> {
    status_counted(v, ctx, None).await
}

/// The key status, with the counts of values per version given (a complete
/// count the caller already made) or made now. Counting reads every stored
/// value: it stops a fifth of the request's time before the request's
/// deadline, so a key operation that already committed still answers
/// (its counts then partial, and said to be).
async fn status_counted(
    v: &Arc<Vault>,
    ctx: &Ctx,
    counted: Option<std::collections::BTreeMap<u32, u64>>,
) -> Result<KeysStatus, ApiError> {
    let threshold = unseal_meta(v)?.map_or(0, |m| usize::from(m.threshold));
    let Ok(keys) = v.keys.get() else {
        let (threshold, progress) = match (threshold, &v.root) {
            // Sealed by an officer, a root key from a file or a command:
            // the officers who asked to resume, of those needed.
            (0, RootSource::File(_) | RootSource::Command(_)) => (
                RESUME_OFFICERS,
                v.unseal.lock().map(|c| c.resumers()).unwrap_or(0),
            ),
            _ => (
                threshold,
                v.unseal.lock().map(|c| c.progress()).unwrap_or(0),
            ),
        };
        return Ok(KeysStatus {
            sealed: true,
            unseal_progress: progress,
            unseal_threshold: threshold,
            active_version: None,
            min_decryption_version: None,
            versions: Vec::new(),
            counts_partial: false,
            seal_unrecorded: v.seal_writes.load(Ordering::SeqCst) > 0,
        });
    };
    let (counts, complete) = match counted {
        Some(counts) => (counts, true),
        None => count_in_time(v, ctx).await?,
    };
    let meta = keys.meta();
    let versions = meta
        .versions
        .iter()
        .map(|(&version, &created_ms)| KeyVersion {
            version,
            created_ms,
            state: if version == meta.active {
                "active"
            } else if version < meta.min_decryption_version {
                "refused"
            } else {
                "decrypt_only"
            }
            .into(),
            values: counts.get(&version).copied().unwrap_or(0),
        })
        .collect();
    Ok(KeysStatus {
        sealed: false,
        unseal_progress: 0,
        unseal_threshold: threshold,
        active_version: Some(meta.active),
        min_decryption_version: Some(meta.min_decryption_version),
        versions,
        counts_partial: !complete,
        seal_unrecorded: false,
    })
}

/// Writes a key-state change made from the current keyring and installs
/// the keyring the store then holds, so every thread uses it at once.
async fn change_keys(
    v: &Arc<Vault>,
    ctx: &Ctx,
    action: &'static str,
    make: impl FnOnce(&Keyring) -> Result<Batch, KeyError> + Send + 'static,
) -> Result<(), ApiError> {
    // In a task of its own, which a request that runs out of time does
    // not cancel: a change that committed is always installed. Otherwise
    // requests would go on sealing under the old version, and every later
    // change would conflict, until a restart.
    let (v, ctx) = (v.clone(), ctx.clone());
    tokio::spawn(async move { change_keys_now(&v, &ctx, action, make).await })
        .await
        .unwrap_or(Err(ApiError::Internal))
}

async fn change_keys_now(
    v: &Arc<Vault>,
    ctx: &Ctx,
    action: &'static str,
    make: impl FnOnce(&Keyring) -> Result<Batch, KeyError>,
) -> Result<(), ApiError> {
    let _guard = v.key_ops.lock().await;
    // Detached as this runs, a change whose request has given up while
    // it waited for the lock is not made: what the request checked
    // before (a retirement's count) may no longer hold.
    if ctx.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
        return Err(ApiError::Timeout);
    }
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    let batch = match make(&keys) {
        Ok(b) => b,
        Err(KeyError::UnknownVersion(_)) => {
            audit_only(v, ctx, action, "refused").await?;
            return Err(ApiError::BadRequest(
                "no such key version (it must be 1..=active)",
            ));
        }
        Err(KeyError::TooRecent(_)) => {
            // Requests that began under the previous keyring may still
            // seal under this version for a moment.
            audit_only(v, ctx, action, "refused").await?;
            return Err(ApiError::KeyInUse);
        }
        Err(_) => return Err(ApiError::Internal),
    };
    let written = commit(v, batch, draft(ctx, action, "ok")).await;
    // Reloaded whatever the answer: a write that failed may still have
    // landed whole, and the keys in use must be the keys stored. After a
    // failure, an empty write first: the committer lets the store recover
    // (RocksDB reopens) before it, so the reload reads what landed.
    if written.is_err() {
        for _ in 0..3 {
            if v.committer
                .commit(Batch::default(), Vec::new())
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let store = v.store.clone();
    let reloaded = blocking(move || keys.reload(store.as_ref())).await;
    if let Ok(Ok(fresh)) = reloaded {
        v.metrics
            .key_active_version
            .set(i64::from(fresh.meta().active));
        // A change of the minimum that failed told the committer a minimum
        // the store may not hold: it takes the stored one again.
        if written.is_err() {
            let stored = Batch {
                raise_min_decryption: Some(fresh.meta().min_decryption_version),
                ..Batch::default()
            };
            let _ = v.committer.commit(stored, Vec::new()).await;
        }
        // A seal that raced this change wins: nothing is installed then.
        v.keys.replace_if_unsealed(fresh);
    } else if written.is_ok() {
        return Err(ApiError::Internal);
    }
    written
}

/// `POST /v1/admin/keys/rotate`.
pub async fn rotate(v: &Arc<Vault>, ctx: &Ctx) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    change_keys(v, ctx, "keys_rotate", |k| {
        k.rotation(now_ms()).map(|(b, _)| b)
    })
    .await?;
    status(v, ctx).await
}

/// `POST /v1/admin/keys/config` `{"min_decryption_version":N}`.
pub async fn configure(v: &Arc<Vault>, ctx: &Ctx, body: &Bytes) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    let req: KeysConfigRequest = parse_json(body)?;
    let min = req.min_decryption_version;
    // Every release that decrypted under a lower minimum and is logged
    // after the new one runs again, under it: read before (touches all),
    // or with the old keyring still installed (the committer's minimum).
    change_keys(v, ctx, "keys_min_decryption_version", move |k| {
        k.min_decryption(min).map(|b| Batch {
            touches_all: true,
            raise_min_decryption: Some(min),
            ..b
        })
    })
    .await?;
    status(v, ctx).await
}

/// `POST /v1/admin/keys/retire` `{"version":N}`: deletes a version no
/// stored value uses any more (after a rewrap), for good.
pub async fn retire(v: &Arc<Vault>, ctx: &Ctx, body: &Bytes) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    let req: RetireRequest = parse_json(body)?;
    // The job first, then the count: a rewrap job still moving values to
    // this version writes under it after the count, so the version is in
    // use until the job is done; and the retirement is written only while
    // the job is as read here (a job that moved on meanwhile may have
    // written under it behind the count).
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    // Only a version below the barrier's floor: a rotation installed
    // after it leaves writes under the version active here unrefused.
    if req.version >= keys.meta().active {
        audit_only(v, ctx, "keys_retire", "refused").await?;
        return Err(ApiError::BadRequest(
            "only a version below the active one can be retired",
        ));
    }
    // A barrier first: once it is dequeued, every write queued before it
    // is durable (so counted below), and the committer refuses any later
    // one sealed under a version older than the active one.
    let barrier = Batch {
        raise_floor: Some(keys.meta().active),
        ..Batch::default()
    };
    v.committer
        .commit(barrier, Vec::new())
        .await
        .map_err(|_| ApiError::Unavailable)?;
    let cursor = rewrap::cursor_bytes(v.store.as_ref()).map_err(|_| ApiError::Unavailable)?;
    let job = rewrap::status(v.store.as_ref(), Some(&keys)).map_err(|_| ApiError::Unavailable)?;
    // Below the floor a fenced rewrap proved (see `rewrap::proven_floor`)
    // no value is left and none is written: no count is needed, however
    // large the vault. Otherwise a complete count, finished in time to
    // answer: a retirement is never written by a request that then runs
    // out of time.
    let floor = rewrap::proven_floor(v.store.as_ref(), &keys).map_err(|_| ApiError::Unavailable)?;
    let mut counts = if floor.is_some_and(|f| req.version < f) {
        None
    } else {
        let (counts, complete) = count_in_time(v, ctx).await?;
        if !complete {
            return Err(ApiError::Timeout);
        }
        Some(counts)
    };
    let used = counts
        .as_ref()
        .is_some_and(|c| c.get(&req.version).copied().unwrap_or(0) > 0);
    if used || writes_under(&job, req.version) {
        audit_only(v, ctx, "keys_retire", "refused").await?;
        return Err(ApiError::KeyInUse);
    }
    let (grace, version) = (rotation_grace(v), req.version);
    change_keys(v, ctx, "keys_retire", move |k| {
        let mut b = k.retirement(version, now_ms(), grace)?;
        rewrap::guard_cursor(&mut b, cursor);
        Ok(b)
    })
    .await?;
    // The answer reuses a count just made: counting again could run the
    // request out of time after the retirement committed (without one, the
    // answer's count stops in time and says whether it is partial).
    if let Some(c) = counts.as_mut() {
        c.remove(&req.version);
    }
    status_counted(v, ctx, counts).await
}

/// Whether the rewrap job `job` may still write values under `version`.
fn writes_under(job: &RewrapStatus, version: u32) -> bool {
    job.target_version == version && !matches!(job.state.as_str(), "done" | "idle")
}

/// How long after a rotation requests begun before it may still seal under
/// the version it superseded: twice the request timeout.
fn rotation_grace(v: &Vault) -> u64 {
    u64::try_from(v.limits.request_timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
}

/// `POST /v1/admin/keys/rewrap`: starts (or restarts) re-encryption of
/// every value under the active version.
pub async fn rewrap_start(v: &Arc<Vault>, ctx: &Ctx) -> Result<RewrapStatus, ApiError> {
    require_officer(ctx)?;
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    let batch = Rewrap::start_batch(&keys, keys.meta().active).map_err(|_| ApiError::Internal)?;
    commit(v, batch, draft(ctx, "keys_rewrap_start", "ok")).await?;
    v.rewrap.kick();
    rewrap_status(v, ctx)
}

/// `GET /v1/admin/keys/rewrap`.
pub fn rewrap_status(v: &Vault, ctx: &Ctx) -> Result<RewrapStatus, ApiError> {
    require_officer(ctx)?;
    let keys = v.keys.get().ok();
    rewrap::status(v.store.as_ref(), keys.as_deref()).map_err(|_| ApiError::Unavailable)
}

/// `POST /v1/admin/seal`: no more decryption from this moment; the keyring
/// is dropped (and zeroized once the requests holding it finish).
/// It takes no lock and, in the HTTP layer, no handling place: a flood of
/// requests or a key operation stuck on storage cannot hold an officer's
/// seal back. A rotation or an unseal under way installs nothing after it.
pub async fn seal(v: &Arc<Vault>, ctx: &Ctx) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    // Counted before the keys go, so an unseal that saw this seal's count
    // also sees it pending, and does not clear a mark not yet written.
    let pending = SealWrite::begin(v);
    v.keys.seal();
    v.metrics.set_sealed(true);
    if let Ok(mut c) = v.unseal.lock() {
        c.reset();
    }
    tracing::warn!(caller = %ctx.caller, "Vault sealed by an officer");
    // Sealing happens even if the event cannot be written. Its write runs
    // in a task of its own, which goes on trying until it lands (so a
    // restart keeps the vault sealed) even if this request gives up.
    let (first, recorded) = tokio::sync::oneshot::channel();
    tokio::spawn(record_seal(v.clone(), ctx.clone(), pending, first));
    let recorded = recorded.await.unwrap_or(false);
    status(v, ctx).await.map(|mut st| {
        st.seal_unrecorded |= !recorded;
        st
    })
}

/// A seal not yet written to the database: while one is, unseals wait
/// (an unseal must not clear a mark before it is written).
struct SealWrite(Arc<Vault>);

impl SealWrite {
    fn begin(v: &Arc<Vault>) -> SealWrite {
        v.seal_writes.fetch_add(1, Ordering::SeqCst);
        SealWrite(v.clone())
    }
}

impl Drop for SealWrite {
    fn drop(&mut self) {
        self.0.seal_writes.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes the seal's event and mark, once; tells `first` whether that
/// worked, and if not tries again (every second, backing off to 30 s) until it does, or until a
/// later seal (which writes its own) or a restart.
async fn record_seal(
    v: Arc<Vault>,
    ctx: Ctx,
    pending: SealWrite,
    first: tokio::sync::oneshot::Sender<bool>,
) {
    let seals = v.keys.seals();
    let mut first = Some(first);
    let mut wait = Duration::from_secs(1);
    loop {
        let ok = audit_seal(&v, &ctx).await.is_ok();
        if ok {
            // No longer pending before anyone hears it was recorded.
            drop(pending);
            if let Some(f) = first.take() {
                let _ = f.send(true);
            }
            return;
        }
        if let Some(f) = first.take() {
            let _ = f.send(false);
        }
        tracing::error!(retry_in_s = wait.as_secs(), "The seal could not be written to the database: it holds, but a restart now would start unsealed; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
        if v.keys.seals() != seals {
            return;
        }
    }
}

/// `POST /v1/admin/unseal` `{"share":"vs1-..."}`, or `{"resume":true}`
/// for a vault whose root key comes from a file or a command (two
/// officers must ask; the root key is then read again).
pub async fn unseal(v: &Arc<Vault>, ctx: &Ctx, body: &Bytes) -> Result<KeysStatus, ApiError> {
    require_officer(ctx)?;
    let req: UnsealRequest = parse_json(body)?;
    let _guard = v.key_ops.lock().await;
    let seals = v.keys.seals();
    if !v.keys.is_sealed() {
        return status(v, ctx).await;
    }
    // A seal still being written: its mark must land before an unseal
    // may clear it.
    if v.seal_writes.load(Ordering::SeqCst) > 0 {
        return Err(ApiError::Conflict);
    }
    // What the seal left, read before the root: an unseal clears this
    // mark only, so a seal made meanwhile (a new mark) is not undone.
    let mark = v
        .store
        .get(Space::Meta, SEAL_MARK)
        .map_err(|_| ApiError::Unavailable)?;
    let root = if req.resume {
        if !req.share.is_empty() {
            return Err(ApiError::BadRequest("give a share or resume, not both"));
        }
        match resume_root(v, ctx, seals).await? {
            Some(root) => root,
            None => return status(v, ctx).await,
        }
    } else {
        match share_root(v, ctx, &req.share, seals).await? {
            Some(root) => root,
            None => return status(v, ctx).await,
        }
    };
    let store = v.store.clone();
    let opened = blocking(move || Keyring::open_existing(&root, store.as_ref())).await?;
    let keys = match opened {
        Ok(keys) => keys,
        Err(_) => {
            audit_only(v, ctx, "unseal", "failed").await?;
            return Err(ApiError::UnsealFailed);
        }
    };
    // The rest runs in a task of its own: once the unseal is logged and
    // the mark cleared, the keys are installed even if this request gives
    // up meanwhile.
    let task = tokio::spawn(install_unsealed(v.clone(), ctx.clone(), seals, mark, keys));
    crate::api::joined(task.await)??;
    status(v, ctx).await
}

/// Logs the unseal and clears the seal's mark (guarded on the mark read:
/// a seal that wrote a new one since wins), then installs `keys` unless
/// a seal came meanwhile.
async fn install_unsealed(
    v: Arc<Vault>,
    ctx: Ctx,
    seals: u64,
    mark: Option<Vec<u8>>,
    keys: Keyring,
) -> Result<(), ApiError> {
    let active = keys.meta().active;
    let mut batch = Batch::default();
    batch.expect(Space::Meta, SEAL_MARK.to_vec(), mark.clone());
    if mark.is_some() {
        batch.delete(Space::Meta, SEAL_MARK.to_vec());
    }
    let cleared = commit(&v, batch, draft(&ctx, "unseal", "unsealed")).await;
    if matches!(cleared, Err(ApiError::Conflict))
        || (cleared.is_ok() && !v.keys.install_unless_sealed_since(seals, keys))
    {
        // Sealed again while the keys were opening: the seal wins, and
        // unsealing starts over.
        if let Ok(mut c) = v.unseal.lock() {
            c.reset();
        }
        let _ = audit_only(&v, &ctx, "unseal", "refused_sealed").await;
        return Err(ApiError::Sealed);
    }
    cleared?;
    v.metrics.key_active_version.set(i64::from(active));
    v.metrics.set_sealed(false);
    // A seal that came right after the install set the gauge itself; one
    // between the install and the line above did not.
    if v.keys.is_sealed() {
        v.metrics.set_sealed(true);
    }
    tracing::info!("Vault unsealed");
    v.rewrap.kick();
    Ok(())
}

/// Runs `f` on the unseal collector under its lock, unless a seal came
/// after `seals` (the seal count the request began under): `None` then, as
/// what a request that began before a seal gives does not count after it.
fn under_seal<T>(
    v: &Vault,
    seals: u64,
    f: impl FnOnce(&mut crate::shares::Collector) -> T,
) -> Result<Option<T>, ApiError> {
    let mut c = v.unseal.lock().map_err(|_| ApiError::Internal)?;
    Ok((v.keys.seals() == seals).then(|| f(&mut c)))
}

/// Adds one officer's share: the root once the threshold is met, `None`
/// while more are needed.
async fn share_root(
    v: &Arc<Vault>,
    ctx: &Ctx,
    share: &str,
    seals: u64,
) -> Result<Option<crate::secret::SecretKey<32>>, ApiError> {
    let Some(meta) = unseal_meta(v)? else {
        return Err(ApiError::BadRequest(
            "this vault does not unseal with shares",
        ));
    };
    // The caller's name from its certificate: the threshold counts
    // officers, so a second share from the same one is refused. A share
    // is checked, then logged, then counted (only a logged share counts),
    // each under the collector's lock, which a seal takes to empty it: a
    // share given by a request that began before a seal does not count
    // after it. (The request holds `key_ops`: no other share comes between.)
    let refused = |e: ShareError| match e {
        ShareError::Duplicate => ApiError::InvalidShare("this share was already given"),
        ShareError::SameOfficer => ApiError::InvalidShare(
            "this officer has already given a share; the next must come from another officer",
        ),
        _ => ApiError::InvalidShare("this is not a share of this vault's key"),
    };
    let now = std::time::Instant::now;
    let checked = under_seal(v, seals, |c| {
        c.check(
            &ctx.caller,
            share,
            meta.threshold,
            &meta.fingerprints,
            now(),
        )
    })?;
    match checked {
        None => {
            let _ = audit_only(v, ctx, "unseal_share", "refused_sealed").await;
            return Err(ApiError::Sealed);
        }
        Some(Err(e)) => {
            audit_only(v, ctx, "unseal_share", "rejected").await?;
            return Err(refused(e));
        }
        Some(Ok(())) => audit_only(v, ctx, "unseal_share", "accepted").await?,
    }
    let added = under_seal(v, seals, |c| {
        c.add(
            &ctx.caller,
            share,
            meta.threshold,
            &meta.fingerprints,
            now(),
        )
    })?;
    match added {
        None => {
            let _ = audit_only(v, ctx, "unseal_share", "refused_sealed").await;
            Err(ApiError::Sealed)
        }
        Some(Ok(Progress::Need(..))) => Ok(None),
        Some(Ok(Progress::Complete(root))) => Ok(Some(root)),
        // Checked a moment ago: what fails now is rebuilding the root from
        // the complete set, and the set is gone (every share again).
        Some(Err(e)) => {
            audit_only(v, ctx, "unseal", "failed").await?;
            Err(refused(e))
        }
    }
}

/// Records one officer's ask to resume: once [`RESUME_OFFICERS`] distinct
/// officers have asked, the root key read again from its file or command;
/// `None` while more must ask.
async fn resume_root(
    v: &Arc<Vault>,
    ctx: &Ctx,
    seals: u64,
) -> Result<Option<crate::secret::SecretKey<32>>, ApiError> {
    match v.root {
        RootSource::File(_) | RootSource::Command(_) => {}
        RootSource::Shares => {
            return Err(ApiError::BadRequest(
                "this vault unseals with shares, not by resuming",
            ))
        }
        RootSource::Env => {
            return Err(ApiError::BadRequest(
                "this vault's root key comes from an environment variable, read once at start: stop it, clear the seal with `vault operator clear-seal`, and start it again",
            ))
        }
    }
    // The ask counts once it is in the log.
    audit_only(v, ctx, "unseal_resume", "accepted").await?;
    let asked = under_seal(v, seals, |c| {
        c.resume(&ctx.caller, std::time::Instant::now(), seals)
    })?;
    // Logged as accepted, but a seal came meanwhile: it did not count.
    let Some(asked) = asked else {
        let _ = audit_only(v, ctx, "unseal_resume", "refused_sealed").await;
        return Err(ApiError::Sealed);
    };
    if asked < RESUME_OFFICERS {
        return Ok(None);
    }
    if let Ok(mut c) = v.unseal.lock() {
        c.reset();
    }
    let source = v.root.clone();
    match blocking(move || source.read_again()).await? {
        Ok(root) => Ok(Some(root)),
        Err(e) => {
            tracing::error!(error = %e, "The root key could not be read again");
            audit_only(v, ctx, "unseal", "failed").await?;
            Err(ApiError::UnsealFailed)
        }
    }
}

/// Rotates the data key every `period_ms` (config `auto-rotate-period`),
/// measured from the active version's creation, so restarts do not reset
/// the clock.
pub async fn auto_rotate(
    v: Arc<Vault>,
    period_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ctx = Ctx {
        caller: "vault".into(),
        role: crate::policy::Role::Officer,
        request_id: "auto-rotate".into(),
        deadline: None,
    };
    loop {
        if let Ok(keys) = v.keys.get() {
            let meta = keys.meta();
            let created = meta.versions.get(&meta.active).copied().unwrap_or(0);
            if now_ms().saturating_sub(created) >= period_ms {
                if let Err(e) = change_keys(&v, &ctx, "keys_auto_rotate", |k| {
                    k.rotation(now_ms()).map(|(b, _)| b)
                })
                .await
                {
                    tracing::error!(error = %e, "Scheduled key rotation failed");
                }
            }
        }
        let wait = Duration::from_millis(period_ms.clamp(1_000, 60_000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A vault of the `vault dev` configuration after `edit`, over an
    /// in-memory store (the directory holds its TLS files and key).
    fn vault_with(
        edit: impl FnOnce(&mut crate::config::Config),
    ) -> (tempfile::TempDir, Arc<dyn crate::store::Store>, Arc<Vault>) {
        let dir = tempfile::tempdir().unwrap();
        let path = crate::dev::prepare(dir.path()).unwrap();
        let mut cfg = crate::config::Config::load(&path).unwrap();
        edit(&mut cfg);
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::new());
        let keys = crate::server::open_keys(&cfg, store.as_ref()).unwrap();
        let v = crate::server::build(&cfg, keys, store.clone()).unwrap();
        (dir, store, v)
    }

    /// An officer's request context with `deadline`.
    fn officer(deadline: Option<std::time::Instant>) -> Ctx {
        Ctx {
            caller: "officer".into(),
            role: crate::policy::Role::Officer,
            request_id: "t".into(),
            deadline,
        }
    }

    /// An officer's ask to resume made by a request that began before a
    /// seal does not count after it (the seal emptied the asks; this one
    /// must not land in the emptied set).
    #[tokio::test]
    async fn an_ask_begun_before_a_seal_does_not_count_after_it() {
        let (_dir, _, v) = vault_with(|_| {});
        let ctx = officer(None);
        seal(&v, &ctx).await.unwrap();
        let before = v.keys.seals();
        seal(&v, &ctx).await.unwrap();
        assert!(matches!(
            resume_root(&v, &ctx, before).await,
            Err(ApiError::Sealed)
        ));
        assert_eq!(v.unseal.lock().unwrap().resumers(), 0);
        let events = crate::audit::query(
            v.store.as_ref(),
            None,
            0,
            100,
            crate::audit::Deadline::NEVER,
        )
        .unwrap();
        assert!(events
            .iter()
            .any(|e| e.action == "unseal_resume" && e.outcome == "refused_sealed"));
        // Under the seal of now, it counts.
        assert!(resume_root(&v, &ctx, v.keys.seals())
            .await
            .unwrap()
            .is_none());
        assert_eq!(v.unseal.lock().unwrap().resumers(), 1);
    }

    /// A vault too large to count before the request runs out answers with
    /// the counts it has, said to be partial; one that can, in full.
    #[tokio::test]
    async fn counts_stop_before_the_request_runs_out() {
        let (_dir, _, v) = vault_with(|_| {});
        let mut ctx = officer(Some(std::time::Instant::now()));
        assert!(status(&v, &ctx).await.unwrap().counts_partial);
        ctx.deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(30));
        let full = status(&v, &ctx).await.unwrap();
        assert!(!full.counts_partial);
        assert_eq!(full.versions.len(), 1);
    }

    /// Retiring a version below the floor a fenced rewrap proved needs no
    /// count: it goes through on a vault too large to count in time (here,
    /// a request with no time left to count). Without that proof (no job,
    /// a job run unfenced, a forged proof, a version not below the floor)
    /// the count is needed, and there is no time for it. Once fenced, the
    /// committer refuses a write sealed under a version below the target,
    /// as a request still holding older keys would make.
    #[tokio::test]
    async fn a_proven_floor_lets_a_version_retire_without_a_count() {
        let (_dir, store, v) = vault_with(|cfg| {
            cfg.server.request_timeout_ms = 1_000;
            cfg.server.body_timeout_ms = Some(1_000);
        });
        let ctx = officer(None);
        let retire_now = |version: u32| {
            let v = v.clone();
            // Out of time to count (a count stops a fifth of the timeout
            // before the deadline), not yet out of time to answer.
            let ctx = Ctx {
                deadline: Some(std::time::Instant::now() + std::time::Duration::from_millis(150)),
                ..ctx.clone()
            };
            async move {
                let body = Bytes::from(format!("{{\"version\":{version}}}"));
                retire(&v, &ctx, &body).await
            }
        };
        let run_job = || async {
            let keys = v.keys.get().unwrap();
            while !rewrap::step(store.as_ref(), &keys, 100).unwrap().0 {}
        };
        let floor = || rewrap::proven_floor(store.as_ref(), &v.keys.get().unwrap()).unwrap();
        let old = v.keys.get().unwrap();
        let stale = |n: u8| {
            let mut b = Batch::default();
            b.put(crate::store::Space::Meta, vec![b'x', n], vec![n]);
            b.seals_under(old.meta().active);
            b
        };
        rotate(&v, &ctx).await.unwrap();
        rotate(&v, &ctx).await.unwrap();
        // A write sealed under version 1 (a request holding the keys from
        // before the rotations) still lands before any fence...
        v.committer.commit(stale(1), Vec::new()).await.unwrap();
        // A job run unfenced (as one of an older vault) moves values but
        // proves nothing.
        rewrap_start(&v, &ctx).await.unwrap();
        run_job().await;
        assert_eq!(floor(), None);
        rewrap_start(&v, &ctx).await.unwrap();
        let keys = v.keys.get().unwrap();
        assert_eq!(
            rewrap::fence(&v, &keys).await.unwrap(),
            rewrap::Fence::Fenced
        );
        assert_eq!(
            rewrap::fence(&v, &keys).await.unwrap(),
            rewrap::Fence::Nothing
        );
        // ...and is refused after it.
        assert!(matches!(
            v.committer.commit(stale(2), Vec::new()).await,
            Err(crate::commit::CommitError::Store(StoreError::Conflict))
        ));
        // Past the grace after a rotation that retire itself asks for.
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        run_job().await;
        assert_eq!(floor(), Some(3));
        let st = retire_now(1).await.unwrap();
        assert!(!st.versions.iter().any(|k| k.version == 1));
        // The floor's own version is the active one: never retired.
        assert!(matches!(retire_now(3).await, Err(ApiError::BadRequest(_))));
        // A forged proof (clear bytes, claiming a higher floor) is no proof.
        store
            .write({
                let mut b = Batch::default();
                b.put(
                    crate::store::Space::Meta,
                    b"rewrap/proof".to_vec(),
                    9u32.to_be_bytes().to_vec(),
                );
                b
            })
            .unwrap();
        assert_eq!(floor(), None);
        assert!(matches!(retire_now(2).await, Err(ApiError::Timeout)));
        let ctx_full = Ctx {
            deadline: Some(std::time::Instant::now() + std::time::Duration::from_secs(30)),
            ..ctx.clone()
        };
        assert!(keys_status(&v, &ctx_full).await.is_ok());
    }

    /// A key change whose request ran out of time while it waited for the
    /// key-operations lock is not made: it runs detached, and what its
    /// request checked before may no longer hold.
    #[tokio::test]
    async fn a_key_change_out_of_time_is_not_made() {
        let (_dir, _, v) = vault_with(|_| {});
        let late = officer(Some(std::time::Instant::now()));
        assert!(matches!(rotate(&v, &late).await, Err(ApiError::Timeout)));
        assert_eq!(v.keys.get().unwrap().meta().active, 1);
        // In time when it asked, out of time once the lock was free.
        let held = v.key_ops.lock().await;
        let waiting = {
            let (v, ctx) = (
                v.clone(),
                Ctx {
                    deadline: Some(
                        std::time::Instant::now() + std::time::Duration::from_millis(50),
                    ),
                    ..late.clone()
                },
            );
            tokio::spawn(async move { rotate(&v, &ctx).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        drop(held);
        assert!(matches!(waiting.await.unwrap(), Err(ApiError::Timeout)));
        assert_eq!(v.keys.get().unwrap().meta().active, 1);
        let in_time = Ctx {
            deadline: None,
            ..late
        };
        rotate(&v, &in_time).await.unwrap();
        assert_eq!(v.keys.get().unwrap().meta().active, 2);
    }

    #[test]
    fn a_running_or_paused_job_holds_its_target_version() {
        let job = |state: &str, target| RewrapStatus {
            state: state.into(),
            target_version: target,
            ..RewrapStatus::default()
        };
        assert!(writes_under(&job("running", 2), 2));
        assert!(writes_under(&job("paused_sealed", 2), 2));
        assert!(!writes_under(&job("running", 3), 2));
        assert!(!writes_under(&job("done", 2), 2));
        assert!(!writes_under(&job("idle", 0), 2));
    }
}
