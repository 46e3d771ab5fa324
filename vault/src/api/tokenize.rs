//! `POST /v1/tokenize`: validate every field, then store them all in one
//! durable batch. Invariant: the request is atomic: a 4xx stores nothing, a
//! 200 means every value is durable.

use bytes::Bytes;
use vault_sdk::wire::{TokenOut, TokenizeRequest, TokenizeResponse};

use super::{keyring, lifecycle, now_ms, parse_json, ApiError, Ctx};
use crate::audit::Draft;
use crate::classes::{self, Class, Normalized};
use crate::commit::CommitError;
use crate::crypto::tagged_value_aad;
use crate::retention::{expiry_ms, parse_duration};
use crate::schema::{self, Record};
use crate::server::Vault;
use crate::store::{Batch, Space, StoreError};
use crate::subject_keys;

pub async fn tokenize(v: &Vault, ctx: &Ctx, body: &Bytes) -> Result<TokenizeResponse, ApiError> {
    let req: TokenizeRequest = parse_json(body)?;
    if req.fields.len() > v.limits.max_items {
        return Err(ApiError::TooManyItems(v.limits.max_items));
    }
    if req.fields.is_empty() {
        return Err(ApiError::BadRequest("fields must not be empty"));
    }
    let collect = Collect::new(v, &req.subject, &req.purpose, req.retention.as_deref())?;
    let mut items = Vec::with_capacity(req.fields.len());
    for (i, field) in req.fields.iter().enumerate() {
        let class = Class::parse(&field.class).ok_or(ApiError::UnknownClass { field: i })?;
        if !v.policy.may_collect(&ctx.caller, &req.purpose, class) {
            return Err(ApiError::ClassNotAllowed { field: i });
        }
        let norm = classes::normalize(class, &field.value)
            .map_err(|reason| ApiError::InvalidValue { field: i, reason })?;
        items.push((class, norm));
    }
    let tokens = store_values(v, ctx, &collect, &items).await?;
    Ok(TokenizeResponse { tokens })
}

/// Where and why values are collected, checked.
pub(crate) struct Collect<'a> {
    pub subject: &'a str,
    pub purpose: &'a str,
    pub requested: Option<std::time::Duration>,
    /// The audit event's action: `tokenize`, `deidentify` or `records`.
    pub action: &'static str,
}

impl<'a> Collect<'a> {
    /// Checks the subject, the purpose and the retention asked for.
    pub fn new(
        v: &Vault,
        subject: &'a str,
        purpose: &'a str,
        retention: Option<&str>,
    ) -> Result<Collect<'a>, ApiError> {
        if !schema::valid_subject(subject) {
            return Err(ApiError::InvalidSubject);
        }
        if v.policy.purpose(purpose).is_none() {
            return Err(ApiError::UnknownPurpose);
        }
        let requested = match retention {
            Some(r) => Some(parse_duration(r).map_err(|_| ApiError::InvalidRetention)?),
            None => None,
        };
        Ok(Collect {
            subject,
            purpose,
            requested,
            action: "tokenize",
        })
    }
}

/// Stores validated values of one subject in one durable, atomic write and
/// returns their tokens in order. Nothing at all is written for no items.
pub(crate) async fn store_values(
    v: &Vault,
    ctx: &Ctx,
    collect: &Collect<'_>,
    items: &[(Class, Normalized)],
) -> Result<Vec<TokenOut>, ApiError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // The first values of a new subject race to create its key; the loser
    // of that compare-and-set simply runs again with the winner's key.
    let mut attempt = 0;
    loop {
        match store_once(v, ctx, collect, items).await {
            Err(ApiError::Conflict) if attempt < 3 => attempt += 1,
            r => return r,
        }
    }
}

async fn store_once(
    v: &Vault,
    ctx: &Ctx,
    collect: &Collect<'_>,
    items: &[(Class, Normalized)],
) -> Result<Vec<TokenOut>, ApiError> {
    let subject = collect.subject;
    let keys = keyring(v)?;
    let active = keys.active().map_err(|_| ApiError::Internal)?;
    let cache = v.keys.cache();
    let (data_key, create) =
        match subject_keys::load_cached(v.store.as_ref(), &keys, cache, subject) {
            Ok(Some(l)) => (l.value_key(active), Some(l.guard(subject))),
            Ok(None) => {
                let (k, b) =
                    subject_keys::create(&keys, subject).map_err(|_| ApiError::Internal)?;
                (std::sync::Arc::new(active.for_subject(&k)), Some(b))
            }
            Err(subject_keys::SubjectKeyError::Store(_)) => return Err(ApiError::Unavailable),
            Err(subject_keys::SubjectKeyError::Key(_)) => return Err(ApiError::Internal),
        };
    // A subject whose erasure waits for a legal period takes nothing new; a
    // closed account's new values get its post-closure clock. The write is
    // guarded on the standing, so a closure or an erasure committed
    // meanwhile makes it run again under the new one.
    let standing =
        lifecycle::Standing::read(v.store.as_ref(), subject).map_err(|_| ApiError::Unavailable)?;
    if standing.restricted() {
        return Err(ApiError::SubjectRestricted);
    }
    let latest = standing.latest_expiry(v);
    let now = now_ms();
    // A closed account whose post-closure period is over keeps nothing:
    // a value collected now would be gone before it could be read, so it
    // is refused rather than answered with a token that reads `gone`.
    if latest.is_some_and(|end| end <= now) {
        return Err(ApiError::AccountClosed);
    }
    let mut batch = Batch::default();
    standing.guard(&mut batch, subject);
    let mut out = Vec::with_capacity(items.len());
    let mut counts = [(0u64, 0u64); 11];
    for (class, norm) in items {
        let class = *class;
        let (token, shown) = v.tokens.issue(&keys, class, norm);
        let rules = &v.policy.retention;
        let expires = match (
            expiry_ms(
                now,
                collect.requested,
                rules.from_collection(class),
                rules.max,
            ),
            latest,
        ) {
            (Some(e), Some(l)) => Some(e.min(l)),
            (e, l) => e.or(l),
        };
        let aad = tagged_value_aad(subject, class, data_key.version(), &token);
        let ciphertext = data_key
            .seal(&aad, norm.value().as_bytes())
            .map_err(|_| ApiError::Internal)?;
        let mut record = Record {
            class,
            key_version: data_key.version(),
            collected_ms: now,
            expires_ms: expires,
            purpose: collect.purpose.to_string(),
            ciphertext,
            token_bound: true,
            restricted: false,
            tag: None,
        };
        batch.put(
            Space::Values,
            schema::value_key(&token, subject),
            record.encode_tagged(keys.header_key(), subject, &token),
        );
        batch.put(
            Space::Subjects,
            schema::subject_key(subject, &token),
            Vec::new(),
        );
        if let Some(e) = expires {
            batch.put(
                Space::Expiry,
                schema::expiry_key(e, &token, subject),
                Vec::new(),
            );
            // A value collected again with a clock that ends within a
            // request's time: a release that read it with its old clock
            // runs again (see `lifecycle::ends_soon`).
            if lifecycle::ends_soon(v, e, now) {
                batch.touch(subject);
            }
        }
        if let Some(c) = counts.get_mut(usize::from(class.tag().saturating_sub(1))) {
            c.0 += 1;
            c.1 += u64::from(norm.flag().is_some());
        }
        out.push(TokenOut {
            class: class.as_str().to_string(),
            token: shown,
            flag: norm.flag().map(|f| f.as_str().to_string()),
        });
    }
    let event = Draft {
        request_id: ctx.request_id.clone(),
        caller: ctx.caller.to_string(),
        action: collect.action,
        purpose: Some(collect.purpose.to_string()),
        subject: Some(subject.to_string()),
        class: Some(class_list(&counts)),
        outcome: "stored",
        ..Draft::default()
    };
    if let Some(b) = create {
        batch.absorb(b);
    }
    batch.seals_under(data_key.version());
    v.committer
        .commit(batch, vec![event])
        .await
        .map_err(|e| match e {
            CommitError::Store(StoreError::Conflict) => ApiError::Conflict,
            e => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "Tokenize write failed");
                ApiError::Unavailable
            }
        })?;
    for (class, (n, flagged)) in Class::ALL.iter().zip(counts) {
        if n > 0 {
            v.metrics.tokenized(class.as_str(), n, flagged);
        }
    }
    Ok(out)
}

/// The classes present, comma-separated in class order, for the audit event.
fn class_list(counts: &[(u64, u64); 11]) -> String {
    Class::ALL
        .iter()
        .zip(counts)
        .filter(|(_, (n, _))| *n > 0)
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
