//! A subject's data lifecycle: legal hold, the `account_closed` event,
//! correction, erasure by crypto-shredding, and the retention sweeper.
//! Invariants: every change and its audit event are one durable write,
//! guarded by compare-and-set on what it read, so a concurrent request sees
//! the data before or after, never half; a held subject is never erased or
//! swept.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use vault_sdk::wire::{CorrectionRequest, ErasureReceipt, SubjectEvent, SubjectStatus, TokenOut};

use super::{keyring, now_ms, parse_json, require_officer, ApiError, Ctx};
use crate::audit::Draft;
use crate::classes;
use crate::commit::CommitError;
use crate::crypto::{encode_token, tagged_value_aad, TokenBytes, TOKEN_BYTES};
use crate::keys::Keyring;
use crate::schema::{expiry_key, subject_key, valid_subject, value_key, Record, Tombstone};
use crate::server::Vault;
use crate::store::{scan_prefix, Batch, Rows, Space, Store, StoreError};
use crate::subject_keys;

/// Values of one subject read per scan page.
const VALUES_PAGE: usize = 10_000;
/// Most due values one sweeper tick handles.
const SWEEP_BATCH: usize = 1000;

fn standing_key(subject: &str) -> Vec<u8> {
    let mut k = b"standing/".to_vec();
    k.extend_from_slice(subject.as_bytes());
    k
}

/// What the lifecycle says of a subject, in one record (`standing/` in
/// `Meta`, so collecting values costs one read and one check): when its
/// account was first closed, and until when an erasure held back by a legal
/// retention period restricts it (PIPL Art. 47). Read with the bytes it was
/// read from, for a write to be guarded on: a closure or an erasure
/// committed meanwhile makes that write run again under the new standing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Standing {
    closed_ms: Option<u64>,
    restricted_until: Option<u64>,
    raw: Option<Vec<u8>>,
}

impl Standing {
    pub fn read(store: &dyn Store, subject: &str) -> Result<Standing, StoreError> {
        let raw = store.get(Space::Meta, &standing_key(subject))?;
        let field = |i: usize| {
            raw.as_deref()
                .and_then(|b| b.get(i..i + 8))
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .filter(|&t| t != 0)
        };
        Ok(Standing {
            closed_ms: field(0),
            restricted_until: field(8),
            raw,
        })
    }

    /// Whether an erasure is pending for the subject: it takes no new
    /// values until the sweeper completes the erasure.
    pub fn restricted(&self) -> bool {
        self.restricted_until.is_some()
    }

    /// When a value collected now must expire at the latest: the end of the
    /// post-closure period of a closed account, else never.
    pub fn latest_expiry(&self, v: &Vault) -> Option<u64> {
        let period =
            u64::try_from(v.policy.retention.after_account_closed.as_millis()).unwrap_or(u64::MAX);
        Some(self.closed_ms?.saturating_add(period))
    }

    /// Adds to `b` the check that holds while the standing is unchanged.
    pub fn guard(&self, b: &mut Batch, subject: &str) {
        b.expect(Space::Meta, standing_key(subject), self.raw.clone());
    }

    /// Adds to `b` the guard and what an erasure leaves of this standing:
    /// the account's closure, whose clock a value collected for the
    /// subject later still gets (the closure is not undone by erasing).
    fn erase(&self, b: &mut Batch, subject: &str) {
        match self.closed_ms {
            Some(closed) => self.write(b, subject, Some(closed), None),
            None => {
                self.guard(b, subject);
                b.delete(Space::Meta, standing_key(subject));
            }
        }
    }

    /// Adds to `b` the guard and the write of this standing as changed.
    /// A new restriction touches the subject: a release that read it
    /// unrestricted runs again.
    fn write(&self, b: &mut Batch, subject: &str, closed_ms: Option<u64>, until: Option<u64>) {
        self.guard(b, subject);
        if until.is_some() && until != self.restricted_until {
            b.touch(subject);
        }
        let mut bytes = closed_ms.unwrap_or(0).to_be_bytes().to_vec();
        bytes.extend_from_slice(&until.unwrap_or(0).to_be_bytes());
        b.put(Space::Meta, standing_key(subject), bytes);
    }
}

/// Until when (Unix ms) `subject` is restricted after an erasure request
/// that a legal retention period held back, if it still is at `now`.
pub fn restricted_until(
    store: &dyn Store,
    subject: &str,
    now: u64,
) -> Result<Option<u64>, StoreError> {
    Ok(Standing::read(store, subject)?
        .restricted_until
        .filter(|&until| until > now))
}

/// Whether a clock set at `now` to end at `end` may end a value before a
/// release that read it under its old clock is logged (within a request's
/// time): such a change touches the subject, so that release runs again.
pub(crate) fn ends_soon(v: &Vault, end: u64, now: u64) -> bool {
    let window = u64::try_from(v.limits.request_timeout.as_millis()).unwrap_or(u64::MAX);
    end <= now.saturating_add(window)
}

fn hold_key(subject: &str) -> Vec<u8> {
    let mut k = b"hold/".to_vec();
    k.extend_from_slice(subject.as_bytes());
    k
}

pub fn is_held(store: &dyn Store, subject: &str) -> Result<bool, StoreError> {
    Ok(store.get(Space::Meta, &hold_key(subject))?.is_some())
}

fn draft(ctx: &Ctx, action: &'static str, subject: &str, outcome: &'static str) -> Draft {
    Draft {
        request_id: ctx.request_id.clone(),
        caller: ctx.caller.to_string(),
        action,
        subject: Some(subject.to_string()),
        outcome,
        ..Draft::default()
    }
}

async fn commit(v: &Vault, batch: Batch, events: Vec<Draft>) -> Result<(), ApiError> {
    v.committer
        .commit(batch, events)
        .await
        .map_err(|e| match e {
            CommitError::Store(StoreError::Conflict) => ApiError::Conflict,
            e => {
                tracing::error!(error = %e, "Lifecycle write failed");
                ApiError::Unavailable
            }
        })
}

/// A batch that holds only while `subject`'s key is still `wrapped`.
fn guarded_on_key(subject: &str, wrapped: &[u8]) -> Batch {
    let mut b = Batch::default();
    b.expect(
        Space::SubjectKeys,
        subject.as_bytes().to_vec(),
        Some(wrapped.to_vec()),
    );
    b
}

/// `subject`'s key as stored (wrapped), with the guard in `b` that it is
/// still that key when `b` is written.
fn guarded_key(v: &Vault, b: &mut Batch, subject: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let wrapped = v
        .store
        .get(Space::SubjectKeys, subject.as_bytes())
        .map_err(|_| ApiError::Unavailable)?;
    b.expect(
        Space::SubjectKeys,
        subject.as_bytes().to_vec(),
        wrapped.clone(),
    );
    Ok(wrapped)
}

/// Runs `f` again when a concurrent write won its compare-and-set.
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Err(ApiError::Conflict) if attempt < 5 => attempt += 1,
            r => return r,
        }
    }
}

/// One stored value of a subject: its token, the stored bytes, the record.
pub(crate) type Row = (TokenBytes, Vec<u8>, Record);

/// Every value of `subject`, and apart from them (checked with `keys`)
/// those changed outside the vault: a header that fails its tag, or a
/// record of an older format (no tag to check) that does not open under
/// its own format's AAD, as a format-3 record stripped of its tag would
/// not. Nothing is released
/// from those, nothing re-tags what they say, and an erasure deletes them.
/// An older record whose key version is refused cannot be checked and
/// counts as it is. Without `keys` every value counts as checked.
pub(crate) fn values_of(
    store: &dyn Store,
    keys: Option<&Keyring>,
    subject: &str,
) -> Result<(Vec<Row>, Vec<Row>), ApiError> {
    let mut prefix = subject.as_bytes().to_vec();
    prefix.push(0);
    // Every value, in pages: an erasure or a closure that saw only the first
    // page would leave the rest without an end.
    let end = crate::store::prefix_end(&prefix);
    let mut rows = Vec::new();
    let mut from = prefix.clone();
    loop {
        let page = store
            .scan(Space::Subjects, &from, end.as_deref(), VALUES_PAGE)
            .map_err(|_| ApiError::Unavailable)?;
        let full = page.len() == VALUES_PAGE;
        if let Some((k, _)) = page.last() {
            from = k.clone();
            from.push(0);
        }
        rows.extend(page);
        if !full {
            break;
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut tampered = Vec::new();
    // Loaded for the first record of an older format, if any.
    let mut subject_key: Option<Option<crate::secret::SecretKey<32>>> = None;
    for (key, _) in rows {
        let Some(token) = key
            .get(prefix.len()..)
            .and_then(|t| TokenBytes::try_from(t).ok())
        else {
            continue;
        };
        let Some(bytes) = store
            .get(Space::Values, &value_key(&token, subject))
            .map_err(|_| ApiError::Unavailable)?
        else {
            continue;
        };
        if let Some(rec) = Record::decode(&bytes) {
            let ok = match keys {
                None => true,
                Some(keys) if rec.tag.is_some() => {
                    rec.header_ok(keys.header_key(), subject, &token)
                }
                Some(keys) => {
                    if subject_key.is_none() {
                        subject_key = Some(key_for_checks(store, keys, subject)?);
                    }
                    let sk = subject_key.as_ref().and_then(Option::as_ref);
                    older_record_ok(keys, sk, subject, &token, &rec)
                }
            };
            if !ok {
                tracing::error!("A stored value failed its integrity check");
                tampered.push((token, bytes, rec));
                continue;
            }
            out.push((token, bytes, rec));
        }
    }
    Ok((out, tampered))
}

/// Whether a record of format 1 or 2 is as the vault wrote it, as far as
/// can be told without a tag: it opens under its format's AAD (a format-3
/// record stripped of its tag does not), with its version's key even if
/// that version is below the minimum for decryption (nothing is
/// released here). A version with no key (a retired version is refused
/// while any value uses it) or a subject without a key cannot be a record
/// the vault keeps readable: `false`, so its header decides nothing.
/// Whether a format-1 record holds its token's value is not asked here: a
/// value stored under older normalization rules may not recompute to its
/// token, and what this decides is deletion; binding it to its token asks
/// (`to_format_3`, rewrap).
pub(crate) fn older_record_ok(
    keys: &Keyring,
    subject_key: Option<&crate::secret::SecretKey<32>>,
    subject: &str,
    token: &TokenBytes,
    rec: &Record,
) -> bool {
    let (Some(data), Some(sk)) = (keys.version_for_checks(rec.key_version), subject_key) else {
        return false;
    };
    let key = data.for_subject(sk);
    key.open(&rec.aad(subject, token), &rec.ciphertext).is_ok()
}

/// A subject's key for checking its older records: `None` when it has none
/// or its stored key does not unwrap (a damaged row is no key; an erasure
/// still destroys it).
fn key_for_checks(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
) -> Result<Option<crate::secret::SecretKey<32>>, ApiError> {
    match subject_keys::load(store, keys, subject) {
        Ok(k) => Ok(k),
        Err(subject_keys::SubjectKeyError::Key(_)) => Ok(None),
        Err(subject_keys::SubjectKeyError::Store(_)) => Err(ApiError::Unavailable),
    }
}

/// Deletes one value and its index entries, leaving a [`Tombstone`] so the
/// token reads `gone` for this subject (SPEC: erased, or past retention),
/// not `unknown`; the tombstone is indexed for the sweeper to remove when
/// it has been kept long enough.
fn delete_value(b: &mut Batch, token: &TokenBytes, subject: &str, rec: &Record, now: u64) {
    let tomb = Tombstone::new(rec.class, now);
    b.touch(subject);
    b.put(Space::Values, value_key(token, subject), tomb.encode());
    b.delete(Space::Subjects, subject_key(subject, token));
    if let Some(e) = rec.expires_ms {
        b.delete(Space::Expiry, expiry_key(e, token, subject));
    }
    b.put(
        Space::Expiry,
        expiry_key(tomb.keep_until, token, subject),
        Vec::new(),
    );
}

/// Adds to `b` the deletion of each of `rows`, each guarded on the bytes
/// read, and returns their tokens as an erasure receipt names them.
fn delete_read<'a>(
    b: &mut Batch,
    subject: &str,
    rows: impl Iterator<Item = &'a Row>,
    time_ms: u64,
) -> Vec<String> {
    rows.map(|(token, bytes, rec)| {
        b.expect(
            Space::Values,
            value_key(token, subject),
            Some(bytes.clone()),
        );
        delete_value(b, token, subject, rec, time_ms);
        encode_token(token)
    })
    .collect()
}

/// `PUT` / `DELETE /v1/subjects/{subject}/hold` (officers).
pub async fn hold(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    on: bool,
) -> Result<SubjectStatus, ApiError> {
    require_officer(ctx)?;
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let mut b = Batch::default();
    if on {
        b.put(
            Space::Meta,
            hold_key(subject),
            ctx.caller.as_bytes().to_vec(),
        );
    } else {
        b.delete(Space::Meta, hold_key(subject));
    }
    let outcome = if on { "hold_placed" } else { "hold_lifted" };
    commit(v, b, vec![draft(ctx, "legal_hold", subject, outcome)]).await?;
    Ok(SubjectStatus {
        subject: subject.to_string(),
        held: on,
        values_affected: 0,
    })
}

/// `POST /v1/subjects/{subject}/events` `{"event":"account_closed"}`:
/// every value whose clock has not started, or would run past the
/// post-closure period, now expires at the end of that period.
pub async fn event(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    body: &Bytes,
) -> Result<SubjectStatus, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let req: SubjectEvent = parse_json(body)?;
    if req.event != "account_closed" {
        return Err(ApiError::BadRequest("the only event is account_closed"));
    }
    // The first pass records the closure (its time, kept from the first
    // closure) and starts the clocks of the values it finds. A value written
    // by a request that read the markers before that commit, and committed
    // before it too, is not among them: a second pass catches it. After the
    // first commit no such value can land (collection is guarded on the
    // markers).
    // Clocks live in tagged headers: changing them needs the keys.
    let keys = keyring(v)?;
    let first = retrying(|| close_pass(v, &keys, Some(ctx), subject)).await?;
    let late = retrying(|| close_pass(v, &keys, None, subject)).await?;
    let held = is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    Ok(SubjectStatus {
        subject: subject.to_string(),
        held,
        values_affected: first + late,
    })
}

/// One pass of `account_closed`: every value of `subject` whose clock would
/// run past the post-closure period now expires at its end. Records the
/// closure and audits it when `ctx` is given; otherwise writes only if some
/// value needed a clock. Returns how many values it changed.
async fn close_pass(
    v: &Vault,
    keys: &Keyring,
    ctx: Option<&Ctx>,
    subject: &str,
) -> Result<u64, ApiError> {
    let standing = Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    let now = now_ms();
    let closed_at = standing.closed_ms.unwrap_or(now);
    let period =
        u64::try_from(v.policy.retention.after_account_closed.as_millis()).unwrap_or(u64::MAX);
    let until = closed_at.saturating_add(period);
    let mut b = Batch::default();
    let mut n = 0u64;
    // A subject restricted by a pending erasure keeps each value exactly to
    // its legal end, and its key until the last: a closure changes no clock
    // there (it is recorded all the same).
    let values = if standing.restricted() {
        Vec::new()
    } else {
        values_of(v.store.as_ref(), Some(keys), subject)?.0
    };
    for (token, bytes, mut rec) in values {
        // A value kept for its legal period keeps exactly that clock, even
        // should the subject's standing record have gone missing.
        if rec.restricted || rec.expires_ms.is_some_and(|e| e <= until) {
            continue;
        }
        b.expect(Space::Values, value_key(&token, subject), Some(bytes));
        if let Some(e) = rec.expires_ms {
            b.delete(Space::Expiry, expiry_key(e, &token, subject));
        }
        rec.expires_ms = Some(until);
        // A clock that may end before a release that read the old one is
        // logged: that release runs again (closures are rare; every one
        // that moves a clock touches).
        b.touch(subject);
        b.put(
            Space::Values,
            value_key(&token, subject),
            rec.encode_changed(keys.header_key(), subject, &token),
        );
        b.put(
            Space::Expiry,
            expiry_key(until, &token, subject),
            Vec::new(),
        );
        n += 1;
    }
    let events = match ctx {
        Some(ctx) => vec![draft(ctx, "account_closed", subject, "clocks_started")],
        None if n == 0 => return Ok(0),
        None => Vec::new(),
    };
    standing.write(&mut b, subject, Some(closed_at), standing.restricted_until);
    commit(v, b, events).await?;
    Ok(n)
}

/// `DELETE /v1/subjects/{subject}`: erasure. The subject's key is destroyed
/// with its values and index entries in one write, then purged from the
/// engine's files, so no surviving copy of a ciphertext can be opened.
pub async fn erase(v: &Vault, ctx: &Ctx, subject: &str) -> Result<ErasureReceipt, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    // The destroyed key's wrapped form, when there was one.
    let shredded: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);
    let receipt = retrying(|| async {
        if is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)? {
            commit(
                v,
                Batch::default(),
                vec![draft(ctx, "erasure", subject, "refused_legal_hold")],
            )
            .await?;
            return Err(ApiError::LegalHold);
        }
        let mut b = Batch::default();
        // Guards: the hold is still off and the key is still the one read.
        b.expect(Space::Meta, hold_key(subject), None);
        let wrapped = guarded_key(v, &mut b, subject)?;
        // A subject that has no key has nothing to shred (or purge).
        if let Some(w) = &wrapped {
            subject_keys::destroy(&mut b, subject, w);
        }
        if let Ok(mut s) = shredded.lock() {
            s.clone_from(&wrapped);
        }
        // Which values the law still requires is read from their headers,
        // so only checked ones count; the rest are deleted either way.
        let keys = keyring(v)?;
        let (checked, tampered) = values_of(v.store.as_ref(), Some(&keys), subject)?;
        let time_ms = now_ms();
        // PIPL Art. 47: while the law still requires keeping a value, the
        // subject is restricted instead, and erased when the period ends.
        let legal_end = checked
            .iter()
            .filter_map(|(_, _, rec)| legal_end(v, rec, time_ms))
            .max();
        if let Some(until) = legal_end {
            return restrict(
                v,
                &keys,
                Some(ctx),
                subject,
                (&checked, &tampered),
                (until, time_ms),
                None,
            )
            .await;
        }
        let values: Vec<&Row> = checked.iter().chain(&tampered).collect();
        let standing =
            Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
        standing.erase(&mut b, subject);
        let mut tokens = delete_read(&mut b, subject, values.iter().copied(), time_ms);
        let digest = erasure_digest(subject, time_ms, &mut tokens);
        let mut event = draft(ctx, "erasure", subject, "erased");
        event.reference = Some(digest.clone());
        commit(v, b, vec![event]).await?;
        Ok(ErasureReceipt {
            subject: subject.to_string(),
            values_erased: values.len() as u64,
            time_ms,
            digest,
            restricted_until: None,
        })
    })
    .await?;
    if let Some(until) = receipt.restricted_until {
        // Values that landed while the restriction was being written. The
        // restriction itself is committed and audited: if this pass cannot
        // be made (a hold placed meanwhile keeps everything as it is), the
        // receipt stands and the failure is logged.
        let late = retrying(|| async {
            if is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)? {
                return Ok(None);
            }
            let keys = keyring(v)?;
            let (checked, tampered) = values_of(v.store.as_ref(), Some(&keys), subject)?;
            restrict(
                v,
                &keys,
                None,
                subject,
                (&checked, &tampered),
                (until, receipt.time_ms),
                None,
            )
            .await
            .map(Some)
        })
        .await;
        crate::shreds::record_logged(v).await;
        return Ok(match late {
            Ok(Some(late)) => ErasureReceipt {
                values_erased: receipt.values_erased + late.values_erased,
                restricted_until: late.restricted_until,
                ..receipt
            },
            Ok(None) => receipt,
            Err(e) => {
                tracing::error!(error = %e, "Restriction committed; its second pass failed");
                receipt
            }
        });
    }
    let destroyed = shredded.lock().ok().and_then(|mut s| s.take());
    let Some(wrapped) = destroyed else {
        return Ok(receipt);
    };
    // A collection that committed between the erasure's read of the values
    // and its write is not in the receipt: its value is sealed under the
    // key just destroyed, which tells it apart from a value collected
    // since (under a new key). Such values go now.
    let late = retrying(|| erase_late(v, ctx, subject, &wrapped, receipt.time_ms)).await;
    purge_subject_keys(v).await;
    // Last: its record is durable in the database already, and a log that
    // is slow to answer must not hold up the passes above.
    crate::shreds::record_logged(v).await;
    Ok(match late {
        Ok(n) => ErasureReceipt {
            values_erased: receipt.values_erased + n,
            ..receipt
        },
        Err(e) => {
            tracing::error!(error = %e, "Erasure committed; its second pass failed");
            receipt
        }
    })
}

/// At start, for a subject whose key the shred log says was destroyed
/// but which the database holds (restored from an older copy): destroys
/// it again, with every value and index entry of the subject (all sealed
/// under that key: a later key would have replaced it) and its standing,
/// and logs the erasure. A legal hold in the copy does not stop it: the
/// erasure was made, under the hold of its day. Needs no keys, so a vault
/// that starts sealed makes it too.
pub(crate) async fn erase_again(v: &Vault, subject: &str, wrapped: &[u8]) -> Result<(), ApiError> {
    retrying(|| async {
        let mut b = guarded_on_key(subject, wrapped);
        subject_keys::destroy(&mut b, subject, wrapped);
        let (checked, tampered) = values_of(v.store.as_ref(), None, subject)?;
        let time_ms = now_ms();
        let mut tokens = delete_read(&mut b, subject, checked.iter().chain(&tampered), time_ms);
        Standing::read(v.store.as_ref(), subject)
            .map_err(|_| ApiError::Unavailable)?
            .erase(&mut b, subject);
        let mut event = shred_log_event(subject, "erased_again");
        event.reference = Some(erasure_digest(subject, time_ms, &mut tokens));
        commit(v, b, vec![event]).await
    })
    .await
}

/// The audit event of what the shred log had done again at start.
fn shred_log_event(subject: &str, outcome: &'static str) -> Draft {
    Draft {
        request_id: "shred-log".into(),
        caller: "vault".into(),
        action: "erasure",
        subject: Some(subject.to_string()),
        outcome,
        ..Draft::default()
    }
}

/// Rows in `Meta` (`shred/redo/` and the subject; the restriction's end)
/// of restrictions the shred log brought back at start, whose values are
/// still to be dealt with: that needs the keys (headers are checked and
/// re-tagged), which a sealed vault does not have yet.
const REDO: &[u8] = b"shred/redo/";

/// At start, for a subject the shred log says an erasure restricted until
/// `until` (PIPL Art. 47), whose key the database holds: whether it did
/// something. A database that already holds the restriction (a plain
/// restart, or a copy taken after it) is left as it is: the sweeper ends
/// the restriction, under the holds it knows. A copy from before the
/// erasure request gets it again: when the period is over and no hold is
/// on, the erasure is made; otherwise the subject is restricted again at
/// once (its standing, which every release and collection reads; no keys
/// needed), logged, and a row is left for [`redo_restrictions`] to deal
/// with its values as the erasure did.
pub(crate) async fn restrict_again(
    v: &Vault,
    subject: &str,
    wrapped: &[u8],
    until: u64,
) -> Result<bool, ApiError> {
    let standing = Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    if standing.restricted_until.is_some() {
        return Ok(false);
    }
    let held = is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    if until <= now_ms() && !held {
        erase_again(v, subject, wrapped).await?;
        return Ok(true);
    }
    retrying(|| async {
        let mut b = guarded_on_key(subject, wrapped);
        let standing =
            Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
        // Without end until the values' pass sets it from the kept values:
        // a logged end that has passed (under a hold in the copy) or
        // passes while the pass waits (sealed, held) must not lift it.
        standing.write(&mut b, subject, standing.closed_ms, Some(u64::MAX));
        b.put(
            Space::Meta,
            [REDO, subject.as_bytes()].concat(),
            until.to_be_bytes().to_vec(),
        );
        let event = shred_log_event(subject, "restricted_again");
        commit(v, b, vec![event]).await
    })
    .await?;
    Ok(true)
}

/// The values' part of the restrictions [`restrict_again`] brought back,
/// once the keys are at hand (at start, or from the sweeper after an
/// unseal): the values no law requires now are erased and the kept ones
/// get their legal ends, as the erasure did, and the restriction lasts
/// until the last of those ends (not the logged one, which values
/// collected after the copy may have set), or the subject is erased when
/// the law requires nothing any more. Audited. A subject under a hold
/// waits for the hold to be lifted.
pub(crate) async fn redo_restrictions(v: &Vault) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Ok(keys) = v.keys.get() else {
        return;
    };
    let end = crate::store::prefix_end(REDO);
    let mut from = REDO.to_vec();
    loop {
        let rows = match v
            .store
            .scan(Space::Meta, &from, end.as_deref(), SWEEP_BATCH)
        {
            Ok(r) => r,
            Err(_) => return,
        };
        let full = rows.len() == SWEEP_BATCH;
        if let Some((k, _)) = rows.last() {
            from = k.clone();
            from.push(0);
        }
        for (k, val) in rows {
            let Some(subject) = k
                .get(REDO.len()..)
                .and_then(|s| std::str::from_utf8(s).ok())
            else {
                continue;
            };
            if let Err(e) = redo_one(v, &keys, subject, &k, &val).await {
                let now = now_ms();
                if now.saturating_sub(LAST.load(Ordering::Relaxed)) >= 60_000 {
                    LAST.store(now, Ordering::Relaxed);
                    tracing::error!(error = %e, "A restriction brought back from the shred log waits for its values' pass (logged at most once a minute)");
                }
            }
        }
        if !full {
            return;
        }
    }
}

async fn redo_one(
    v: &Vault,
    keys: &Keyring,
    subject: &str,
    row: &[u8],
    val: &[u8],
) -> Result<(), ApiError> {
    if is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)? {
        return Ok(());
    }
    retrying(|| async {
        let now = now_ms();
        let (checked, tampered) = values_of(v.store.as_ref(), Some(keys), subject)?;
        let last_end = checked
            .iter()
            .filter_map(|(_, _, rec)| legal_end(v, rec, now))
            .max();
        let standing =
            Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
        let mut b = Batch::default();
        b.expect(Space::Meta, row.to_vec(), Some(val.to_vec()));
        b.delete(Space::Meta, row.to_vec());
        let Some(until) = last_end else {
            // The law requires nothing any more: the erasure is made (a
            // subject left with no key and no value only loses its
            // restriction).
            let wrapped = v
                .store
                .get(Space::SubjectKeys, subject.as_bytes())
                .map_err(|_| ApiError::Unavailable)?;
            match wrapped {
                Some(w) => erase_again(v, subject, &w).await?,
                None => standing.erase(&mut b, subject),
            }
            return commit(v, b, Vec::new()).await;
        };
        // The restriction ends with the last kept value, in the write
        // that deals with the values.
        standing.write(&mut b, subject, standing.closed_ms, Some(until));
        let event = shred_log_event(subject, "values_erased_again");
        restrict(
            v,
            keys,
            None,
            subject,
            (&checked, &tampered),
            (until, now),
            Some((b, event)),
        )
        .await
        .map(|_| ())
    })
    .await
}

/// The values of `subject` still indexed that open under the destroyed key
/// `wrapped`, deleted and audited; how many.
async fn erase_late(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    wrapped: &[u8],
    time_ms: u64,
) -> Result<u64, ApiError> {
    // A hold placed since the erasure keeps even these (unreadable) rows.
    if is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)? {
        return Ok(0);
    }
    let keys = keyring(v)?;
    let (checked, _) = values_of(v.store.as_ref(), Some(&keys), subject)?;
    if checked.is_empty() {
        return Ok(0);
    }
    let old = keys
        .unwrap_subject_key(subject, wrapped)
        .map_err(|_| ApiError::Internal)?;
    let under_old = checked.iter().filter(|(token, _, rec)| {
        keys.version(rec.key_version)
            .ok()
            .map(|k| k.for_subject(&old))
            .is_some_and(|k| k.open(&rec.aad(subject, token), &rec.ciphertext).is_ok())
    });
    let mut b = Batch::default();
    b.expect(Space::Meta, hold_key(subject), None);
    let mut tokens = delete_read(&mut b, subject, under_old, time_ms);
    if tokens.is_empty() {
        return Ok(0);
    }
    let n = tokens.len() as u64;
    let mut event = draft(ctx, "erasure", subject, "erased");
    event.reference = Some(erasure_digest(subject, time_ms, &mut tokens));
    commit(v, b, vec![event]).await?;
    Ok(n)
}

/// Removes destroyed subject keys from the engine's files (logs and tables)
/// once their deletion is durable, then clears the mark that a purge is
/// due ([`subject_keys::PURGE_PENDING`]) unless a newer destruction set it
/// meanwhile. Whether a purge was made (or one begun after this was asked
/// covered it).
///
/// Purges are coalesced: each erasure waits for a purge that began after
/// its own deletion was written, and a burst of erasures shares one
/// purge (a flush and a compaction each) rather than queueing one apiece.
/// A purge that failed covers the erasures asked before it began too (they
/// would fail the same way, each rewriting the whole key space on a disk
/// short of room): its mark stays, and the sweeper tries again, backing
/// off. The turn to purge travels with the engine's work, so a request that
/// times out while its purge runs does not let a second one start beside it.
pub(crate) async fn purge_subject_keys(v: &Vault) -> bool {
    let ticket = v.purges.asked.fetch_add(1, Ordering::SeqCst) + 1;
    let turn = v.purges.done.clone().lock_owned().await;
    if *turn >= ticket {
        return true;
    }
    let upto = v.purges.asked.load(Ordering::SeqCst);
    let Some((made, mut turn)) = purge_now(v, turn).await else {
        return false;
    };
    *turn = upto;
    made
}

/// Erasures' key purges so far: asked for, and covered by one tried.
#[derive(Debug, Default)]
pub struct Purges {
    asked: std::sync::atomic::AtomicU64,
    done: Arc<tokio::sync::Mutex<u64>>,
}

/// One purge, holding `turn` until the engine's part is over: whether it
/// was made, and the turn back (`None` if the engine's task died).
async fn purge_now(
    v: &Vault,
    turn: tokio::sync::OwnedMutexGuard<u64>,
) -> Option<(bool, tokio::sync::OwnedMutexGuard<u64>)> {
    let store = v.store.clone();
    let (purged, turn) = tokio::task::spawn_blocking(move || {
        let purged = (|| {
            let mark = store.get(Space::Meta, subject_keys::PURGE_PENDING)?;
            store.purge(Space::SubjectKeys)?;
            Ok::<_, StoreError>(mark)
        })();
        (purged, turn)
    })
    .await
    .ok()?;
    let made = match purged {
        Ok(Some(mark)) => {
            let mut b = Batch::default();
            b.expect(
                Space::Meta,
                subject_keys::PURGE_PENDING.to_vec(),
                Some(mark),
            );
            b.delete(Space::Meta, subject_keys::PURGE_PENDING.to_vec());
            // A conflict means another destruction landed; its own purge
            // clears the mark.
            let _ = v.committer.commit(b, Vec::new()).await;
            true
        }
        Ok(None) => true,
        Err(_) => {
            // The key is deleted either way; its physical removal waits
            // for the sweeper's next try (or the next start).
            tracing::error!(
                "Purging erased subject keys failed; the sweeper tries again (every minute, backing off to every hour)"
            );
            false
        }
    };
    Some((made, turn))
}

/// At start: makes the purge a crash or a failure left undone.
pub async fn resume_purge(v: Arc<Vault>) {
    match v.store.get(Space::Meta, subject_keys::PURGE_PENDING) {
        Ok(Some(_)) => {
            tracing::info!("Purging subject keys erased before the last stop");
            purge_subject_keys(&v).await;
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "Cannot read whether a purge is due"),
    }
}

fn erasure_digest(subject: &str, time_ms: u64, tokens: &mut [String]) -> String {
    tokens.sort();
    let mut h = Sha256::new();
    h.update(b"vault/erasure/v1\0");
    h.update(subject.as_bytes());
    h.update(time_ms.to_be_bytes());
    for t in tokens.iter() {
        h.update(t.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Until when an erasure at `now` keeps `rec` because the law still
/// requires it: the end of its legal minimum retention, but never past the
/// value's own clock. An erasure request does not make a value live longer
/// than it would have without one, nor bring back one whose clock has run
/// out but which the sweeper has not deleted yet. `None` when nothing keeps
/// it: it is erased now.
fn legal_end(v: &Vault, rec: &Record, now: u64) -> Option<u64> {
    let min = v.policy.retention.legal_minimum(rec.class)?;
    let end = rec
        .collected_ms
        .saturating_add(u64::try_from(min.as_millis()).unwrap_or(u64::MAX));
    let end = rec.expires_ms.map_or(end, |clock| end.min(clock));
    (end > now).then_some(end)
}

/// The Art. 47 branch of erasure: marks the subject restricted until
/// `until` (the last legal end among its values); a value the law still
/// requires is kept until its own legal end, every other value is erased
/// now. The sweeper deletes the kept ones as their ends come, and destroys
/// the subject's key with the last. With `ctx`, the first pass: it writes
/// the marker and the receipt's event. Without, a later pass for values
/// that landed while the first was being written (after its commit, a
/// collection for the subject is refused).
async fn restrict(
    v: &Vault,
    keys: &Keyring,
    ctx: Option<&Ctx>,
    subject: &str,
    (values, tampered): (&[Row], &[Row]),
    (until, time_ms): (u64, u64),
    tail: Option<(Batch, Draft)>,
) -> Result<ErasureReceipt, ApiError> {
    let mut b = Batch::default();
    b.expect(Space::Meta, hold_key(subject), None);
    let mut tokens = Vec::with_capacity(values.len() + tampered.len());
    let mut erased = 0u64;
    // A value whose header was changed outside the vault tells nothing
    // about its legal period: it is deleted.
    for (token, bytes, rec) in tampered {
        tokens.push(encode_token(token));
        b.expect(
            Space::Values,
            value_key(token, subject),
            Some(bytes.clone()),
        );
        delete_value(&mut b, token, subject, rec, time_ms);
        erased += 1;
    }
    // Older records become format 3 here, so each kept value carries its
    // restriction in its tagged header.
    let subject_key = if values.iter().any(|(_, _, r)| r.tag.is_none()) {
        subject_keys::load(v.store.as_ref(), keys, subject).map_err(|_| ApiError::Unavailable)?
    } else {
        None
    };
    for (token, bytes, rec) in values {
        tokens.push(encode_token(token));
        let end = legal_end(v, rec, time_ms);
        // Done already: its end and its restriction set.
        if end.is_some() && rec.expires_ms == end && rec.restricted {
            continue;
        }
        b.expect(
            Space::Values,
            value_key(token, subject),
            Some(bytes.clone()),
        );
        let Some(end) = end else {
            delete_value(&mut b, token, subject, rec, time_ms);
            erased += 1;
            continue;
        };
        let mut rec = rec.clone();
        // One that cannot be moved (its key version refused, say) is kept
        // as it is, restricted by the standing record alone.
        let tagged =
            rec.tag.is_some() || to_format_3(keys, subject_key.as_ref(), subject, token, &mut rec);
        if let Some(e) = rec.expires_ms {
            b.delete(Space::Expiry, expiry_key(e, token, subject));
        }
        rec.expires_ms = Some(end);
        rec.restricted = tagged;
        let bytes = if tagged {
            rec.encode_tagged(keys.header_key(), subject, token)
        } else {
            rec.encode()
        };
        b.touch(subject);
        b.put(Space::Values, value_key(token, subject), bytes);
        b.put(Space::Expiry, expiry_key(end, token, subject), Vec::new());
    }
    let digest = erasure_digest(subject, time_ms, &mut tokens);
    // The restriction lasts until the last kept value's end: a value that
    // landed late may end after the first pass's `until`, and the key must
    // outlive it.
    let until = values
        .iter()
        .filter_map(|(_, _, rec)| legal_end(v, rec, time_ms))
        .fold(until, u64::max);
    let standing = Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    let mut events = match ctx {
        Some(ctx) => {
            standing.write(&mut b, subject, standing.closed_ms, Some(until));
            // In the shred log too, so a database restored from before
            // this erasure is restricted again at start.
            if let Some(w) = guarded_key(v, &mut b, subject)? {
                crate::shreds::mark_restricted(&mut b, subject, &w, until, time_ms);
            }
            let mut event = draft(ctx, "erasure", subject, "restricted");
            event.reference = Some(digest.clone());
            vec![event]
        }
        None => {
            if standing.restricted_until.is_some_and(|u| u < until) {
                standing.write(&mut b, subject, standing.closed_ms, Some(until));
            }
            Vec::new()
        }
    };
    // What the caller writes with it, in the same write; its event (with
    // this pass's digest) only when something was erased.
    if let Some((t, mut event)) = tail {
        b.ops.extend(t.ops);
        b.checks.extend(t.checks);
        b.touches.extend(t.touches);
        if erased > 0 {
            event.reference = Some(digest.clone());
            events.push(event);
        }
    }
    if ctx.is_some() || !b.ops.is_empty() {
        commit(v, b, events).await?;
    }
    Ok(ErasureReceipt {
        subject: subject.to_string(),
        values_erased: erased,
        time_ms,
        digest,
        restricted_until: Some(until),
    })
}

/// Re-seals a record of format 1 or 2 (read and checked by the caller)
/// under the tagged AAD of format 3, same key version, so its header can
/// carry a tag; `false` (the record unchanged) when it does not open, or
/// (format 1, no token in its AAD) holds another token's value.
fn to_format_3(
    keys: &Keyring,
    subject_key: Option<&crate::secret::SecretKey<32>>,
    subject: &str,
    token: &TokenBytes,
    rec: &mut Record,
) -> bool {
    let Some(key) = keys
        .version(rec.key_version)
        .ok()
        .zip(subject_key)
        .map(|(k, sk)| k.for_subject(sk))
    else {
        return false;
    };
    let Ok(plain) = key.open(&rec.aad(subject, token), &rec.ciphertext) else {
        return false;
    };
    if !rec.token_bound && !keys.is_token_of(rec.class, &plain, token) {
        return false;
    }
    let aad = tagged_value_aad(subject, rec.class, rec.key_version, token);
    let Ok(sealed) = key.seal(&aad, &plain) else {
        return false;
    };
    rec.ciphertext = sealed;
    rec.token_bound = true;
    rec.tag = Some([0; crate::crypto::HEADER_TAG_BYTES]);
    true
}

/// `PUT /v1/subjects/{subject}/tokens/{token}` `{"value":"..."}`:
/// correction. The new value gets its token; the old one is gone for this
/// subject.
pub async fn correct(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    token: &str,
    body: &Bytes,
) -> Result<TokenOut, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let req: CorrectionRequest = parse_json(body)?;
    // A correction collects a value: only an application may, and only
    // what it may collect (below). An officer never collects, and one that
    // could would get the token of a value of its choosing.
    if ctx.role != crate::policy::Role::App {
        let e = ApiError::CorrectionNotAllowed;
        return Err(super::refused(
            v,
            ctx,
            "correction",
            None,
            Some(subject),
            "purpose_not_allowed",
            e,
        )
        .await);
    }
    retrying(|| async {
        let keys = keyring(v)?;
        // Either style the vault issues (opaque, or format-preserving).
        let old_token = v
            .tokens
            .resolve(&keys, token)
            .ok_or(ApiError::NoSuchValue)?;
        // A hold keeps the data as it is; a subject restricted by a pending
        // erasure is only stored, no longer processed (PIPL Art. 47).
        if is_held(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)? {
            let e = ApiError::LegalHold;
            return Err(super::refused(
                v,
                ctx,
                "correction",
                None,
                Some(subject),
                "refused_legal_hold",
                e,
            )
            .await);
        }
        let standing =
            Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
        if standing.restricted() {
            let e = ApiError::SubjectRestricted;
            return Err(super::refused(
                v,
                ctx,
                "correction",
                None,
                Some(subject),
                "refused_restricted",
                e,
            )
            .await);
        }
        let now = now_ms();
        let key = value_key(&old_token, subject);
        let bytes = v
            .store
            .get(Space::Values, &key)
            .map_err(|_| ApiError::Unavailable)?
            .ok_or(ApiError::NoSuchValue)?;
        let old = Record::decode(&bytes).ok_or(ApiError::NoSuchValue)?;
        if !old.header_ok(keys.header_key(), subject, &old_token) {
            // Its clock and purpose would pass to the new value.
            tracing::error!("A stored value's header failed its integrity check; not corrected");
            return Err(ApiError::NoSuchValue);
        }
        if old.restricted {
            return Err(ApiError::SubjectRestricted);
        }
        if !old.is_live(now) {
            return Err(ApiError::NoSuchValue);
        }
        // The new value is collected as the old one was: for its purpose,
        // in its class. A caller that may not collect that (an app allowed
        // only IP addresses) would otherwise replace a resident ID, and
        // learn the token of any value it guesses.
        if !v.policy.may_collect(&ctx.caller, &old.purpose, old.class) {
            let e = ApiError::CorrectionNotAllowed;
            return Err(super::refused(
                v,
                ctx,
                "correction",
                Some(&old.purpose),
                Some(subject),
                "purpose_not_allowed",
                e,
            )
            .await);
        }
        let norm = classes::normalize(old.class, &req.value)
            .map_err(|reason| ApiError::InvalidValue { field: 0, reason })?;
        // The token tokenize would give the new value, in its class's style.
        let (new_token, shown) = v.tokens.issue(&keys, old.class, &norm);
        let loaded = subject_keys::load_cached(v.store.as_ref(), &keys, v.keys.cache(), subject)
            .map_err(|_| ApiError::Unavailable)?
            .ok_or(ApiError::NoSuchValue)?;
        let guard = loaded.guard(subject);
        let active = keys.active().map_err(|_| ApiError::Internal)?;
        let aad = tagged_value_aad(subject, old.class, active.version(), &new_token);
        let ciphertext = loaded
            .value_key(active)
            .seal(&aad, norm.value().as_bytes())
            .map_err(|_| ApiError::Internal)?;
        let mut rec = Record {
            class: old.class,
            key_version: active.version(),
            collected_ms: now,
            expires_ms: old.expires_ms,
            purpose: old.purpose.clone(),
            ciphertext,
            token_bound: true,
            restricted: false,
            tag: None,
        };
        let mut b = guard;
        b.expect(Space::Meta, hold_key(subject), None);
        standing.guard(&mut b, subject);
        b.expect(Space::Values, key.clone(), Some(bytes.clone()));
        delete_value(&mut b, &old_token, subject, &old, now);
        b.put(
            Space::Values,
            value_key(&new_token, subject),
            rec.encode_tagged(keys.header_key(), subject, &new_token),
        );
        b.put(
            Space::Subjects,
            subject_key(subject, &new_token),
            Vec::new(),
        );
        if let Some(e) = rec.expires_ms {
            b.put(
                Space::Expiry,
                expiry_key(e, &new_token, subject),
                Vec::new(),
            );
        }
        let mut event = draft(ctx, "correction", subject, "corrected");
        event.class = Some(old.class.as_str().to_string());
        event.token = Some(token.to_string());
        event.reference = Some(shown.clone());
        b.seals_under(active.version());
        commit(v, b, vec![event]).await?;
        Ok(TokenOut {
            class: old.class.as_str().to_string(),
            token: shown,
            flag: norm.flag().map(|f| f.as_str().to_string()),
        })
    })
    .await
}

/// Up to `SWEEP_BATCH` due entries of the expiry index (oldest first) whose
/// subjects are not held, and how many due entries of held subjects came
/// before the last of them. Held entries are passed over, however many:
/// a pass that stopped at the first `SWEEP_BATCH` due entries would find
/// only held ones once enough piled up, and never delete anything again.
fn due_entries(v: &Vault, upper: &[u8]) -> Result<(Rows, i64), ApiError> {
    let mut due = Vec::new();
    let mut held_entries = 0i64;
    let mut held: std::collections::HashMap<Vec<u8>, bool> = std::collections::HashMap::new();
    let mut from = Vec::new();
    // Entries passed over while sealed cost a read each: a pass stops
    // looking after this many (the next pass, an interval later, looks
    // again).
    let mut waiting = 0usize;
    while due.len() < SWEEP_BATCH && waiting < MAX_WAITING {
        let rows = v
            .store
            .scan(Space::Expiry, &from, Some(upper), SWEEP_BATCH)
            .map_err(|_| ApiError::Unavailable)?;
        let last_page = rows.len() < SWEEP_BATCH;
        if let Some((k, _)) = rows.last() {
            from = k.clone();
            from.push(0);
        }
        for (key, value) in rows {
            let subject = key.get(8 + TOKEN_BYTES..).unwrap_or_default();
            let is = match held.get(subject) {
                Some(h) => *h,
                None => {
                    let h = std::str::from_utf8(subject)
                        .ok()
                        .map(|s| is_held(v.store.as_ref(), s))
                        .transpose()
                        .map_err(|_| ApiError::Unavailable)?
                        .unwrap_or(false);
                    held.insert(subject.to_vec(), h);
                    h
                }
            };
            if is {
                held_entries += 1;
            } else if due.len() < SWEEP_BATCH && waiting < MAX_WAITING {
                if waits_for_keys(v, &key)? {
                    waiting += 1;
                } else {
                    due.push((key, value));
                }
            }
        }
        if last_page {
            break;
        }
    }
    Ok((due, held_entries))
}

/// An `Expiry` key's parts: the time, the token, the subject.
fn expiry_entry(key: &[u8]) -> Option<(u64, TokenBytes, &str)> {
    Some((
        u64::from_be_bytes(key.get(..8)?.try_into().ok()?),
        key.get(8..8 + TOKEN_BYTES)?.try_into().ok()?,
        std::str::from_utf8(key.get(8 + TOKEN_BYTES..)?).ok()?,
    ))
}

/// Most index entries one sealed sweep pass looks at and passes over.
const MAX_WAITING: usize = 10 * SWEEP_BATCH;

/// Whether the sweeper must pass over an index entry for now: the vault is
/// sealed and the entry's record has another clock, which only the keys
/// can tell apart from a clock changed outside the vault (see
/// `sweep_once`). Passed over rather than taken into the batch, so a pile
/// of them cannot stall the deletions behind it.
fn waits_for_keys(v: &Vault, key: &[u8]) -> Result<bool, ApiError> {
    if !v.keys.is_sealed() {
        return Ok(false);
    }
    let Some((exp, token, subject)) = expiry_entry(key) else {
        return Ok(false);
    };
    let current = v
        .store
        .get(Space::Values, &value_key(&token, subject))
        .map_err(|_| ApiError::Unavailable)?;
    Ok(current
        .as_deref()
        .and_then(Record::decode)
        .is_some_and(|rec| rec.expires_ms != Some(exp)))
}

/// One sweeper pass: handles up to `SWEEP_BATCH` due entries of the expiry
/// index, oldest first (no full scan): values whose time is up, tombstones
/// kept long enough, stale entries. Held subjects are passed over. Returns
/// how many entries it handled (a full batch: more may be due at once,
/// whether or not they were values).
pub async fn sweep_once(v: &Vault) -> Result<u64, ApiError> {
    // Anonymizing reads the values, so it waits while the vault is sealed.
    let anonymize = match v.config_on_expiry {
        crate::config::OnExpiry::Delete => None,
        crate::config::OnExpiry::Anonymize => match v.keys.get() {
            Ok(k) => Some(k),
            Err(_) => return Ok(0),
        },
    };
    let now = now_ms();
    let upper = now.saturating_add(1).to_be_bytes();
    let (due, left) = due_entries(v, &upper)?;
    // Due values this pass leaves behind: held subjects, or a full batch's
    // overflow (counted on the next pass, which follows at once).
    let full = due.len() >= SWEEP_BATCH;
    let handled = due.len() as u64;
    let oldest = due
        .first()
        .and_then(|(k, _)| k.get(..8))
        .and_then(|e| <[u8; 8]>::try_from(e).ok())
        .map(u64::from_be_bytes);
    v.metrics
        .sweep_lag_seconds
        .set(i64::try_from(oldest.map_or(0, |e| now.saturating_sub(e)) / 1000).unwrap_or(i64::MAX));
    // A value whose header fails its tag (its clock changed outside the
    // vault) is deleted when the index says it is due, whatever it says.
    let keys = v.keys.get().ok();
    // `None`: cannot tell now (sealed, or the store failed); the entry waits.
    let tampered = |rec: &Record, subject: &str, token: &TokenBytes| match keys.as_ref() {
        None => None,
        Some(k) if rec.tag.is_some() => Some(!rec.header_ok(k.header_key(), subject, token)),
        Some(k) => key_for_checks(v.store.as_ref(), k, subject)
            .ok()
            .map(|sk| !older_record_ok(k, sk.as_ref(), subject, token, rec)),
    };
    let mut stats: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut b = Batch::default();
    let mut events = Vec::new();
    let mut purged = 0u64;
    let mut destroyed = false;
    let mut unheld: std::collections::BTreeMap<String, Vec<TokenBytes>> =
        std::collections::BTreeMap::new();
    for (key, _) in due {
        let Some((exp, token, subject)) = expiry_entry(&key) else {
            continue;
        };
        let vk = value_key(&token, subject);
        let current = v
            .store
            .get(Space::Values, &vk)
            .map_err(|_| ApiError::Unavailable)?;
        match current.as_deref().and_then(Record::decode) {
            Some(rec)
                if rec.expires_ms == Some(exp)
                    || tampered(&rec, subject, &token).unwrap_or(false) =>
            {
                if let Some(keys) = &anonymize {
                    let plain =
                        subject_keys::value_key(v.store.as_ref(), keys, subject, rec.key_version)
                            .ok()
                            .flatten()
                            .and_then(|k| k.open(&rec.aad(subject, &token), &rec.ciphertext).ok())
                            .and_then(crate::crypto::into_text);
                    let general = plain
                        .map(|p| classes::generalize(rec.class, &p))
                        .unwrap_or_default();
                    *stats
                        .entry(format!("{}/{general}", rec.class.as_str()))
                        .or_default() += 1;
                }
                b.expect(Space::Values, vk, current.clone());
                // A hold placed since the entries were read wins: the pass
                // conflicts, and the next one passes the subject over.
                let swept = unheld.entry(subject.to_string()).or_insert_with(|| {
                    b.expect(Space::Meta, hold_key(subject), None);
                    Vec::new()
                });
                swept.push(token);
                delete_value(&mut b, &token, subject, &rec, now);
                // An erasure held back by a legal period completes now: the
                // key goes, and with it the restriction.
                let standing =
                    Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
                if standing.restricted_until.is_some_and(|until| until <= now) {
                    if let Some(w) = guarded_key(v, &mut b, subject)? {
                        subject_keys::destroy(&mut b, subject, &w);
                    }
                    standing.erase(&mut b, subject);
                    destroyed = true;
                }
                events.push(Draft {
                    request_id: "retention-sweeper".into(),
                    caller: "vault".into(),
                    action: "retention_purge",
                    subject: Some(subject.to_string()),
                    class: Some(rec.class.as_str().to_string()),
                    token: Some(encode_token(&token)),
                    outcome: "purged",
                    ..Draft::default()
                });
                purged += 1;
            }
            // A tombstone kept long enough goes, with its index entry.
            None if current
                .as_deref()
                .and_then(Tombstone::decode)
                .is_some_and(|t| t.keep_until == exp) =>
            {
                b.expect(Space::Values, vk.clone(), current.clone());
                b.delete(Space::Values, vk);
                b.delete(Space::Expiry, key);
            }
            // Sealed (or the store failing), a header whose clock differs
            // cannot be told from one changed outside the vault: its entry
            // waits rather than go, which would leave the value unswept.
            Some(rec) if tampered(&rec, subject, &token).is_none() => {}
            // The value was re-collected with another clock, or is gone:
            // only the stale index entry goes.
            _ => b.delete(Space::Expiry, key),
        }
    }
    for (subject, swept) in &unheld {
        destroyed |= shred_after_closure(v, &mut b, subject, swept, now)?;
    }
    v.metrics.retention_due.set(if full {
        i64::try_from(SWEEP_BATCH).unwrap_or(i64::MAX)
    } else {
        left
    });
    if b.ops.is_empty() {
        return Ok(0);
    }
    // The sweeper is the only writer of the counters: read, add, write.
    let mut anonymized = 0u64;
    for (k, n) in &stats {
        let key = [STATS_PREFIX, k.as_bytes()].concat();
        let cur = v
            .store
            .get(Space::Meta, &key)
            .map_err(|_| ApiError::Unavailable)?;
        let cur = cur
            .and_then(|c| <[u8; 8]>::try_from(c.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        b.put(Space::Meta, key, (cur + n).to_be_bytes().to_vec());
        anonymized += n;
    }
    // A conflict (a value re-collected meanwhile) is retried next pass
    // quietly; a storage failure is logged by the sweeper loop.
    commit(v, b, events).await?;
    v.metrics.retention_anonymized.inc_by(anonymized);
    v.metrics.retention_purged.inc_by(purged);
    if destroyed {
        // (The sweeper's next pass takes the shred log's records.)
        // As an immediate erasure does: the destroyed keys leave the
        // engine's files now, not at some later compaction.
        purge_subject_keys(v).await;
    }
    Ok(handled)
}

/// When a closed account's post-closure period is over and `swept` (this
/// pass's deletions of the subject) takes its last indexed value, adds the
/// destruction of its key to `b`, as an erasure does: the deleted values
/// are then unreadable in old files and backups too, not only gone from
/// the live view. Values with a longer legal period keep the key until the
/// pass that deletes the last of them. The closure stays: a value
/// collected later still gets its clock (and a new key).
fn shred_after_closure(
    v: &Vault,
    b: &mut Batch,
    subject: &str,
    swept: &[TokenBytes],
    now: u64,
) -> Result<bool, ApiError> {
    let standing = Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    // A restriction's end destroys the key on its own path.
    if standing.restricted() || standing.latest_expiry(v).is_none_or(|end| end > now) {
        return Ok(false);
    }
    let mut prefix = subject.as_bytes().to_vec();
    prefix.push(0);
    let end = crate::store::prefix_end(&prefix);
    let indexed = v
        .store
        .scan(Space::Subjects, &prefix, end.as_deref(), swept.len() + 1)
        .map_err(|_| ApiError::Unavailable)?;
    let all_swept = indexed.iter().all(|(k, _)| {
        k.get(prefix.len()..)
            .is_some_and(|t| swept.iter().any(|s| s.as_slice() == t))
    });
    if !all_swept {
        return Ok(false);
    }
    let Some(wrapped) = v
        .store
        .get(Space::SubjectKeys, subject.as_bytes())
        .map_err(|_| ApiError::Unavailable)?
    else {
        return Ok(false);
    };
    // Guards: the key and the standing are still the ones read.
    subject_keys::destroy(b, subject, &wrapped);
    b.expect(
        Space::SubjectKeys,
        subject.as_bytes().to_vec(),
        Some(wrapped),
    );
    standing.guard(b, subject);
    Ok(true)
}

const STATS_PREFIX: &[u8] = b"stats/";

/// `GET /v1/admin/stats/anonymized` (officers): what anonymization kept.
pub fn anonymized_stats(
    v: &Vault,
    ctx: &Ctx,
) -> Result<vault_sdk::wire::AnonymizedStats, ApiError> {
    require_officer(ctx)?;
    let rows = scan_prefix(v.store.as_ref(), Space::Meta, STATS_PREFIX, 100_000)
        .map_err(|_| ApiError::Unavailable)?;
    let entries = rows
        .into_iter()
        .filter_map(|(k, n)| {
            let name = std::str::from_utf8(k.get(STATS_PREFIX.len()..)?).ok()?;
            let (class, generalization) = name.split_once('/')?;
            let count = u64::from_be_bytes(<[u8; 8]>::try_from(n.as_slice()).ok()?);
            Some(vault_sdk::wire::AnonymizedCount {
                class: class.into(),
                generalization: generalization.into(),
                count,
            })
        })
        .collect();
    Ok(vault_sdk::wire::AnonymizedStats { entries })
}

/// How soon the sweeper tries a failed purge again, at first and at most.
const PURGE_RETRY_FIRST: Duration = Duration::from_secs(60);
const PURGE_RETRY_MAX: Duration = Duration::from_secs(3600);

/// Runs the sweeper every `interval` until `stop`.
pub async fn sweeper(
    v: Arc<Vault>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // A purge of erased keys that failed (its mark still set) is tried
    // again from here, backing off from a minute to an hour while it fails.
    let mut purge_retry = PURGE_RETRY_FIRST;
    let mut next_purge = std::time::Instant::now() + purge_retry;
    loop {
        // Unseal shares past their lifetime leave memory with the next
        // tick, not with the next share (the sweep needs the keys; this
        // runs sealed or not).
        if let Ok(mut c) = v.unseal.lock() {
            c.forget_lapsed(std::time::Instant::now());
        }
        if std::time::Instant::now() >= next_purge {
            let due = matches!(
                v.store.get(Space::Meta, subject_keys::PURGE_PENDING),
                Ok(Some(_))
            );
            // Backing off only while purges fail, not while erasures keep
            // setting the mark anew.
            purge_retry = if due && !purge_subject_keys(&v).await {
                (purge_retry * 2).min(PURGE_RETRY_MAX)
            } else {
                PURGE_RETRY_FIRST
            };
            next_purge = std::time::Instant::now() + purge_retry;
        }
        // Destroyed keys a failed append left out of the shred log, and
        // the values' part of restrictions it brought back at start.
        // On a task of its own: a log on storage that hangs holds that
        // task, not the sweeper.
        crate::shreds::spawn_recorder(&v);
        redo_restrictions(&v).await;
        match sweep_once(&v).await {
            // A full batch: more may be due at once.
            Ok(n) if n as usize >= SWEEP_BATCH => continue,
            Ok(_) | Err(ApiError::Conflict) => {}
            Err(e) => tracing::error!(error = %e, "Retention sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::classes::Class;
    use crate::store::MemoryStore;

    /// What makes a value unreleasable (its deletion, a new restriction,
    /// the key's destruction) touches the subject, so the committer
    /// refuses a release that read it before; what cannot (a guard, a
    /// closure's date, lifting the standing) does not.
    #[test]
    fn every_change_that_ends_a_release_touches_its_subject() {
        let tag = vec![crate::store::subject_tag("s1")];
        let rec = Record {
            class: Class::Phone,
            key_version: 1,
            collected_ms: 1,
            expires_ms: Some(5),
            purpose: "notification".into(),
            ciphertext: vec![0; 8],
            token_bound: true,
            restricted: false,
            tag: None,
        };
        let mut b = Batch::default();
        delete_value(&mut b, &[1; TOKEN_BYTES], "s1", &rec, 2);
        delete_value(&mut b, &[2; TOKEN_BYTES], "s1", &rec, 2);
        assert_eq!(b.touches, tag, "once per subject");
        let standing = Standing::default();
        let mut b = Batch::default();
        standing.guard(&mut b, "s1");
        standing.write(&mut b, "s1", Some(1), None);
        standing.erase(&mut b, "s1");
        assert!(b.touches.is_empty());
        standing.write(&mut b, "s1", Some(1), Some(9));
        assert_eq!(b.touches, tag);
        let restricted = Standing {
            restricted_until: Some(9),
            ..Standing::default()
        };
        let mut b = Batch::default();
        restricted.write(&mut b, "s1", Some(1), Some(9));
        assert!(b.touches.is_empty(), "the same restriction");
        let mut b = Batch::default();
        subject_keys::destroy(&mut b, "s1", b"wrapped");
        assert_eq!(b.touches, tag);
    }

    #[test]
    fn values_of_reads_every_value_past_one_page() {
        let store = MemoryStore::new();
        let rec = Record {
            class: Class::Phone,
            key_version: 1,
            collected_ms: 1,
            expires_ms: None,
            purpose: "notification".into(),
            ciphertext: vec![0; 8],
            token_bound: true,
            restricted: false,
            tag: None,
        }
        .encode();
        let n = VALUES_PAGE * 2 + 7;
        let mut b = Batch::default();
        for i in 0..n {
            let mut token = [0u8; TOKEN_BYTES];
            token[..8].copy_from_slice(&(i as u64).to_be_bytes());
            b.put(Space::Subjects, subject_key("s", &token), Vec::new());
            b.put(Space::Values, value_key(&token, "s"), rec.clone());
        }
        // A neighbour whose id extends this one's is not this subject.
        let other = [9u8; TOKEN_BYTES];
        b.put(Space::Subjects, subject_key("s2", &other), Vec::new());
        b.put(Space::Values, value_key(&other, "s2"), rec.clone());
        store.write(b).unwrap();
        assert_eq!(values_of(&store, None, "s").unwrap().0.len(), n);
        assert_eq!(values_of(&store, None, "s2").unwrap().0.len(), 1);
    }
}
