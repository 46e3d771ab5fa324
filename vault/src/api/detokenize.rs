//! `POST /v1/detokenize`: release values for a purpose, as far as the policy
//! allows. Invariants: every outcome is in the audit log before the response
//! leaves, and when that append fails nothing is released (503).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use vault_sdk::wire::{
    Approval, DetokenizeRequest, DetokenizeResponse, LegalBasis, Reveal, Status, ValueOut,
};

use super::{keyring, now_ms, parse_json, ApiError, Ctx};
use crate::audit::Draft;
use crate::classes;
use crate::commit::CommitError;
use crate::crypto::TokenBytes;
use crate::keys::Keyring;
use crate::ledger;
use crate::policy::{PurposeInfo, Release, DATA_SUBJECT_REQUEST};
use crate::schema::{self, Record};
use crate::server::Vault;
use crate::store::{Batch, Space};
use crate::subject_keys;

/// Rows of one token read at a time (one per subject holding the value, or
/// a tombstone of one that did).
const MAX_HOLDERS: usize = 256;
/// Most pages read for one token: 65,536 holders and tombstones.
const MAX_PAGES: usize = 256;
/// Most live holders of one value whose standing, consent or approval is
/// looked at before the first one's refusal stands: bounds the work a
/// token of a very common value (a name) can cost.
const MAX_CHECKED: usize = 256;

pub async fn detokenize(
    v: &Vault,
    ctx: &Ctx,
    body: &Bytes,
) -> Result<DetokenizeResponse, ApiError> {
    let req: DetokenizeRequest = parse_json(body)?;
    let ask = Ask {
        action: "detokenize",
        purpose: req.purpose.as_deref(),
        reveal: req.reveal,
        legal_basis: req.legal_basis.as_ref(),
        classes: &[],
    };
    let values = release(v, ctx, &ask, &req.tokens).await?;
    Ok(DetokenizeResponse { values })
}

/// A request to release tokens, as detokenize and reidentify make it.
pub(crate) struct Ask<'a> {
    /// The audit event's action.
    pub action: &'static str,
    pub purpose: Option<&'a str>,
    pub reveal: Reveal,
    pub legal_basis: Option<&'a LegalBasis>,
    /// Per token, the class the caller named for it (reidentify's
    /// `[[class:token]]`), or none (detokenize): a token whose value is of
    /// another class is answered `unknown`, as one never issued, with
    /// nothing read, released or audited as released.
    pub classes: &'a [&'a str],
}

/// Resolves every token as far as the policy allows, audits every outcome
/// and only then returns them, in order.
pub(crate) async fn release(
    v: &Vault,
    ctx: &Ctx,
    ask: &Ask<'_>,
    tokens: &[String],
) -> Result<Vec<ValueOut>, ApiError> {
    let purpose = match ask.purpose {
        None | Some("") => return Err(ApiError::PurposeRequired),
        Some(p) => p,
    };
    let info = v.policy.purpose(purpose).ok_or(ApiError::UnknownPurpose)?;
    let usable = info.legal_exception || v.policy.may_release_any(&ctx.caller, purpose);
    if purpose == DATA_SUBJECT_REQUEST || !usable {
        let e = ApiError::PurposeNotAllowed;
        return Err(super::refused(
            v,
            ctx,
            ask.action,
            Some(purpose),
            None,
            "purpose_not_allowed",
            e,
        )
        .await);
    }
    if tokens.len() > v.limits.max_items {
        return Err(ApiError::TooManyItems(v.limits.max_items));
    }
    // The reference goes into every event of the request, for ever: it is
    // held to what an approval's own reference may be. (A blank one is
    // refused per token below, as no legal basis at all.)
    if let Some(b) = ask.legal_basis {
        let blank = b.reference.trim().is_empty();
        if (!blank && !super::printable(&b.reference, super::MAX_REFERENCE))
            || b.approval.len() > 64
        {
            let e = ApiError::BadRequest(
                "legal_basis: a reference of 1-128 printable characters and an approval id",
            );
            return Err(super::refused(
                v,
                ctx,
                ask.action,
                Some(purpose),
                None,
                "bad_legal_basis",
                e,
            )
            .await);
        }
    }
    // A legal exception's approval is looked up once for the request.
    let approval = match (ask.legal_basis, info.legal_exception) {
        (Some(basis), true) => {
            ledger::get_approval(v.store.as_ref(), &*keyring(v)?, &basis.approval)
                .map_err(|_| ApiError::Unavailable)?
        }
        _ => None,
    };
    let approval_used = match &approval {
        Some(a) => {
            ledger::approval_used(v.store.as_ref(), &a.id).map_err(|_| ApiError::Unavailable)?
        }
        None => false,
    };
    // What is released is what the store holds when its audit events are
    // written: a release that read a subject before an erasure, a
    // correction, a restriction or a withdrawal of consent was written, or
    // before a seal, is refused by the committer (`Stale`) and reads again,
    // from the epoch on (the keyring too: after a seal, 503 `sealed`).
    let mut stale = 0;
    let values = loop {
        let epoch = v.committer.epoch();
        let keys = keyring(v)?;
        let mut one = Lookup {
            v,
            ctx,
            keys: &keys,
            action: ask.action,
            purpose,
            info,
            reveal: ask.reveal,
            now: now_ms(),
            basis: ask.legal_basis,
            approval: approval.as_ref(),
            approval_used: std::cell::Cell::new(approval_used),
            consents: RefCell::new(HashMap::new()),
            restricted: RefCell::new(HashMap::new()),
            subject_keys: RefCell::new(HashMap::new()),
            released: RefCell::new(Vec::new()),
            classes: ask.classes,
        };
        let mut values = Vec::with_capacity(tokens.len());
        let mut audit = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            let (out, draft) = one.resolve(i, token)?;
            values.push(out);
            audit.push(draft);
        }
        if audit.is_empty() {
            return Ok(values);
        }
        let written = commit_release(
            v,
            ctx,
            &mut one,
            tokens,
            approval.as_ref(),
            epoch,
            values,
            audit,
        )
        .await?;
        match written {
            Some(values) => break values,
            None => stale_again(v, ctx, &mut stale)?,
        }
    };
    count(v, purpose, &values);
    Ok(values)
}

/// Times a release reads again after what it read changed.
pub(crate) const STALE_RETRIES: usize = 5;

/// Counts a release refused as stale; past [`STALE_RETRIES`] of them the
/// request gives up with 503 `overloaded` (what the subject's data is
/// going through, changes faster than it can be read; the SDK retries).
pub(crate) fn stale_again(v: &Vault, ctx: &Ctx, stale: &mut usize) -> Result<(), ApiError> {
    v.metrics.release_stale();
    // Refused because a write failed and the store is recovering: that is
    // what the caller hears, at once.
    if !v.metrics.store_writable() {
        return Err(ApiError::Unavailable);
    }
    *stale += 1;
    if *stale > STALE_RETRIES {
        tracing::warn!(request_id = %ctx.request_id, attempts = *stale, "A release kept reading data that changed before its write; gave up");
        return Err(ApiError::Overloaded);
    }
    Ok(())
}

/// Writes a release's audit events, guarded on what it read (`epoch` and
/// the subjects released) and on its approval: answers the values to
/// return, or `None` when what it read changed meanwhile.
#[allow(clippy::too_many_arguments)]
async fn commit_release(
    v: &Vault,
    ctx: &Ctx,
    one: &mut Lookup<'_>,
    tokens: &[String],
    approval: Option<&Approval>,
    epoch: u64,
    mut values: Vec<ValueOut>,
    audit: Vec<Draft>,
) -> Result<Option<Vec<ValueOut>>, ApiError> {
    // An approval is of one disclosure: the request that releases under it
    // uses it up, in the write of its audit events, guarded so that of two
    // requests racing on one approval only one releases.
    let mut batch = Batch {
        reads: one.reads(epoch),
        ..Batch::default()
    };
    let marked = approval.filter(|_| values.iter().any(|o| o.status == Status::Ok));
    if let Some(a) = marked {
        let used = ledger::approval_used_key(&a.id);
        batch.expect(Space::Meta, used.clone(), None);
        batch.put(Space::Meta, used, ctx.request_id.as_bytes().to_vec());
    }
    let failed = |e: CommitError| {
        tracing::error!(request_id = %ctx.request_id, error = %e, "Audit append failed; nothing released");
        ApiError::Unavailable
    };
    match v.committer.commit(batch, audit).await {
        Ok(_) => Ok(Some(values)),
        Err(CommitError::Stale) => Ok(None),
        // Another request used the approval first: this one is answered,
        // and audited, as under a used approval (nothing released).
        Err(CommitError::Store(crate::store::StoreError::Conflict)) if marked.is_some() => {
            one.approval_used.set(true);
            one.forget();
            let epoch = v.committer.epoch();
            values.clear();
            let mut audit = Vec::with_capacity(tokens.len());
            for (i, token) in tokens.iter().enumerate() {
                let (out, draft) = one.resolve(i, token)?;
                values.push(out);
                audit.push(draft);
            }
            let batch = Batch {
                reads: one.reads(epoch),
                ..Batch::default()
            };
            match v.committer.commit(batch, audit).await {
                Err(CommitError::Stale) => Ok(None),
                r => r.map(|()| Some(values)).map_err(failed),
            }
        }
        Err(e) => Err(failed(e)),
    }
}

fn count(v: &Vault, purpose: &str, values: &[ValueOut]) {
    let mut tally = [0u64; 5];
    for out in values {
        let i = match (out.status, out.masked) {
            (Status::Ok, false) => 0,
            (Status::Ok, true) => 1,
            (Status::Denied, _) => 2,
            (Status::Gone, _) => 3,
            (Status::Unknown, _) => 4,
        };
        if let Some(t) = tally.get_mut(i) {
            *t += 1;
        }
    }
    for (n, outcome) in tally
        .iter()
        .zip(["released", "masked", "denied", "gone", "unknown"])
    {
        if *n > 0 {
            v.metrics.released(purpose, outcome, *n);
        }
    }
}

/// What `Values` holds for a token.
enum Found {
    /// A live record and whose it is, with what the subject-bound checks
    /// (restriction, consent, approval) said for that holder.
    Live(String, Record, Result<(), &'static str>),
    /// Only dead records (past their expiry, not swept yet): the first one.
    Dead(String, Record),
    /// Only tombstones: every holder's value was erased or deleted.
    Erased(crate::classes::Class),
    /// Only a record whose tagged header fails (changed outside the
    /// vault): whose it is, nothing else taken from it.
    Tampered(String),
}

struct Lookup<'a> {
    v: &'a Vault,
    ctx: &'a Ctx,
    keys: &'a Arc<Keyring>,
    action: &'static str,
    purpose: &'a str,
    info: &'a PurposeInfo,
    reveal: Reveal,
    now: u64,
    basis: Option<&'a LegalBasis>,
    approval: Option<&'a Approval>,
    /// The approval served a disclosure already.
    approval_used: std::cell::Cell<bool>,
    /// Whether each subject seen so far has live consent to the purpose.
    consents: RefCell<HashMap<String, bool>>,
    /// Whether each subject seen so far is restricted (PIPL Art. 47).
    restricted: RefCell<HashMap<String, bool>>,
    /// Each subject's key, looked up once per request.
    subject_keys: RefCell<HashMap<String, Option<subject_keys::Loaded>>>,
    /// The subjects whose values were released so far (their tags), for
    /// the write to be guarded on.
    released: RefCell<Vec<u64>>,
    /// Per token, the class the caller expects (`Ask::classes`).
    classes: &'a [&'a str],
}

impl Lookup<'_> {
    /// What the values released so far were read under (reads begun at
    /// `epoch`), for their write to be guarded on; `None` when nothing was
    /// released.
    fn reads(&self, epoch: u64) -> Option<crate::store::Reads> {
        let subjects = self.released.take();
        (!subjects.is_empty()).then(|| crate::store::Reads {
            epoch,
            subjects,
            min_decryption: self.keys.meta().min_decryption_version,
        })
    }

    /// Drops what was read, for the request to read again.
    fn forget(&self) {
        self.consents.borrow_mut().clear();
        self.restricted.borrow_mut().clear();
        self.subject_keys.borrow_mut().clear();
        self.released.borrow_mut().clear();
    }

    /// One token's answer and audit event. A legal exception without a
    /// live approval for this caller and purpose is answered the same for
    /// every token, stored or not, and without looking it up (so not even
    /// the time taken tells): the eight purposes are open to every caller,
    /// and would otherwise be an oracle for which values are stored and of
    /// which class (with preserving tokens, every phone-shaped string is a
    /// token). The audit event records the refused attempt, without the
    /// token (which may be any string the caller sent).
    fn resolve(&self, i: usize, token: &str) -> Result<(ValueOut, Draft), ApiError> {
        let (out, mut draft) = self.answer(i, token)?;
        // Why a denial was made goes on record with it (a fixed word:
        // `consent_required`, `restricted`, ...), for the officers and the
        // subject's access log, not only for the caller.
        if out.status == Status::Denied {
            draft.reason.clone_from(&out.reason);
        }
        Ok((out, draft))
    }

    fn answer(&self, i: usize, token: &str) -> Result<(ValueOut, Draft), ApiError> {
        let mut out = ValueOut {
            token: token.to_string(),
            status: Status::Unknown,
            masked: false,
            class: None,
            value: None,
            reason: None,
        };
        let mut draft = Draft {
            request_id: self.ctx.request_id.clone(),
            caller: self.ctx.caller.to_string(),
            action: self.action,
            purpose: Some(self.purpose.to_string()),
            outcome: "unknown",
            ..Draft::default()
        };
        if self.info.legal_exception {
            let state = self.approval_state();
            // Only a legal exception's case reference is recorded, and only
            // when an officer's approval for this caller names it (used or
            // expired, it still does): any other reference is whatever the
            // caller sent (a name, an ID number), and the log keeps what it
            // holds for good.
            if matches!(state, Ok(()) | Err("approval_used" | "approval_expired")) {
                draft.reference = self.basis.map(|b| b.reference.clone());
                draft.approval = self.approval.map(|a| a.id.clone());
            }
            if let Err(why) = state {
                out.status = Status::Denied;
                out.reason = Some(why.to_string());
                draft.outcome = "denied";
                return Ok((out, draft));
            }
        }
        self.resolve_stored(token, self.classes.get(i).copied(), out, draft)
    }

    fn resolve_stored(
        &self,
        token: &str,
        expect: Option<&str>,
        mut out: ValueOut,
        mut draft: Draft,
    ) -> Result<(ValueOut, Draft), ApiError> {
        let Some(bytes) = self.v.tokens.resolve(self.keys, token) else {
            return Ok((out, draft));
        };
        let found = self.find(&bytes)?;
        // A value of another class than the caller named: as a token never
        // issued (reidentify would not put it back, so it is not released,
        // audited as released, or charged to an approval).
        if let (Some(want), Some(f)) = (expect, &found) {
            let class = match f {
                Found::Erased(c) => Some(*c),
                Found::Dead(_, r) | Found::Live(_, r, _) => Some(r.class),
                Found::Tampered(_) => None,
            };
            if class.is_some_and(|c| c.as_str() != want) {
                return Ok((out, draft));
            }
        }
        // A token that is not ours is recorded only by its shape: the audit
        // log must not become a store of whatever strings callers send. Nor
        // one that merely has our shape: where tokens preserve a format,
        // every well-formed phone or card number decodes, and a real number
        // sent here would otherwise land in the log for good.
        let (subject, record, holder) = match found {
            None => return Ok((out, draft)),
            Some(Found::Erased(class)) => {
                // Erased, corrected away or past retention: the class is
                // all that is known, and no subject is named.
                draft.token = Some(token.to_string());
                draft.class = Some(class.as_str().to_string());
                out.class = Some(class.as_str().to_string());
                out.status = Status::Gone;
                draft.outcome = "gone";
                return Ok((out, draft));
            }
            Some(Found::Dead(subject, record)) => {
                draft.token = Some(token.to_string());
                draft.class = Some(record.class.as_str().to_string());
                out.class = Some(record.class.as_str().to_string());
                draft.subject = Some(subject);
                out.status = Status::Gone;
                draft.outcome = "gone";
                return Ok((out, draft));
            }
            Some(Found::Tampered(subject)) => {
                // As a changed ciphertext: the answer of a token never
                // issued, and a loud event for the officers.
                tracing::error!(request_id = %self.ctx.request_id, "Stored value failed its integrity check");
                draft.token = Some(token.to_string());
                draft.subject = Some(subject);
                draft.outcome = "integrity_failure";
                return Ok((out, draft));
            }
            Some(Found::Live(subject, record, holder)) => (subject, record, holder),
        };
        draft.token = Some(token.to_string());
        draft.class = Some(record.class.as_str().to_string());
        out.class = Some(record.class.as_str().to_string());
        draft.subject = Some(subject.clone());
        let grant = holder.and_then(|()| self.class_grant(&record));
        let level = match self.reveal {
            Reveal::Full => grant,
            Reveal::Masked => grant.map(|g| g.min(Release::Masked)),
        };
        if let Err(reason) = level {
            out.status = Status::Denied;
            out.reason = Some(reason.to_string());
            draft.outcome = "denied";
            return Ok((out, draft));
        }
        let aad = record.aad(&subject, &bytes);
        let key = match self.keys.version(record.key_version) {
            Err(crate::keys::KeyError::BelowMinimum(_)) => {
                // Officers have retired this key version for decryption.
                out.status = Status::Denied;
                out.reason = Some("key_version_refused".into());
                draft.outcome = "denied";
                return Ok((out, draft));
            }
            k => k.ok(),
        };
        let sk = self.subject_key(&subject)?;
        if sk.is_none() && !self.still_stored(&bytes, &subject)? {
            // Erased between reading the record and its key: gone, as it
            // would have been a moment later. (A record that is still there
            // without a key was planted: the integrity path below.)
            out.status = Status::Gone;
            draft.outcome = "gone";
            return Ok((out, draft));
        }
        // A header changed outside the vault (its clock, purpose or
        // restriction) fails like a changed ciphertext.
        let header_ok = record.header_ok(self.keys.header_key(), &subject, &bytes);
        let key = key
            .zip(sk)
            .filter(|_| header_ok)
            .map(|(k, sk)| sk.value_key(k));
        let opened = key.and_then(|k| k.open(&aad, &record.ciphertext).ok());
        let Some(mut plain) = opened.and_then(crate::crypto::into_text) else {
            // Tampered, swapped or undecryptable: the same opaque answer as a
            // token we never issued, and a loud event for the officers.
            tracing::error!(request_id = %self.ctx.request_id, "Stored value failed its integrity check");
            out.class = None;
            draft.outcome = "integrity_failure";
            return Ok((out, draft));
        };
        out.status = Status::Ok;
        let tag = crate::store::subject_tag(&subject);
        if !self.released.borrow().contains(&tag) {
            self.released.borrow_mut().push(tag);
        }
        if level == Ok(Release::Masked) {
            out.masked = true;
            out.value = Some(classes::mask(record.class, &plain));
            draft.outcome = "released_masked";
        } else {
            // Moved out, not copied: the answer's own buffer is wiped with it.
            out.value = Some(std::mem::take(&mut *plain));
            draft.outcome = "released";
        }
        Ok((out, draft))
    }

    /// The record to answer a token from. One value held by several
    /// subjects has one token, and restriction, consent and approvals
    /// belong to subjects: the first live holder the policy allows is
    /// released (and named in the audit event), so the answer does not
    /// depend on which holder sorts first; if none does, the first live
    /// holder's refusal stands. Else the first dead record, else what an
    /// erased one left.
    /// Reads the token's rows a page at a time: a shared value (a common
    /// name) may have many tombstones of erased holders before a live one,
    /// for as long as they are kept. At most [`MAX_CHECKED`] live holders
    /// are asked.
    fn find(&self, token: &TokenBytes) -> Result<Option<Found>, ApiError> {
        let end = crate::store::prefix_end(token);
        let mut from = token.to_vec();
        let mut first_live = None;
        let mut checked = 0usize;
        let mut dead = None;
        let mut erased = None;
        let mut tampered = None;
        'pages: for _ in 0..MAX_PAGES {
            let rows = self
                .v
                .store
                .scan(Space::Values, &from, end.as_deref(), MAX_HOLDERS)
                .map_err(|_| ApiError::Unavailable)?;
            let full = rows.len() == MAX_HOLDERS;
            if let Some((k, _)) = rows.last() {
                from = k.clone();
                from.push(0);
            }
            for (key, bytes) in rows {
                let Some(rec) = Record::decode(&bytes) else {
                    if let Some(t) = schema::Tombstone::decode(&bytes) {
                        erased.get_or_insert(Found::Erased(t.class));
                    }
                    continue;
                };
                let subject = schema::subject_of_value_key(&key)
                    .unwrap_or_default()
                    .to_string();
                // A header changed outside the vault decides nothing: a
                // record is checked (`record_ok`) before it becomes an
                // answer, and one that fails is answered only if nothing
                // else is, as an integrity failure. Checked only then, so
                // a token with many holders costs a check per answer kept,
                // not per row read.
                let mut kept =
                    |found: &mut Option<Found>, f: &dyn Fn() -> Found| -> Result<(), ApiError> {
                        if found.is_none() {
                            if self.record_ok(&rec, &subject, token)? {
                                *found = Some(f());
                            } else {
                                tampered.get_or_insert(Found::Tampered(subject.clone()));
                            }
                        }
                        Ok(())
                    };
                if !rec.is_live(self.now) {
                    kept(&mut dead, &|| Found::Dead(subject.clone(), rec.clone()))?;
                    continue;
                }
                if checked == MAX_CHECKED {
                    break 'pages;
                }
                checked += 1;
                // The record's own restriction (tagged, so it holds even if
                // the subject's standing record went missing).
                let grant = if rec.restricted && !self.info.legal_exception {
                    Err("restricted")
                } else {
                    self.holder_grant(&subject)?
                };
                match grant {
                    Ok(()) => {
                        let mut allowed = None;
                        kept(&mut allowed, &|| {
                            Found::Live(subject.clone(), rec.clone(), Ok(()))
                        })?;
                        if allowed.is_some() {
                            return Ok(allowed);
                        }
                    }
                    Err(reason) => {
                        kept(&mut first_live, &|| {
                            Found::Live(subject.clone(), rec.clone(), Err(reason))
                        })?;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(first_live.or(dead).or(erased).or(tampered))
    }

    /// Whether the request's approval can serve this caller and purpose at
    /// all (which subjects it covers is asked per holder), or why not.
    fn approval_state(&self) -> Result<(), &'static str> {
        let basis = self
            .basis
            .filter(|b| !b.reference.trim().is_empty() && !b.approval.is_empty())
            .ok_or("legal_basis_required")?;
        match ledger::check_approval(
            self.approval,
            self.approval_used.get(),
            &self.ctx.caller,
            self.purpose,
            &basis.reference,
            "",
            self.now,
        ) {
            Ok(()) | Err("subject_not_covered") => Ok(()),
            Err(why) => Err(why),
        }
    }

    /// What binds the release of one holder's value: a legal exception
    /// needs the approval to cover that subject (restriction does not
    /// apply); any other purpose needs the subject unrestricted, and live
    /// consent where the purpose requires it.
    fn holder_grant(&self, subject: &str) -> Result<Result<(), &'static str>, ApiError> {
        if self.info.legal_exception {
            let reference = self.basis.map(|b| b.reference.as_str()).unwrap_or_default();
            return Ok(ledger::check_approval(
                self.approval,
                self.approval_used.get(),
                &self.ctx.caller,
                self.purpose,
                reference,
                subject,
                self.now,
            ));
        }
        if self.is_restricted(subject)? {
            // Erasure was asked while the law still requires keeping the
            // data: kept, but released for nothing but a legal exception.
            return Ok(Err("restricted"));
        }
        if self.info.requires_consent && !self.has_consent(subject)? {
            return Ok(Err("consent_required"));
        }
        Ok(Ok(()))
    }

    /// What the policy grants this caller for the record's class and the
    /// purpose: a legal exception with its approval, the whole value.
    fn class_grant(&self, record: &Record) -> Result<Release, &'static str> {
        if self.info.legal_exception {
            return Ok(Release::Full);
        }
        match self
            .v
            .policy
            .release(&self.ctx.caller, self.purpose, record.class)
        {
            Release::None => Err("purpose_not_allowed"),
            r => Ok(r),
        }
    }

    /// Whether a record is as the vault wrote it: its tag verifies, or (an
    /// older format, no tag) it opens under its own format's AAD, as a
    /// format-3 record stripped of its tag would not. A subject without a
    /// key (erased meanwhile) is left to the release path, which answers
    /// `gone`.
    fn record_ok(&self, rec: &Record, subject: &str, token: &TokenBytes) -> Result<bool, ApiError> {
        if rec.tag.is_some() {
            return Ok(rec.header_ok(self.keys.header_key(), subject, token));
        }
        let Some(sk) = self.subject_key(subject)? else {
            // Erased meanwhile (its record gone): the release path says
            // `gone`. Still stored without a key: planted.
            return Ok(!self.still_stored(token, subject)?);
        };
        Ok(self
            .keys
            .version_for_checks(rec.key_version)
            .is_some_and(|k| {
                sk.value_key(k)
                    .open(&rec.aad(subject, token), &rec.ciphertext)
                    .is_ok()
            }))
    }

    fn still_stored(&self, token: &TokenBytes, subject: &str) -> Result<bool, ApiError> {
        let key = schema::value_key(token, subject);
        Ok(self
            .v
            .store
            .get(Space::Values, &key)
            .map_err(|_| ApiError::Unavailable)?
            .is_some_and(|b| Record::decode(&b).is_some()))
    }

    /// The subject's key; `None` once it is erased.
    fn subject_key(&self, subject: &str) -> Result<Option<subject_keys::Loaded>, ApiError> {
        if let Some(known) = self.subject_keys.borrow().get(subject) {
            return Ok(known.clone());
        }
        let cache = self.v.keys.cache();
        let key = match subject_keys::load_cached(self.v.store.as_ref(), self.keys, cache, subject)
        {
            Ok(k) => k,
            Err(subject_keys::SubjectKeyError::Store(_)) => return Err(ApiError::Unavailable),
            Err(subject_keys::SubjectKeyError::Key(_)) => {
                tracing::error!(request_id = %self.ctx.request_id, "A subject key failed its integrity check");
                None
            }
        };
        self.subject_keys
            .borrow_mut()
            .insert(subject.to_string(), key.clone());
        Ok(key)
    }

    /// Whether `subject` is restricted, looked up once per subject per
    /// request (a token of a common value asks many holders, and a request
    /// may hold that token many times).
    fn is_restricted(&self, subject: &str) -> Result<bool, ApiError> {
        if let Some(&known) = self.restricted.borrow().get(subject) {
            return Ok(known);
        }
        let restricted =
            crate::api::lifecycle::restricted_until(self.v.store.as_ref(), subject, self.now)
                .map_err(|_| ApiError::Unavailable)?
                .is_some();
        self.restricted
            .borrow_mut()
            .insert(subject.to_string(), restricted);
        Ok(restricted)
    }

    /// Live consent of `subject` to this purpose, looked up once per subject
    /// per request.
    fn has_consent(&self, subject: &str) -> Result<bool, ApiError> {
        if let Some(&known) = self.consents.borrow().get(subject) {
            return Ok(known);
        }
        let newest =
            ledger::newest_consent(self.v.store.as_ref(), self.keys, subject, self.purpose)
                .map_err(|_| ApiError::Unavailable)?;
        let live = ledger::consent_is_live(newest.as_slice(), self.info.consent_since.as_deref());
        self.consents.borrow_mut().insert(subject.to_string(), live);
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Mutex};

    use super::*;
    use crate::store::Store;

    /// Once armed, the first read of a subject's key (a release's last
    /// read) says so and waits until told to go on: a release held between
    /// its reads and its write.
    struct Pause {
        armed: AtomicBool,
        hit: Mutex<mpsc::Sender<()>>,
        go: Mutex<mpsc::Receiver<()>>,
    }

    impl Pause {
        fn after_get(&self, space: Space) {
            if space == Space::SubjectKeys && self.armed.swap(false, Ordering::SeqCst) {
                self.hit.lock().unwrap().send(()).unwrap();
                self.go.lock().unwrap().recv().unwrap();
            }
        }
    }

    fn ctx(caller: &str, role: crate::policy::Role) -> Ctx {
        Ctx {
            caller: caller.into(),
            role,
            request_id: "t".into(),
            deadline: None,
        }
    }

    fn app() -> Ctx {
        ctx("app", crate::policy::Role::App)
    }

    /// A vault over a store that can [`Pause`], and the ends of its pause.
    struct Race {
        v: Arc<Vault>,
        pausing: Arc<Pause>,
        hit: mpsc::Receiver<()>,
        go: mpsc::Sender<()>,
        _dir: tempfile::TempDir,
    }

    impl Race {
        fn new() -> Race {
            let dir = tempfile::tempdir().unwrap();
            let path = crate::dev::prepare(dir.path()).unwrap();
            let cfg = crate::config::Config::load(&path).unwrap();
            let (hit_tx, hit) = mpsc::channel();
            let (go, go_rx) = mpsc::channel();
            let pausing = Arc::new(Pause {
                armed: AtomicBool::new(false),
                hit: Mutex::new(hit_tx),
                go: Mutex::new(go_rx),
            });
            let pause = pausing.clone();
            let store: Arc<dyn Store> =
                Arc::new(crate::store::testing::HookedStore::new(move |space| {
                    pause.after_get(space)
                }));
            let keys = crate::server::open_keys(&cfg, store.as_ref()).unwrap();
            let v = crate::server::build(&cfg, keys, store).unwrap();
            Race {
                v,
                pausing,
                hit,
                go,
                _dir: dir,
            }
        }

        /// A token for `name` of `subject`, collected for `purpose`.
        async fn collect(&self, subject: &str, name: &str, purpose: &str) -> String {
            let body = format!(
                r#"{{"subject":"{subject}","purpose":"{purpose}","fields":[{{"class":"name","value":"{name}"}}]}}"#
            );
            let out = crate::api::tokenize(&self.v, &app(), &Bytes::from(body))
                .await
                .unwrap();
            out.tokens[0].token.clone()
        }

        /// Runs `read` until it has read `subject`'s key (its last read,
        /// from the store: the cache is emptied first), runs `change`, then
        /// lets `read` go on and answers what it came to.
        async fn around<T: Send + 'static>(
            &self,
            subject: &str,
            read: impl std::future::Future<Output = T> + Send + 'static,
            change: impl std::future::Future<Output = ()>,
        ) -> T {
            self.v.keys.cache().forget(&[subject.as_bytes().to_vec()]);
            self.pausing.armed.store(true, Ordering::SeqCst);
            let read = tokio::spawn(read);
            tokio::task::block_in_place(|| {
                self.hit
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("the read reached the subject's key");
            });
            change.await;
            self.go.send(()).unwrap();
            read.await.unwrap()
        }

        fn detokenize(
            &self,
            token: &str,
            purpose: &str,
        ) -> impl std::future::Future<Output = Result<ValueOut, ApiError>> + Send + 'static
        {
            let v = self.v.clone();
            let body = format!(r#"{{"tokens":["{token}"],"purpose":"{purpose}"}}"#);
            async move {
                let mut r = detokenize(&v, &app(), &Bytes::from(body)).await?;
                Ok(r.values.remove(0))
            }
        }

        /// An officer's erasure of `subject`.
        async fn erase(&self, subject: &str) {
            let officer = ctx("officer", crate::policy::Role::Officer);
            crate::api::lifecycle::erase(&self.v, &officer, subject)
                .await
                .unwrap();
        }

        fn stale(&self) -> String {
            let text = self.v.metrics.render();
            text.lines()
                .find(|l| l.starts_with("vault_release_stale_total "))
                .unwrap_or_default()
                .to_string()
        }

        /// The audit events naming `subject`: action and outcome.
        fn events(&self, subject: &str) -> Vec<(String, String)> {
            crate::audit::query(
                self.v.store.as_ref(),
                Some(subject),
                0,
                1000,
                crate::audit::Deadline::NEVER,
            )
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect()
        }
    }

    /// A release that read a subject's value before a change that makes it
    /// unreleasable was written, and reaches the committer after it,
    /// releases nothing: it reads again and answers as the vault stands
    /// now (`gone`, `denied`, sealed), and the log has no release after the
    /// change. Before, the value read before the change came back after the
    /// change was acknowledged. A release of a subject the change does not
    /// touch goes through at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_read_before_a_change_is_released_after_it() {
        let r = Race::new();
        let officer = ctx("officer", crate::policy::Role::Officer);
        let purpose = "respond_to_request";

        // Erasure, during a detokenize.
        let token = r.collect("s1", "张三", purpose).await;
        let out = r
            .around("s1", r.detokenize(&token, purpose), r.erase("s1"))
            .await
            .unwrap();
        assert_eq!(out.status, Status::Gone);
        assert!(out.value.is_none());
        let events = r.events("s1");
        let erased = events.iter().position(|(a, _)| a == "erasure").unwrap();
        assert!(
            !events[erased..]
                .iter()
                .any(|(_, o)| o.starts_with("released")),
            "{events:?}"
        );
        assert_eq!(
            r.stale(),
            "vault_release_stale_total 1",
            "the first attempt was refused"
        );

        // Erasure, during the subject's export.
        r.collect("s2", "李四", purpose).await;
        let v = r.v.clone();
        let exported = r
            .around(
                "s2",
                async move {
                    let q = Some("purpose=data_subject_request");
                    crate::api::subjects::export(&v, &app(), "s2", q).await
                },
                r.erase("s2"),
            )
            .await
            .unwrap();
        assert!(exported.values.is_empty());
        assert!(exported.withheld.is_empty());
        assert!(!r
            .events("s2")
            .iter()
            .any(|(_, o)| o.starts_with("released")));

        // A withdrawal of consent, during a detokenize under a purpose that
        // rests on it.
        let consent = |method: http::Method| {
            let v = r.v.clone();
            async move {
                let body = Bytes::from(r#"{"policy_version":"2024-01"}"#);
                crate::api::consent::consent(&v, &app(), &method, "s3", "user_specified", &body)
                    .await
                    .unwrap();
            }
        };
        consent(http::Method::PUT).await;
        let token = r.collect("s3", "王五", "user_specified").await;
        let out = r
            .around(
                "s3",
                r.detokenize(&token, "user_specified"),
                consent(http::Method::DELETE),
            )
            .await
            .unwrap();
        assert_eq!(out.status, Status::Denied);
        assert_eq!(out.reason.as_deref(), Some("consent_required"));

        // Not touched: a change of another subject lets the release through
        // on its first attempt.
        let token = r.collect("s4", "赵六", purpose).await;
        r.collect("s5", "钱七", purpose).await;
        let stale = r.stale();
        let out = r
            .around("s4", r.detokenize(&token, purpose), r.erase("s5"))
            .await
            .unwrap();
        assert_eq!(out.status, Status::Ok);
        assert_eq!(r.stale(), stale);

        // A new minimum decryption version, during a detokenize of a value
        // sealed under an older one.
        crate::api::admin::rotate(&r.v, &officer).await.unwrap();
        let out = r
            .around("s4", r.detokenize(&token, purpose), async {
                let body = Bytes::from(r#"{"min_decryption_version":2}"#);
                crate::api::admin::configure(&r.v, &officer, &body)
                    .await
                    .unwrap();
            })
            .await
            .unwrap();
        assert_eq!(out.status, Status::Denied);
        assert_eq!(out.reason.as_deref(), Some("key_version_refused"));

        // A seal, during a detokenize: nothing decrypted before it is
        // answered after it.
        let token = r.collect("s6", "孙八", purpose).await;
        let out = r
            .around("s6", r.detokenize(&token, purpose), async {
                crate::api::admin::seal(&r.v, &officer).await.unwrap();
            })
            .await;
        assert!(matches!(out, Err(ApiError::Sealed)), "{out:?}");
        assert!(!r
            .events("s6")
            .iter()
            .any(|(_, o)| o.starts_with("released")));
    }
}
