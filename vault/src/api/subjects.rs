//! The data subject's rights to view: `GET /v1/subjects/{subject}` (every
//! live value, for `purpose=data_subject_request`) and
//! `GET /v1/subjects/{subject}/access-log` (every release of the subject's
//! data). Invariant: an export is audited like any release, in the same
//! durable write, before it leaves.

use vault_sdk::wire::{AccessEntry, AccessLog, SubjectExport, SubjectValue, WithheldValue};

use super::{keyring, now_ms, ApiError, Ctx};
use crate::audit::{self, Draft};
use crate::policy::{Role, DATA_SUBJECT_REQUEST};
use crate::schema::valid_subject;
use crate::server::Vault;
use crate::store::Batch;

/// The actions that release (or refuse to release) a subject's values:
/// what the access log lists.
const RELEASES: [&str; 3] = ["detokenize", "reidentify", "subject_export"];

/// Most refused attempts one access log returns (the newest).
const MAX_REFUSALS: usize = 1_000;

/// Most entries one access log returns (the newest).
const MAX_ENTRIES: usize = 10_000;

fn purpose_of(query: Option<&str>) -> Result<String, ApiError> {
    let mut purpose = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("purpose", p)) => {
                purpose = Some(
                    super::percent_decode(p).ok_or(ApiError::BadRequest("bad percent-encoding"))?,
                )
            }
            _ => return Err(ApiError::BadRequest("the only query parameter is purpose")),
        }
    }
    purpose
        .filter(|p| !p.is_empty())
        .ok_or(ApiError::PurposeRequired)
}

pub async fn export(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    query: Option<&str>,
) -> Result<SubjectExport, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let purpose = purpose_of(query)?;
    if v.policy.purpose(&purpose).is_none() {
        return Err(ApiError::UnknownPurpose);
    }
    // The subject's own data goes back through the application that acts
    // for the subject, as far as its grant for `data_subject_request` says
    // (SPEC's default policy: `app`, every class in full). An officer's way
    // to plaintext is a legal exception under another officer's approval,
    // never an export, whatever a grant says.
    if purpose != DATA_SUBJECT_REQUEST
        || ctx.role != Role::App
        || !v.policy.may_release_any(&ctx.caller, &purpose)
    {
        let e = ApiError::PurposeNotAllowed;
        let outcome = "purpose_not_allowed";
        return Err(super::refused(
            v,
            ctx,
            "subject_export",
            Some(&purpose),
            Some(subject),
            outcome,
            e,
        )
        .await);
    }
    // What is released is what the store holds when the export's events
    // are written: one that read before an erasure, a correction or a
    // restriction was written reads again.
    let mut stale = 0;
    loop {
        match export_once(v, ctx, subject, &purpose).await? {
            Some(export) => return Ok(export),
            None => super::detokenize::stale_again(v, ctx, &mut stale)?,
        }
    }
}

/// One read of the subject's values and the write of its events, guarded
/// on what it read (`None` when that changed meanwhile).
async fn export_once(
    v: &Vault,
    ctx: &Ctx,
    subject: &str,
    purpose: &str,
) -> Result<Option<SubjectExport>, ApiError> {
    let purpose = purpose.to_string();
    let epoch = v.committer.epoch();
    let keys = keyring(v)?;
    let now = now_ms();
    // A subject restricted by a pending erasure (PIPL Art. 47) is kept, not
    // processed: nothing is released but under a legal exception.
    let (rows, tampered) = super::lifecycle::values_of(v.store.as_ref(), Some(&keys), subject)?;
    // Its standing says so, or (should that record have gone missing) a
    // value's own tagged header does.
    if super::lifecycle::restricted_until(v.store.as_ref(), subject, now)
        .map_err(|_| ApiError::Unavailable)?
        .is_some()
        || rows
            .iter()
            .any(|(_, _, rec)| rec.restricted && rec.is_live(now))
    {
        v.committer
            .commit(
                Batch::default(),
                vec![Draft {
                    request_id: ctx.request_id.clone(),
                    caller: ctx.caller.to_string(),
                    action: "subject_export",
                    purpose: Some(purpose),
                    subject: Some(subject.to_string()),
                    outcome: "refused_restricted",
                    ..Draft::default()
                }],
            )
            .await
            .map_err(|_| ApiError::Unavailable)?;
        return Err(ApiError::SubjectRestricted);
    }

    let subject_key = match crate::subject_keys::load(v.store.as_ref(), &keys, subject) {
        Ok(k) => k,
        Err(crate::subject_keys::SubjectKeyError::Store(_)) => return Err(ApiError::Unavailable),
        Err(crate::subject_keys::SubjectKeyError::Key(_)) => None,
    };
    let mut values = Vec::new();
    let mut events = Vec::new();
    let mut withheld = Vec::new();
    let event = |outcome: &'static str, class: crate::classes::Class, token: &str| Draft {
        request_id: ctx.request_id.clone(),
        caller: ctx.caller.to_string(),
        action: "subject_export",
        purpose: Some(purpose.clone()),
        subject: Some(subject.to_string()),
        class: Some(class.as_str().to_string()),
        token: Some(token.to_string()),
        outcome,
        ..Draft::default()
    };
    // Not the vault's as written (a header changed outside it): withheld,
    // whatever its header claims.
    let mut failures = 0usize;
    for (token, _, rec) in &tampered {
        if v.policy.release(&ctx.caller, &purpose, rec.class) == crate::policy::Release::None {
            continue;
        }
        failures += 1;
        let w = withheld_value(token, rec, "integrity_failure");
        events.push(event("integrity_failure", rec.class, &w.token));
        withheld.push(w);
    }
    for (token, _, rec) in rows {
        let level = v.policy.release(&ctx.caller, &purpose, rec.class);
        if !rec.is_live(now) || level == crate::policy::Release::None {
            continue;
        }
        let aad = rec.aad(subject, &token);
        let opened = match keys.version(rec.key_version) {
            Err(crate::keys::KeyError::BelowMinimum(_)) => Err("key_version_refused"),
            k => k
                .ok()
                .zip(subject_key.as_ref())
                .and_then(|(k, sk)| k.for_subject(sk).open(&aad, &rec.ciphertext).ok())
                .and_then(crate::crypto::into_text)
                .ok_or("integrity_failure"),
        };
        let plain = match opened {
            Ok(plain) => plain,
            Err(reason) => {
                failures += usize::from(reason == "integrity_failure");
                let w = withheld_value(&token, &rec, reason);
                let outcome = if reason == "integrity_failure" {
                    reason
                } else {
                    "denied"
                };
                events.push(event(outcome, rec.class, &w.token));
                withheld.push(w);
                continue;
            }
        };
        // The token as tokenize gave it (preserving where so configured),
        // so an app finds its own tokens in the export.
        let token = v.tokens.shown(&keys, rec.class, &token, &plain);
        let outcome = if level == crate::policy::Release::Masked {
            "released_masked"
        } else {
            "released"
        };
        events.push(event(outcome, rec.class, &token));
        let value = if level == crate::policy::Release::Masked {
            crate::classes::mask(rec.class, &plain)
        } else {
            // Moved out, not copied: the answer's own buffer is wiped with it.
            let mut plain = plain;
            std::mem::take(&mut *plain)
        };
        values.push(SubjectValue {
            class: rec.class.as_str().to_string(),
            token,
            value,
            purpose: rec.purpose,
            collected_ms: rec.collected_ms,
            expires_ms: rec.expires_ms,
        });
    }
    if events.is_empty() {
        events.push(Draft {
            request_id: ctx.request_id.clone(),
            caller: ctx.caller.to_string(),
            action: "subject_export",
            purpose: Some(purpose),
            subject: Some(subject.to_string()),
            outcome: "empty",
            ..Draft::default()
        });
    }
    // Guarded on what was read, released or not: a value withheld because
    // an erasure destroyed its key meanwhile is not reported after it.
    let batch = Batch {
        reads: Some(crate::store::Reads {
            epoch,
            subjects: vec![crate::store::subject_tag(subject)],
            min_decryption: keys.meta().min_decryption_version,
        }),
        ..Batch::default()
    };
    match v.committer.commit(batch, events).await {
        Ok(()) => {
            if failures > 0 {
                tracing::error!(request_id = %ctx.request_id, values = failures, "Stored values failed their integrity check");
            }
            Ok(Some(SubjectExport {
                subject: subject.to_string(),
                values,
                withheld,
            }))
        }
        Err(crate::commit::CommitError::Stale) => Ok(None),
        Err(_) => Err(ApiError::Unavailable),
    }
}

/// What the export says of a value it could not open.
fn withheld_value(
    token: &crate::crypto::TokenBytes,
    rec: &crate::schema::Record,
    reason: &str,
) -> WithheldValue {
    WithheldValue {
        class: rec.class.as_str().to_string(),
        token: crate::crypto::encode_token(token),
        purpose: rec.purpose.clone(),
        collected_ms: rec.collected_ms,
        expires_ms: rec.expires_ms,
        reason: reason.to_string(),
    }
}

/// The newest releases and refused attempts, capped after the filter:
/// other events naming the subject take no place, refusals at most 1,000,
/// and `truncated` says when older entries were left out.
pub fn access_log(
    v: &Vault,
    subject: &str,
    query: Option<&str>,
    deadline: audit::Deadline,
) -> Result<AccessLog, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let mut before = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=').map(|(k, n)| (k, n.parse::<u64>())) {
            Some(("before", Ok(n))) => before = Some(n),
            _ => {
                return Err(ApiError::BadRequest(
                    "the only query parameter is before, an event's sequence number",
                ))
            }
        }
    }
    // Refusals cost a caller nothing to make, releases need a grant: the
    // newest refusals share a small cap of their own, so however many there
    // are, the newest 9,000 releases or more are in the answer.
    let mut refusals = 0usize;
    let (events, next_before) =
        audit::newest(v.store.as_ref(), before, MAX_ENTRIES, deadline, |e| {
            if e.subject.as_deref() != Some(subject) || !RELEASES.contains(&e.action.as_str()) {
                return false;
            }
            if e.outcome.starts_with("released") {
                return true;
            }
            refusals += 1;
            refusals <= MAX_REFUSALS
        })
        .map_err(walk_error)?;
    // Older entries may be a page back (a walk stops at its cap, or at the
    // request's deadline with what it found). Refusals past the cap of a
    // page are on no page: the officers' audit query lists them all.
    let truncated = next_before.is_some() || refusals > MAX_REFUSALS;
    let entries = events
        .into_iter()
        .map(|e| AccessEntry {
            time_ms: e.time_ms,
            caller: e.caller,
            purpose: e.purpose,
            class: e.class,
            outcome: e.outcome,
            reason: e.reason,
        })
        .collect();
    Ok(AccessLog {
        subject: subject.to_string(),
        entries,
        truncated,
        next_before,
    })
}

/// A walk of the audit log that failed: out of time, or the store.
pub(crate) fn walk_error(e: audit::AuditError) -> ApiError {
    match e {
        audit::AuditError::TimedOut => ApiError::Timeout,
        _ => ApiError::Unavailable,
    }
}
