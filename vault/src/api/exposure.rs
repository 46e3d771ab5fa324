//! `GET /v1/admin/incidents/exposure?from=&to=&caller=`: for breach
//! notification, the subjects whose plaintext (full or masked) was released
//! in a time window, optionally by one caller, from the audit log. The
//! window is found by binary search over the chain, so the cost follows
//! the events in the window, not the size of the log.

use std::collections::{BTreeMap, BTreeSet};

use vault_sdk::wire::{ExposedSubject, ExposureReport};

use super::{percent_decode, require_officer, ApiError, Ctx};
use crate::audit;
use crate::server::Vault;

#[derive(Default)]
struct Tally {
    releases: u64,
    classes: BTreeSet<String>,
    callers: BTreeSet<String>,
    first_ms: u64,
    last_ms: u64,
}

pub async fn exposure(
    v: &std::sync::Arc<Vault>,
    ctx: &Ctx,
    query: Option<&str>,
) -> Result<ExposureReport, ApiError> {
    require_officer(ctx)?;
    let (mut from, mut to, mut caller) = (None, None, None);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let val =
            percent_decode(raw).ok_or(ApiError::BadRequest("bad percent-encoding in the query"))?;
        match k {
            "from" => {
                from = Some(
                    val.parse::<u64>()
                        .map_err(|_| ApiError::BadRequest("from: Unix time in ms"))?,
                )
            }
            "to" => {
                to = Some(
                    val.parse::<u64>()
                        .map_err(|_| ApiError::BadRequest("to: Unix time in ms"))?,
                )
            }
            "caller" if !val.is_empty() && val.len() <= 128 => caller = Some(val),
            _ => {
                return Err(ApiError::BadRequest(
                    "parameters: from, to (Unix ms) and optional caller",
                ))
            }
        }
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(ApiError::BadRequest("from and to are required"));
    };
    if from >= to {
        return Err(ApiError::BadRequest("from must be before to"));
    }
    let who = caller.clone();
    let (read, tallies) = crate::http::off_runtime(v, ctx, move |v, deadline| {
        let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
        let read = audit::for_each_in_window(v.store.as_ref(), from, to, deadline, |e| {
            let released = matches!(e.outcome.as_str(), "released" | "released_masked");
            if !released || who.as_deref().is_some_and(|c| c != e.caller) {
                return;
            }
            let Some(subject) = e.subject else { return };
            let t = tallies.entry(subject).or_default();
            if t.releases == 0 {
                t.first_ms = e.time_ms;
            }
            t.releases += 1;
            t.last_ms = e.time_ms;
            t.classes.extend(e.class);
            t.callers.insert(e.caller);
        });
        read.map(|r| (r, tallies))
            .map_err(super::subjects::walk_error)
    })
    .await?;
    let subjects = tallies
        .into_iter()
        .map(|(subject, t)| ExposedSubject {
            subject,
            releases: t.releases,
            classes: t.classes.into_iter().collect(),
            callers: t.callers.into_iter().collect(),
            first_ms: t.first_ms,
            last_ms: t.last_ms,
        })
        .collect();
    Ok(ExposureReport {
        from_ms: from,
        to_ms: to,
        caller,
        events_read: read,
        subjects,
    })
}
