//! The consent ledger (`/v1/subjects/{subject}/consents/{purpose}`) and
//! legal-exception approvals (`POST /v1/admin/approvals`, revoked with
//! `DELETE /v1/admin/approvals/{id}`). Invariants: an entry and its audit
//! event are one durable write; an officer can never approve a disclosure
//! they will make themselves; an approval serves at most one disclosure,
//! and none once revoked.

use bytes::Bytes;
use http::Method;
use vault_sdk::wire::{Approval, ApprovalRequest, ConsentEntry, ConsentRequest, ConsentState};

use super::{now_ms, parse_json, require_officer, ApiError, Ctx};
use crate::audit::Draft;
use crate::ledger;
use crate::policy::DATA_SUBJECT_REQUEST;
use crate::schema::valid_subject;
use crate::server::Vault;
use crate::store::{Batch, Space};

/// Longest approval an officer may grant.
const MAX_APPROVAL_MS: u64 = 30 * 24 * 3600 * 1000;
const MAX_SUBJECTS: usize = 100;

fn valid_version(v: &str) -> bool {
    (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

async fn commit(v: &Vault, batch: Batch, audit: Vec<Draft>) -> Result<(), ApiError> {
    v.committer.commit(batch, audit).await.map_err(|e| {
        tracing::error!(error = %e, "Ledger write failed");
        ApiError::Unavailable
    })
}

/// `GET`, `PUT` and `DELETE /v1/subjects/{subject}/consents/{purpose}`.
pub async fn consent(
    v: &Vault,
    ctx: &Ctx,
    method: &Method,
    subject: &str,
    purpose: &str,
    body: &Bytes,
) -> Result<ConsentState, ApiError> {
    if !valid_subject(subject) {
        return Err(ApiError::InvalidSubject);
    }
    let info = v.policy.purpose(purpose).ok_or(ApiError::UnknownPurpose)?;
    if info.legal_exception || purpose == DATA_SUBJECT_REQUEST {
        return Err(ApiError::BadRequest(
            "this purpose does not rest on consent",
        ));
    }
    let store = v.store.as_ref();
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    let history = ledger::consent_history(store, &keys, subject, purpose)
        .map_err(|_| ApiError::Unavailable)?;
    let given = match *method {
        Method::GET => None,
        Method::PUT => Some(true),
        Method::DELETE => Some(false),
        _ => return Err(ApiError::MethodNotAllowed),
    };
    // Consent is the subject's, given through the application that acts
    // for them: an officer giving it would turn on releases no subject
    // agreed to. (An officer may withdraw it.)
    if given == Some(true) && ctx.role == crate::policy::Role::Officer {
        return Err(super::refused(
            v,
            ctx,
            "consent",
            Some(purpose),
            Some(subject),
            "forbidden",
            ApiError::ConsentByOfficer,
        )
        .await);
    }
    if let Some(given) = given {
        let policy_version = if body.iter().all(u8::is_ascii_whitespace) && !given {
            // A withdrawal without a body withdraws whatever was given.
            history
                .last()
                .map(|e| e.policy_version.clone())
                .unwrap_or_else(|| "-".into())
        } else {
            let req: ConsentRequest = parse_json(body)?;
            if !valid_version(&req.policy_version) {
                return Err(ApiError::BadRequest(
                    "policy_version must be 1-32 characters of [A-Za-z0-9._-]",
                ));
            }
            // A consent that could never count is refused, not kept: its
            // version must compare with the purpose's `consent-since`.
            if given
                && info
                    .consent_since
                    .as_deref()
                    .is_some_and(|s| !ledger::comparable_version(&req.policy_version, s))
            {
                return Err(ApiError::BadRequest(
                    "policy_version must have the form of the purpose's consent-since",
                ));
            }
            req.policy_version
        };
        let entry = ConsentEntry {
            given,
            policy_version,
            time_ms: now_ms(),
            caller: ctx.caller.to_string(),
        };
        let newest = ledger::newest_consent_seq(store, subject, purpose)
            .map_err(|_| ApiError::Unavailable)?;
        let mut batch = ledger::append_consent_after(&keys, subject, purpose, &entry, newest)
            .map_err(|_| ApiError::Internal)?;
        // An entry that leaves no live consent (a withdrawal, or consent to
        // an older policy version) for a purpose that rests on it: a
        // release that read the consent before runs again. Other purposes
        // never read it.
        if ledger::ends_consent(&entry, info.requires_consent, info.consent_since.as_deref()) {
            batch.touch(subject);
        }
        let event = Draft {
            request_id: ctx.request_id.clone(),
            caller: ctx.caller.to_string(),
            action: "consent",
            purpose: Some(purpose.to_string()),
            subject: Some(subject.to_string()),
            outcome: if given { "given" } else { "withdrawn" },
            reference: Some(entry.policy_version.clone()),
            ..Draft::default()
        };
        commit(v, batch, vec![event]).await?;
    }
    let history = ledger::consent_history(store, &keys, subject, purpose)
        .map_err(|_| ApiError::Unavailable)?;
    Ok(ConsentState {
        subject: subject.to_string(),
        purpose: purpose.to_string(),
        live: ledger::consent_is_live(&history, info.consent_since.as_deref()),
        history,
    })
}

/// `POST /v1/admin/approvals`: an officer approves one legal-exception
/// disclosure by another caller, for named subjects, for a while.
pub async fn approve(v: &Vault, ctx: &Ctx, body: &Bytes) -> Result<Approval, ApiError> {
    require_officer(ctx)?;
    let req: ApprovalRequest = parse_json(body)?;
    let info = v
        .policy
        .purpose(&req.purpose)
        .ok_or(ApiError::UnknownPurpose)?;
    if !info.legal_exception {
        return Err(ApiError::BadRequest(
            "approvals are for the eight legal-exception purposes",
        ));
    }
    if v.policy.role(&req.requester).is_none() {
        return Err(ApiError::BadRequest("requester is not a configured caller"));
    }
    if req.requester == *ctx.caller {
        let event = Draft {
            request_id: ctx.request_id.clone(),
            caller: ctx.caller.to_string(),
            action: "approval",
            purpose: Some(req.purpose.clone()),
            outcome: "refused_self_approval",
            ..Draft::default()
        };
        commit(v, Batch::default(), vec![event]).await?;
        return Err(ApiError::SelfApproval);
    }
    if req.subjects.is_empty()
        || req.subjects.len() > MAX_SUBJECTS
        || !req.subjects.iter().all(|s| valid_subject(s))
    {
        return Err(ApiError::BadRequest("subjects: 1 to 100 valid subject ids"));
    }
    if !super::printable(&req.reference, super::MAX_REFERENCE) {
        return Err(ApiError::BadRequest(
            "reference: 1-128 printable characters",
        ));
    }
    let valid_for = crate::retention::parse_duration(&req.valid_for)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .filter(|ms| (1..=MAX_APPROVAL_MS).contains(ms))
        .ok_or(ApiError::BadRequest(
            "valid_for: an ISO 8601 duration up to P30D",
        ))?;
    let now = now_ms();
    let approval = Approval {
        id: format!("apr-{}", hex::encode(rand::random::<[u8; 12]>())),
        approver: ctx.caller.to_string(),
        requester: req.requester,
        purpose: req.purpose,
        subjects: req.subjects,
        reference: req.reference,
        created_ms: now,
        expires_ms: now.saturating_add(valid_for),
    };
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    let batch = ledger::put_approval(&keys, &approval).map_err(|_| ApiError::Internal)?;
    commit(v, batch, approval_events(ctx, &approval, "granted")).await?;
    Ok(approval)
}

/// One `approval` event per subject the approval covers, with its purpose,
/// case reference and requester: what an officer did to it (`outcome`).
fn approval_events(ctx: &Ctx, approval: &Approval, outcome: &'static str) -> Vec<Draft> {
    approval
        .subjects
        .iter()
        .map(|s| Draft {
            request_id: ctx.request_id.clone(),
            caller: ctx.caller.to_string(),
            action: "approval",
            purpose: Some(approval.purpose.clone()),
            subject: Some(s.clone()),
            outcome,
            reference: Some(approval.reference.clone()),
            approval: Some(approval.id.clone()),
            requester: Some(approval.requester.clone()),
            ..Draft::default()
        })
        .collect()
}

/// `DELETE /v1/admin/approvals/{id}` (officers): revokes an approval not
/// used yet, so one granted by mistake, or for a case closed early, serves
/// no disclosure before it expires. The revocation takes the approval's one
/// use (the same guarded row a release writes), so of a release and a
/// revocation racing, exactly one wins: 409 `conflict` when the approval
/// was used or revoked already. Audited per subject, as the grant was.
pub async fn revoke_approval(v: &Vault, ctx: &Ctx, id: &str) -> Result<Approval, ApiError> {
    require_officer(ctx)?;
    let keys = v.keys.get().map_err(|_| ApiError::Sealed)?;
    let approval = ledger::get_approval(v.store.as_ref(), &keys, id)
        .map_err(|_| ApiError::Unavailable)?
        .ok_or(ApiError::NotFound)?;
    let mut batch = Batch::default();
    let used = ledger::approval_used_key(&approval.id);
    batch.expect(Space::Meta, used.clone(), None);
    batch.put(
        Space::Meta,
        used,
        format!("revoked:{}", ctx.request_id).into_bytes(),
    );
    let events = |outcome| approval_events(ctx, &approval, outcome);
    match v.committer.commit(batch, events("revoked")).await {
        Ok(()) => Ok(approval),
        // Used (or revoked) first: the try is on record too.
        Err(crate::commit::CommitError::Store(crate::store::StoreError::Conflict)) => {
            commit(v, Batch::default(), events("revoke_refused_used")).await?;
            Err(ApiError::Conflict)
        }
        Err(e) => {
            tracing::error!(error = %e, "Ledger write failed");
            Err(ApiError::Unavailable)
        }
    }
}
