//! The tamper-evident audit trail. Each event's hash is SHA-256 over the
//! previous event's hash and the event's own canonical JSON (with an empty
//! `hash`), events are keyed by a gapless sequence from 1, and the head
//! (last sequence and hash) is stored beside them in the same atomic batch.
//! So a changed, inserted, removed or reordered event, or a cut-off tail,
//! breaks the chain that [`verify`] walks. Events never hold values.

use sha2::{Digest, Sha256};
use vault_sdk::wire::AuditEvent;

use crate::store::{Space, Store, StoreError};

/// Meta key of the chain head: sequence (8 bytes BE) then hash (32 bytes).
pub const HEAD_KEY: &[u8] = b"audit/head";

/// The hash before the first event.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// An event before the commit pipeline gives it a sequence, time and hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draft {
    pub request_id: String,
    pub caller: String,
    pub action: &'static str,
    pub purpose: Option<String>,
    pub subject: Option<String>,
    pub class: Option<String>,
    pub token: Option<String>,
    pub outcome: &'static str,
    pub reference: Option<String>,
    pub approval: Option<String>,
    pub requester: Option<String>,
    pub reason: Option<String>,
}

impl Draft {
    pub fn into_event(self, seq: u64, time_ms: u64) -> AuditEvent {
        AuditEvent {
            seq,
            time_ms,
            request_id: self.request_id,
            caller: self.caller,
            action: self.action.to_string(),
            purpose: self.purpose,
            subject: self.subject,
            class: self.class,
            token: self.token,
            outcome: self.outcome.to_string(),
            reference: self.reference,
            approval: self.approval,
            requester: self.requester,
            reason: self.reason,
            hash: String::new(),
        }
    }
}

/// The chain position after some event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: GENESIS,
    };

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.hash);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Head> {
        let (seq, hash) = bytes.split_first_chunk::<8>()?;
        let hash: [u8; 32] = hash.try_into().ok()?;
        Some(Head {
            seq: u64::from_be_bytes(*seq),
            hash,
        })
    }

    /// Reads the stored head; an empty log has [`Head::EMPTY`].
    pub fn load(store: &dyn Store) -> Result<Head, AuditError> {
        match store.get(Space::Meta, HEAD_KEY)? {
            None => Ok(Head::EMPTY),
            Some(b) => Head::decode(&b).ok_or(AuditError::Corrupt { seq: 0 }),
        }
    }

    /// Reads the stored head and checks it is where the events end: the
    /// event it names is there with its hash, and no event lies past it
    /// (none at all for an empty head). The next event goes at `seq + 1`
    /// with a plain put, so a head deleted or moved back (a partial
    /// restore, an edit) would have the vault overwrite the events after
    /// it. Two reads; the whole chain is `verify`'s to check.
    pub fn load_checked(store: &dyn Store) -> Result<Head, AuditError> {
        let head = Head::load(store)?;
        let mismatch = |why| AuditError::HeadMismatch { seq: head.seq, why };
        let Some(after) = head.seq.checked_add(1) else {
            return Err(mismatch("no sequence number follows it"));
        };
        if head.seq > 0 {
            let stored = store
                .get(Space::Audit, &seq_key(head.seq))?
                .ok_or(mismatch("its event is missing"))?;
            let event: AuditEvent = serde_json::from_slice(&stored)
                .map_err(|_| AuditError::Corrupt { seq: head.seq })?;
            if event.seq != head.seq || event.hash != hex::encode(head.hash) {
                return Err(mismatch("its event has another hash"));
            }
        }
        // From the first key past the head's, whatever its length.
        let from = if head.seq == 0 {
            Vec::new()
        } else {
            seq_key(after)
        };
        if !store.scan(Space::Audit, &from, None, 1)?.is_empty() {
            return Err(mismatch("events lie past it"));
        }
        Ok(head)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit event {seq} cannot be decoded")]
    Corrupt { seq: u64 },
    #[error("the audit log's head (event {seq}) does not match its events: {why}; the database was changed outside the vault or restored in part, and new events would overwrite old ones (run `vault audit verify`)")]
    HeadMismatch { seq: u64, why: &'static str },
    #[error("the walk of the audit log ran out of time")]
    TimedOut,
}

/// When a walk of the log gives up: the request it serves has run out of
/// time. The walk runs on the blocking pool, where the request's timeout
/// does not reach it; it looks at this between pages.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Option<std::time::Instant>);

impl Deadline {
    /// A walk that runs to its end (offline tools, tests).
    pub const NEVER: Deadline = Deadline(None);

    pub fn at(t: std::time::Instant) -> Deadline {
        Deadline(Some(t))
    }

    fn check(self) -> Result<(), AuditError> {
        match self.0 {
            Some(t) if std::time::Instant::now() >= t => Err(AuditError::TimedOut),
            _ => Ok(()),
        }
    }
}

/// Seals `event` onto the chain after `prev`: fills in its hash and returns
/// the new head with the stored bytes.
pub fn chain(prev: &Head, event: &mut AuditEvent) -> (Head, Vec<u8>) {
    event.hash.clear();
    let canonical = serde_json::to_vec(&*event).unwrap_or_default();
    let hash = hash_of(&prev.hash, &canonical);
    event.hash = hex::encode(hash);
    // `hash` is the last field, so the sealed form is the canonical one with
    // the empty `"hash":""` filled in: one serialization, not two.
    let bytes = match canonical.strip_suffix(b"\"}") {
        Some(open) if open.ends_with(b"\"hash\":\"") => {
            let mut out = Vec::with_capacity(canonical.len() + event.hash.len());
            out.extend_from_slice(open);
            out.extend_from_slice(event.hash.as_bytes());
            out.extend_from_slice(b"\"}");
            out
        }
        _ => serde_json::to_vec(&*event).unwrap_or_default(),
    };
    (
        Head {
            seq: event.seq,
            hash,
        },
        bytes,
    )
}

/// The hash of an event whose `hash` field is empty, chained onto `prev`.
fn event_hash(prev: &[u8; 32], unsealed: &AuditEvent) -> [u8; 32] {
    hash_of(prev, &serde_json::to_vec(unsealed).unwrap_or_default())
}

fn hash_of(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

pub fn seq_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

/// The outcome of walking the whole chain.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        events: u64,
    },
    /// The first event at which the chain breaks, and why.
    Broken {
        seq: u64,
        why: &'static str,
    },
}

/// Walks every event from sequence 1 and checks sequence, hash and head.
pub fn verify(store: &dyn Store) -> Result<Verdict, AuditError> {
    verify_anchored(store, &[])
}

/// A chain head recorded outside the database: `SEQ:HASH` (hex), as the
/// server logs it (`Audit anchor`).
pub fn parse_anchor(s: &str) -> Option<Head> {
    let (seq, hash) = s.trim().split_once(':')?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).ok()?;
    Some(Head {
        seq: seq.parse().ok().filter(|&n| n > 0)?,
        hash: h,
    })
}

/// As [`verify`], and each of `anchors` must be on the chain. The chain is
/// plain SHA-256, so whoever can write the database can rewrite its tail,
/// hashes and head included, and still verify; a head recorded elsewhere
/// (the server's log, a monitoring system) cannot be rewritten with it, so
/// an edit, a removal or a truncation before it shows.
///
/// Whatever the database holds, tampering is a [`Verdict::Broken`] naming
/// the first event it breaks, never an error: a row under a key that is not
/// a sequence number (anywhere, a page's end included) and an unreadable
/// head too. `Err` is left for the store failing to answer.
pub fn verify_anchored(store: &dyn Store, anchors: &[Head]) -> Result<Verdict, AuditError> {
    let mut prev = Head::EMPTY;
    // From the very first key, not `seq_key(1)`: a row before event 1
    // (`seq_key(0)`, a short key) is an inserted event too.
    let mut from = Vec::new();
    loop {
        let rows = store.scan(Space::Audit, &from, None, 1024)?;
        let Some((last_key, _)) = rows.last() else {
            break;
        };
        // The next page starts just past this page's last key, whatever its
        // length: every row is then seen, and the per-row check below judges
        // it (a key that is not 8 bytes never matches `seq_key`).
        let mut next = last_key.clone();
        next.push(0);
        for (key, bytes) in &rows {
            let Some(expected_seq) = prev.seq.checked_add(1) else {
                return Ok(Verdict::Broken {
                    seq: prev.seq,
                    why: "missing or inserted event",
                });
            };
            if key.as_slice() != seq_key(expected_seq).as_slice() {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: "missing or inserted event",
                });
            }
            let Ok(mut event) = serde_json::from_slice::<AuditEvent>(bytes) else {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: "undecodable event",
                });
            };
            if event.seq != expected_seq {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: "event moved",
                });
            }
            let stored = std::mem::take(&mut event.hash);
            let hash = event_hash(&prev.hash, &event);
            if hex::encode(hash) != stored {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: "hash mismatch",
                });
            }
            // The hash covers the event as its fields serialize, so the
            // stored bytes must be exactly that: a field added to a row (a
            // value planted in the log) or any other re-encoding would
            // otherwise verify.
            event.hash = stored;
            if serde_json::to_vec(&event).ok().as_deref() != Some(bytes.as_slice()) {
                return Ok(Verdict::Broken {
                    seq: expected_seq,
                    why: "stored bytes are not the event's own",
                });
            }
            prev = Head {
                seq: expected_seq,
                hash,
            };
            if anchors
                .iter()
                .any(|a| a.seq == prev.seq && a.hash != prev.hash)
            {
                return Ok(Verdict::Broken {
                    seq: prev.seq,
                    why: "differs from an anchor recorded outside the database",
                });
            }
        }
        from = next;
    }
    if let Some(a) = anchors
        .iter()
        .filter(|a| a.seq > prev.seq)
        .min_by_key(|a| a.seq)
    {
        return Ok(Verdict::Broken {
            seq: a.seq,
            why: "the chain ends before an anchor recorded outside the database",
        });
    }
    // The head is judged after the events, so an earlier broken event is
    // the one named; a head that does not decode is where the chain can no
    // longer be confirmed, like one it does not reach.
    let after = prev.seq.saturating_add(1);
    let head = match store.get(Space::Meta, HEAD_KEY)? {
        None => Head::EMPTY,
        Some(b) => match Head::decode(&b) {
            Some(h) => h,
            None => {
                return Ok(Verdict::Broken {
                    seq: after,
                    why: "the stored head cannot be decoded",
                })
            }
        },
    };
    if prev != head {
        return Ok(Verdict::Broken {
            seq: after,
            why: "chain does not reach the stored head",
        });
    }
    Ok(Verdict::Intact { events: prev.seq })
}

/// Logs the chain's head every `interval` when it has moved, and at stop
/// (`stop` must be sent only once nothing commits any more, as
/// [`crate::server::Running::shutdown`] does, so the last anchor covers
/// every event): `Audit anchor seq=N hash=H`, `Audit anchor at stop ...`;
/// and keeps the `vault_audit_head_seq` gauge: anchors for `vault audit
/// verify --anchor`, kept by whatever keeps the logs, outside the database
/// an intruder could rewrite. `start` is the head logged at start (by
/// [`log_start_anchor`], before any request could commit). Holds no
/// value: sequence numbers and hashes only.
pub async fn anchors(
    v: std::sync::Arc<crate::server::Vault>,
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    start: Option<Head>,
) {
    let mut last = start;
    // A sender dropped without a stop (a server dropped, not shut down)
    // counts as one: waiting on it again would spin.
    let mut closed = false;
    loop {
        let stopping = closed || *stop.borrow();
        let store = v.store.clone();
        let head = tokio::task::spawn_blocking(move || Head::load(store.as_ref())).await;
        match head {
            // At stop, the head a next start must continue, moved or not.
            Ok(Ok(head)) if stopping => {
                if head.seq > 0 {
                    let hash = hex::encode(head.hash);
                    tracing::info!(seq = head.seq, hash = %hash, "Audit anchor at stop");
                }
                set_head_gauge(&v, &head);
            }
            Ok(Ok(head)) if last != Some(head) => {
                // An empty chain has nothing to anchor.
                if head.seq > 0 {
                    tracing::info!(seq = head.seq, hash = %hex::encode(head.hash), "Audit anchor");
                }
                set_head_gauge(&v, &head);
                last = Some(head);
            }
            Ok(Ok(_)) => {}
            _ => tracing::warn!("Audit head unreadable; no anchor this time"),
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            r = stop.changed() => closed = r.is_err(),
        }
    }
}

/// Logs the head a starting vault found, `Audit anchor at start`, before
/// anything it serves could commit: whatever the database held (after an
/// offline rewrite, the rewrite's head), to compare with the last anchor
/// of the run before.
pub fn log_start_anchor(v: &crate::server::Vault) -> Option<Head> {
    match Head::load(v.store.as_ref()) {
        Ok(head) => {
            if head.seq > 0 {
                let hash = hex::encode(head.hash);
                tracing::info!(seq = head.seq, hash = %hash, "Audit anchor at start");
            }
            set_head_gauge(v, &head);
            Some(head)
        }
        Err(_) => {
            tracing::warn!("Audit head unreadable; no anchor this time");
            None
        }
    }
}

fn set_head_gauge(v: &crate::server::Vault, head: &Head) {
    v.metrics
        .audit_head_seq
        .set(i64::try_from(head.seq).unwrap_or(i64::MAX));
}

/// Events after `since`, optionally only one subject's, at most `limit`.
pub fn query(
    store: &dyn Store,
    subject: Option<&str>,
    since: u64,
    limit: usize,
    deadline: Deadline,
) -> Result<Vec<AuditEvent>, AuditError> {
    let mut out = Vec::new();
    let mut from = seq_key(since.saturating_add(1));
    while out.len() < limit {
        deadline.check()?;
        let rows = store.scan(Space::Audit, &from, None, 1024)?;
        let Some((last_key, _)) = rows.last() else {
            break;
        };
        let last: [u8; 8] = last_key
            .as_slice()
            .try_into()
            .map_err(|_| AuditError::Corrupt { seq: since })?;
        for (_, bytes) in rows.iter() {
            let event: AuditEvent =
                serde_json::from_slice(bytes).map_err(|_| AuditError::Corrupt { seq: since })?;
            if subject.is_none_or(|s| event.subject.as_deref() == Some(s)) {
                out.push(event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        // A row at the last sequence number (only a damaged store has one)
        // must end the walk: saturating would read it again forever.
        let Some(next) = u64::from_be_bytes(last).checked_add(1) else {
            break;
        };
        from = seq_key(next);
    }
    Ok(out)
}

/// The newest `limit` events that `keep` keeps, oldest first, walking the
/// log from its end (or from just before event `before`), and where older
/// ones may remain: `Some(seq)` to walk on from before `seq`, `None` when
/// the walk reached the log's start. A cap applied after the filter, so
/// events of other kinds cannot push the ones asked for out of the
/// answer. The walk stops as soon as it has `limit` events, and at the
/// deadline with what it has (and where it stopped), unless it has
/// examined nothing yet (`TimedOut`).
pub fn newest(
    store: &dyn Store,
    before: Option<u64>,
    limit: usize,
    deadline: Deadline,
    mut keep: impl FnMut(&AuditEvent) -> bool,
) -> Result<(Vec<AuditEvent>, Option<u64>), AuditError> {
    let mut out = Vec::new();
    let mut to: Option<Vec<u8>> = before.map(seq_key);
    // The oldest event examined so far.
    let mut oldest: Option<u64> = None;
    loop {
        if let Err(e) = deadline.check() {
            return match oldest {
                Some(seq) => {
                    out.reverse();
                    Ok((out, Some(seq)))
                }
                None => Err(e),
            };
        }
        if limit == 0 {
            return Ok((out, oldest.or(before)));
        }
        let rows = store.scan_rev(Space::Audit, &seq_key(0), to.as_deref(), 1024)?;
        let Some((first, _)) = rows.last() else {
            break;
        };
        let next_to = first.clone();
        for (key, bytes) in &rows {
            let seq = <[u8; 8]>::try_from(key.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| AuditError::Corrupt { seq: 0 })?;
            let event: AuditEvent =
                serde_json::from_slice(bytes).map_err(|_| AuditError::Corrupt { seq })?;
            oldest = Some(seq);
            if keep(&event) {
                out.push(event);
                if out.len() == limit {
                    out.reverse();
                    return Ok((out, Some(seq)));
                }
            }
        }
        if rows.len() < 1024 {
            break;
        }
        to = Some(next_to);
    }
    out.reverse();
    Ok((out, None))
}

#[cfg(test)]
mod tests;

/// The time of the chain's last event (0 for an empty chain): where the
/// next event's time starts from, across restarts too.
pub fn head_time(store: &dyn Store, head: &Head) -> Result<u64, AuditError> {
    if head.seq == 0 {
        return Ok(0);
    }
    Ok(event_at(store, head.seq)?.map_or(0, |e| e.time_ms))
}

pub(crate) fn event_at(store: &dyn Store, seq: u64) -> Result<Option<AuditEvent>, AuditError> {
    match store.get(Space::Audit, &seq_key(seq))? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|_| AuditError::Corrupt { seq }),
    }
}

/// The first sequence number whose event is at or after `time_ms`. Event
/// times never decrease along the chain (the committer makes sure), so this
/// is a binary search: O(log n) reads, whatever the size of the log.
pub fn first_at_or_after(store: &dyn Store, time_ms: u64) -> Result<u64, AuditError> {
    let head = Head::load(store)?;
    let (mut lo, mut hi) = (1u64, head.seq.saturating_add(1));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match event_at(store, mid)? {
            Some(e) if e.time_ms < time_ms => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Events with `from_ms <= time < to_ms`, in order, passed to `visit` one
/// at a time; returns how many were read.
pub fn for_each_in_window(
    store: &dyn Store,
    from_ms: u64,
    to_ms: u64,
    deadline: Deadline,
    mut visit: impl FnMut(AuditEvent),
) -> Result<u64, AuditError> {
    let mut seq = first_at_or_after(store, from_ms)?;
    let mut read = 0u64;
    loop {
        deadline.check()?;
        let rows = store.scan(Space::Audit, &seq_key(seq), None, 4096)?;
        let Some((last, _)) = rows.last() else {
            return Ok(read);
        };
        let last = last
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| AuditError::Corrupt { seq })?;
        for (_, bytes) in &rows {
            let event: AuditEvent =
                serde_json::from_slice(bytes).map_err(|_| AuditError::Corrupt { seq })?;
            if event.time_ms >= to_ms {
                return Ok(read);
            }
            read += 1;
            visit(event);
        }
        // Past the last sequence number there is nothing (the sum would
        // overflow, or wrap to a rescan from 0 that never ends).
        let Some(next) = last.checked_add(1) else {
            return Ok(read);
        };
        seq = next;
    }
}
