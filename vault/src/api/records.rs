//! `POST /v1/records`: a whole JSON document (an application form, say)
//! comes in; the leaves a mapping names are tokenized (or masked, or
//! redacted), other string leaves are scanned like deidentify when asked,
//! and the document goes back with tokens in place. Invariant: the whole
//! document is checked and every replacement decided before anything is
//! written, and all its values are stored in one atomic write, so a failed
//! request stores nothing.

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::Value;
use vault_sdk::wire::{DeidentifyMode, RecordField, RecordsRequest, RecordsResponse};

use super::deidentify::{render, Plan, Replacement, Span};
use super::tokenize::{store_values, Collect};
use super::{keyring, parse_json, ApiError, Ctx};
use crate::classes;
use crate::records::{compile, string_leaves_within, Mapping};
use crate::server::Vault;

/// One leaf to rewrite: where, and with what.
enum Change {
    /// A mapped leaf, replaced whole.
    Mapped {
        pointer: String,
        class: classes::Class,
        with: Replacement,
    },
    /// A scanned leaf, with the findings in it.
    Scanned { pointer: String, spans: Vec<Span> },
}

/// Most bytes of pointers one request may build (each node's pointers,
/// plus a fixed share per node: `records::node_cost`), the mapping's walks,
/// the scan's and the copies the answer keeps together: a schema of 20
/// pointers over a list of 1,000 forms, scanned too, takes about 12 MiB of
/// it, and it bounds both the time and the memory of a request, whatever
/// the document's member names.
pub const WALK_BUDGET: usize = 32 << 20;

/// Bytes of pointers a request whose body has `body_len` bytes may build:
/// 32 times its body, at least 1 MiB, at most [`WALK_BUDGET`]. A member
/// name costs its bytes once in the body but is copied into every pointer
/// beneath it, so a small body could otherwise build tens of MiB. The
/// pointers a request keeps are then held from the body budget while it
/// waits for its write, so what records requests waiting together hold is
/// bounded as their bodies are.
fn walk_budget(body_len: usize) -> usize {
    body_len.saturating_mul(32).clamp(1 << 20, WALK_BUDGET)
}

/// Takes the cost of `copies` more copies of a pointer from `budget`, each
/// as long as the answer will write it (a control character takes six
/// bytes there).
fn charge(budget: &mut usize, copies: usize, pointer: &str, limit: usize) -> Result<(), ApiError> {
    let written: usize = pointer
        .bytes()
        .map(|b| match b {
            0..=0x1f => 6,
            b'"' | b'\\' => 2,
            _ => 1,
        })
        .sum();
    *budget = copies
        .checked_mul(crate::records::node_cost(written))
        .and_then(|c| budget.checked_sub(c))
        .ok_or(ApiError::WalkTooLarge(limit))?;
    Ok(())
}

/// The handler. The pointers it keeps until the answer are held through
/// `hold` from the caller's share of the body budget while it waits for
/// its write, so many requests waiting at once cannot hold more than
/// their bodies may.
pub async fn records(
    v: &Vault,
    ctx: &Ctx,
    body: &Bytes,
    hold: &(dyn Fn(usize) -> Result<crate::http::Held, ApiError> + Sync),
) -> Result<RecordsResponse, ApiError> {
    let limit = walk_budget(body.len());
    let mut req: RecordsRequest = parse_json(body)?;
    // Sealed means no processing of PII at all, storing or not.
    keyring(v)?;
    let collect = Collect {
        action: "records",
        ..Collect::new(v, &req.subject, &req.purpose, req.retention.as_deref())?
    };
    let inline;
    let mapping: &Mapping = match (&req.mapping, &req.schema) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give either mapping or schema, not both",
            ))
        }
        (Some(m), None) => {
            // Each pattern is a walk of the document: no more of them than
            // leaves one request may change.
            if m.len() > v.limits.max_items {
                return Err(ApiError::TooManyItems(v.limits.max_items));
            }
            inline = compile(m).map_err(ApiError::BadMapping)?;
            &inline
        }
        (None, Some(name)) => v.schemas.get(name).ok_or(ApiError::UnknownSchema)?,
        (None, None) if req.scan => {
            inline = Vec::new();
            &inline
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "give a mapping or a schema, or ask for scan",
            ))
        }
    };
    let mut plan = Plan::new(v, ctx, req.mode, &req.purpose);
    let mut changes = Vec::new();
    let mut mapped = BTreeSet::new();
    let mut budget = limit;
    for (_, pattern, class) in mapping {
        let matched = pattern
            .matches_within(&req.document, &mut budget)
            .ok_or(ApiError::WalkTooLarge(limit))?;
        // Errors name a leaf by its shown form: no member name of the
        // document (the caller's data) goes back in an error.
        for (node, pointer, shown) in matched {
            let leaf = match node {
                Value::Null => continue,
                Value::String(s) => s,
                _ => return Err(ApiError::LeafNotString { pointer: shown }),
            };
            charge(&mut budget, 1, &pointer, limit)?;
            if !mapped.insert(pointer.clone()) {
                return Err(ApiError::LeafMappedTwice { pointer: shown });
            }
            if req.mode == DeidentifyMode::Tokenize
                && !v.policy.may_collect(&ctx.caller, &req.purpose, *class)
            {
                return Err(ApiError::LeafNotAllowed { pointer: shown });
            }
            let norm = match classes::normalize(*class, leaf) {
                Ok(n) => n,
                Err(reason) => {
                    return Err(ApiError::LeafInvalid {
                        pointer: shown,
                        reason,
                    })
                }
            };
            let with = plan.decide(*class, norm, false)?;
            changes.push(Change::Mapped {
                pointer,
                class: *class,
                with,
            });
        }
    }
    if req.scan {
        let leaves = string_leaves_within(&req.document, &mut budget)
            .ok_or(ApiError::WalkTooLarge(limit))?;
        for (text, pointer) in leaves {
            if mapped.contains(&pointer) {
                continue;
            }
            let spans = plan.scan(text)?;
            if !spans.is_empty() {
                // The answer names the leaf once per finding.
                charge(&mut budget, spans.len(), &pointer, limit)?;
                changes.push(Change::Scanned { pointer, spans });
            }
        }
    }
    // Not needed past here, and not to be held across the write. What is
    // (the pointers of `changes`, whose member names a body can make
    // longer than itself many times over) is held from the caller's share
    // until the answer is made; the rest of a change is a fixed size, and
    // at most `max-items` of them.
    drop(mapped);
    let kept: usize = changes
        .iter()
        .map(|c| match c {
            Change::Mapped { pointer, .. } | Change::Scanned { pointer, .. } => pointer.len(),
        })
        .sum();
    let _held = hold(kept)?;
    let tokens: Vec<String> = if req.mode == DeidentifyMode::Tokenize {
        store_values(v, ctx, &collect, &plan.items)
            .await?
            .into_iter()
            .map(|t| t.token)
            .collect()
    } else {
        Vec::new()
    };
    // Taken out of the request (which would wipe it on drop): the response
    // that carries it on wipes it instead, and each leaf replaced below is
    // wiped as it goes.
    let mut document = std::mem::take(&mut req.document);
    let mut fields = Vec::new();
    for change in changes {
        match change {
            Change::Mapped {
                pointer,
                class,
                with,
            } => {
                let token = with.item().and_then(|i| tokens.get(i)).cloned();
                let new = match &with {
                    Replacement::Masked(m) => m.clone(),
                    Replacement::Token(_) | Replacement::Marker(_) => {
                        token.clone().unwrap_or_default()
                    }
                    Replacement::Redacted => format!("[[{}]]", class.as_str()),
                };
                if let Some(slot) = document.pointer_mut(&pointer) {
                    replace_wiped(slot, new);
                }
                fields.push(RecordField {
                    pointer,
                    class: class.as_str().to_string(),
                    action: with.action().to_string(),
                    token,
                    start: None,
                    end: None,
                });
            }
            Change::Scanned { pointer, spans } => {
                if let Some(slot) = document.pointer_mut(&pointer) {
                    if let Value::String(text) = slot {
                        let new = render(text, &spans, &tokens);
                        replace_wiped(slot, new);
                    }
                }
                for s in spans {
                    fields.push(RecordField {
                        pointer: pointer.clone(),
                        class: s.found.class.as_str().to_string(),
                        action: s.with.action().to_string(),
                        token: s.with.item().and_then(|i| tokens.get(i)).cloned(),
                        start: Some(s.found.start),
                        end: Some(s.found.end),
                    });
                }
            }
        }
    }
    Ok(RecordsResponse { document, fields })
}

/// Puts `new` in a leaf's place and wipes the plaintext it held.
fn replace_wiped(slot: &mut Value, new: String) {
    if let Value::String(mut old) = std::mem::replace(slot, Value::String(new)) {
        zeroize::Zeroize::zeroize(&mut old);
    }
}
