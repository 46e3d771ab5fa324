//! The consent ledger and legal-exception approvals, on the [`Store`].
//! Invariants: the consent ledger is append-only (a withdrawal is a new
//! entry, history is never rewritten), and an approval is immutable once
//! granted: it covers one requester, one purpose, named subjects, one case
//! reference, until it expires.

use std::sync::atomic::{AtomicU64, Ordering};

use vault_sdk::wire::{Approval, ConsentEntry};

use zeroize::Zeroizing;

use crate::keys::Keyring;
use crate::store::{scan_prefix_rev, Batch, Space, Store, StoreError};

/// Most entries kept in view for one subject and purpose.
const MAX_HISTORY: usize = 1000;

fn consent_prefix(subject: &str, purpose: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + purpose.len() + 2);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(purpose.as_bytes());
    k.push(0);
    k
}

/// A strictly increasing sequence (microseconds since the epoch, bumped
/// past the last one), so ledger entries sort in the order they were made.
fn next_seq(now_ms: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let want = now_ms.saturating_mul(1000);
    let mut cur = LAST.load(Ordering::Relaxed);
    loop {
        let next = want.max(cur + 1);
        match LAST.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => cur = seen,
        }
    }
}

/// The batch that appends one consent entry.
pub fn append_consent(
    keys: &Keyring,
    subject: &str,
    purpose: &str,
    entry: &ConsentEntry,
) -> Result<Batch, StoreError> {
    append_consent_after(keys, subject, purpose, entry, None)
}

/// As [`append_consent`], after the entry at sequence `newest` (from
/// [`newest_consent_seq`]): the new entry sorts after it even when the
/// clock was set back across a restart (a withdrawal sorting before the
/// consent it withdraws would leave the consent in force); the write is
/// guarded on its key being free. The entry is sealed for its row (see
/// [`Keyring::seal_record`]): no one who can only write the database can
/// record a consent.
pub fn append_consent_after(
    keys: &Keyring,
    subject: &str,
    purpose: &str,
    entry: &ConsentEntry,
    newest: Option<u64>,
) -> Result<Batch, StoreError> {
    let prefix = consent_prefix(subject, purpose);
    let seq = next_seq(entry.time_ms).max(newest.map_or(0, |n| n.saturating_add(1)));
    let mut key = prefix.clone();
    key.extend_from_slice(&seq.to_be_bytes());
    let bytes = Zeroizing::new(
        serde_json::to_vec(entry).map_err(|_| StoreError::Engine("unencodable consent".into()))?,
    );
    let sealed = keys
        .seal_record(Space::Consents, &key, &bytes)
        .map_err(|_| StoreError::Engine("cannot seal the consent".into()))?;
    let mut b = Batch::default();
    b.expect(Space::Consents, key.clone(), None);
    b.put(Space::Consents, key, sealed);
    Ok(b)
}

/// The sequence of the newest entry for `subject` and `purpose`.
pub fn newest_consent_seq(
    store: &dyn Store,
    subject: &str,
    purpose: &str,
) -> Result<Option<u64>, StoreError> {
    let prefix = consent_prefix(subject, purpose);
    let rows = scan_prefix_rev(store, Space::Consents, &prefix, 1)?;
    Ok(rows.first().and_then(|(k, _)| seq_of(k, &prefix)))
}

fn seq_of(key: &[u8], prefix: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(prefix.len()..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The `caller` of an entry that did not open as sealed for its row
/// (forged, moved, or written in the clear before entries were sealed).
/// It stands in the history as a withdrawal, so it never makes consent
/// live, and shows that the row failed.
pub const UNREADABLE: &str = "(failed its integrity check)";

/// Opens one stored ledger row; one that fails is an [`UNREADABLE`]
/// withdrawal at the time its key names.
fn open_entry(keys: &Keyring, key: &[u8], prefix: &[u8], stored: &[u8]) -> ConsentEntry {
    keys.open_record(Space::Consents, key, stored)
        .ok()
        .and_then(|plain| serde_json::from_slice(&plain).ok())
        .unwrap_or_else(|| {
            // Once per process: entries recorded in the clear before they
            // were sealed would otherwise log on every release.
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                tracing::warn!(
                    "A consent ledger entry failed its integrity check (forged, moved, or recorded before entries were sealed); such entries count as withdrawals"
                );
            });
            ConsentEntry {
                given: false,
                policy_version: "-".into(),
                time_ms: seq_of(key, prefix).map_or(0, |s| s / 1000),
                caller: UNREADABLE.into(),
            }
        })
}

/// The newest `limit` entries for `subject` and `purpose`, newest first.
fn newest_entries(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
    purpose: &str,
    limit: usize,
) -> Result<Vec<ConsentEntry>, StoreError> {
    let prefix = consent_prefix(subject, purpose);
    let rows = scan_prefix_rev(store, Space::Consents, &prefix, limit)?;
    Ok(rows
        .iter()
        .map(|(k, v)| open_entry(keys, k, &prefix, v))
        .collect())
}

/// The newest `MAX_HISTORY` entries for `subject` and `purpose` (all of
/// them, mostly), oldest first: the last one is the one in force, however
/// long the history.
pub fn consent_history(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
    purpose: &str,
) -> Result<Vec<ConsentEntry>, StoreError> {
    let mut entries = newest_entries(store, keys, subject, purpose, MAX_HISTORY)?;
    entries.reverse();
    Ok(entries)
}

/// The entry in force for `subject` and `purpose` (the newest), if any:
/// what a release checks, one row read and opened.
pub fn newest_consent(
    store: &dyn Store,
    keys: &Keyring,
    subject: &str,
    purpose: &str,
) -> Result<Option<ConsentEntry>, StoreError> {
    Ok(newest_entries(store, keys, subject, purpose, 1)?.pop())
}

/// Whether the latest entry is a consent to a policy version that still
/// counts (`since`: the oldest version that does).
pub fn consent_is_live(history: &[ConsentEntry], since: Option<&str>) -> bool {
    history.last().is_some_and(|e| {
        e.given
            && since.is_none_or(|s| version_order(&e.policy_version, s).is_some_and(|o| o.is_ge()))
    })
}

/// Whether appending `entry` can end a purpose's live consent (so a
/// release that read it must run again): for a purpose that requires
/// consent, an entry that is not live consent itself, a withdrawal or a
/// consent to a policy version older than `since`.
pub fn ends_consent(entry: &ConsentEntry, requires_consent: bool, since: Option<&str>) -> bool {
    requires_consent && !consent_is_live(std::slice::from_ref(entry), since)
}

/// Whether `version` can be compared with `since` at all (see
/// `version_order`): a consent whose version cannot is never live.
pub fn comparable_version(version: &str, since: &str) -> bool {
    version_order(version, since).is_some()
}

/// Policy versions in their natural order: runs of digits compare as
/// numbers, anything else as text, so `2022-9-1` comes before `2022-10-01`
/// and `v1.9` before `v1.10` (as plain strings both would sort the other way
/// round, and an old consent would count for a newer policy). Versions of
/// different forms have no order: a run of digits against text, two
/// different separators or labels (`v1` against `2024-01-01`: as text, `v`
/// would beat `2` and any letter-led version would count as newest), or a
/// different number of parts (`20220501` against `2024-01-01`: its first
/// number beats 2024, and a consent to the older policy would count).
fn version_order(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            let split = i == bytes.len()
                || bytes.get(i).map(u8::is_ascii_digit) != bytes.get(i - 1).map(u8::is_ascii_digit);
            if split {
                if let Some(p) = s.get(start..i) {
                    out.push((p.bytes().all(|c| c.is_ascii_digit()), p));
                }
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            // The same separators and labels, or no order at all.
            ((false, x), (false, y)) if x == y => std::cmp::Ordering::Equal,
            _ => return None,
        };
        if o.is_ne() {
            return (pa.len() == pb.len()).then_some(o);
        }
    }
    (pa.len() == pb.len()).then_some(std::cmp::Ordering::Equal)
}

/// The batch that stores a granted approval, sealed for its row (see
/// [`Keyring::seal_record`]) so no one who can only write the database can
/// grant one.
pub fn put_approval(keys: &Keyring, a: &Approval) -> Result<Batch, StoreError> {
    let bytes = Zeroizing::new(
        serde_json::to_vec(a).map_err(|_| StoreError::Engine("unencodable approval".into()))?,
    );
    let key = a.id.as_bytes().to_vec();
    let sealed = keys
        .seal_record(Space::Approvals, &key, &bytes)
        .map_err(|_| StoreError::Engine("cannot seal the approval".into()))?;
    let mut b = Batch::default();
    b.expect(Space::Approvals, key.clone(), None);
    b.put(Space::Approvals, key, sealed);
    Ok(b)
}

/// The approval `id`, if one was stored and opens as sealed for its row;
/// one that does not (forged, moved from another row, or written in the
/// clear) is no approval, and is logged by its id.
pub fn get_approval(
    store: &dyn Store,
    keys: &Keyring,
    id: &str,
) -> Result<Option<Approval>, StoreError> {
    if id.is_empty() || id.len() > 64 {
        return Ok(None);
    }
    let Some(stored) = store.get(Space::Approvals, id.as_bytes())? else {
        return Ok(None);
    };
    let opened = keys
        .open_record(Space::Approvals, id.as_bytes(), &stored)
        .ok()
        .and_then(|plain| serde_json::from_slice::<Approval>(&plain).ok())
        .filter(|a| a.id == id);
    if opened.is_none() {
        tracing::warn!(
            approval = id,
            "A stored approval failed its integrity check and was refused"
        );
    }
    Ok(opened)
}

/// The `Meta` row that marks approval `id` as used: an approval is of one
/// disclosure (SPEC), and the request that makes it writes this row in the
/// batch of its audit events, guarded on its absence.
pub fn approval_used_key(id: &str) -> Vec<u8> {
    [b"approval-used/".as_slice(), id.as_bytes()].concat()
}

/// Whether approval `id` served a disclosure already.
pub fn approval_used(store: &dyn Store, id: &str) -> Result<bool, StoreError> {
    Ok(store.get(Space::Meta, &approval_used_key(id))?.is_some())
}

/// Why an approval does not cover a disclosure, as the per-token reason.
/// `used`: it served a disclosure already.
pub fn check_approval(
    a: Option<&Approval>,
    used: bool,
    caller: &str,
    purpose: &str,
    reference: &str,
    subject: &str,
    now_ms: u64,
) -> Result<(), &'static str> {
    let a = a.ok_or("approval_not_found")?;
    if a.requester != caller || a.purpose != purpose {
        // Someone else's approval is, to this caller, no approval at all.
        return Err("approval_not_found");
    }
    if a.reference != reference {
        return Err("reference_mismatch");
    }
    if used {
        return Err("approval_used");
    }
    if now_ms >= a.expires_ms {
        return Err("approval_expired");
    }
    if !a.subjects.iter().any(|s| s == subject) {
        return Err("subject_not_covered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::store::MemoryStore;

    fn entry(given: bool, v: &str, t: u64) -> ConsentEntry {
        ConsentEntry {
            given,
            policy_version: v.into(),
            time_ms: t,
            caller: "app".into(),
        }
    }

    #[test]
    fn the_ledger_keeps_history_and_the_last_entry_decides() {
        let store = MemoryStore::new();
        let keys = keyring(&store);
        for e in [
            entry(true, "2022-05-01", 5),
            entry(false, "2022-05-01", 5),
            entry(true, "2024-01-01", 5),
        ] {
            store
                .write(append_consent(&keys, "s1", "user_specified", &e).unwrap())
                .unwrap();
        }
        store
            .write(append_consent(&keys, "s1", "user_specifiedx", &entry(false, "x", 1)).unwrap())
            .unwrap();
        let h = consent_history(&store, &keys, "s1", "user_specified").unwrap();
        assert_eq!(
            h.iter().map(|e| e.given).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert!(consent_is_live(&h, None));
        assert!(consent_is_live(&h, Some("2024-01-01")));
        assert!(!consent_is_live(&h, Some("2025-01-01")));
        assert!(!consent_is_live(&h[..2], None));
        assert!(!consent_is_live(&[], None));
        assert!(consent_history(&store, &keys, "s", "user_specified")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn policy_versions_compare_in_their_natural_order() {
        use std::cmp::Ordering::*;
        for (a, b, o) in [
            ("2022-9-1", "2022-10-01", Less),
            ("2022-10-01", "2022-10-1", Equal),
            ("2024-01-01", "2022-05-01", Greater),
            ("v1.9", "v1.10", Less),
            ("v2.0", "v1.10", Greater),
            ("12", "9", Greater),
        ] {
            assert_eq!(version_order(a, b), Some(o), "{a} {b}");
        }
        let h = [entry(true, "2022-9-1", 1)];
        assert!(!consent_is_live(&h, Some("2022-10-01")));
        assert!(consent_is_live(&h, Some("2022-09-01")));
        // Digits against letters have no order, and such a consent never
        // counts against a date.
        // Nor have versions with more or fewer parts: a compact date, a
        // bare number, a year, a suffix.
        for v in [
            "v1",
            "draft",
            "A",
            "2024a",
            "2024/01/01",
            "20220501",
            "99999",
            "2024",
            "2024-01",
            "2024-01-01-b",
            "v2",
        ] {
            assert_eq!(version_order(v, "2024-01-01"), None, "{v}");
            assert!(
                !consent_is_live(&[entry(true, v, 1)], Some("2024-01-01")),
                "{v}"
            );
        }
    }

    #[test]
    fn a_withdrawal_after_the_clock_went_back_still_comes_last() {
        let store = MemoryStore::new();
        let keys = keyring(&store);
        // A consent written while the clock ran a day ahead.
        let ahead = next_seq(1) + 86_400_000_000 * 20_000;
        store
            .write(
                append_consent_after(
                    &keys,
                    "s",
                    "user_specified",
                    &entry(true, "2024-01-01", 1),
                    Some(ahead),
                )
                .unwrap(),
            )
            .unwrap();
        let newest = newest_consent_seq(&store, "s", "user_specified").unwrap();
        assert_eq!(newest, Some(ahead + 1));
        store
            .write(
                append_consent_after(
                    &keys,
                    "s",
                    "user_specified",
                    &entry(false, "2024-01-01", 2),
                    newest,
                )
                .unwrap(),
            )
            .unwrap();
        let h = consent_history(&store, &keys, "s", "user_specified").unwrap();
        assert_eq!(h.iter().map(|e| e.given).collect::<Vec<_>>(), [true, false]);
        assert!(!consent_is_live(&h, None));
    }

    #[test]
    fn a_withdrawal_counts_however_long_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = crate::store::RocksStore::open(dir.path()).unwrap();
        let memory = MemoryStore::new();
        for store in [&rocks as &dyn Store, &memory] {
            let keys = keyring(store);
            let mut b = Batch::default();
            for _ in 0..MAX_HISTORY + 5 {
                b.absorb(
                    append_consent(&keys, "s1", "user_specified", &entry(true, "2024-01-01", 5))
                        .unwrap(),
                );
            }
            store.write(b).unwrap();
            store
                .write(
                    append_consent(
                        &keys,
                        "s1",
                        "user_specified",
                        &entry(false, "2024-01-01", 6),
                    )
                    .unwrap(),
                )
                .unwrap();
            let h = consent_history(store, &keys, "s1", "user_specified").unwrap();
            assert_eq!(h.len(), MAX_HISTORY);
            assert!(
                !h.last().unwrap().given,
                "the withdrawal is the newest entry"
            );
            assert!(!consent_is_live(&h, None));
            store
                .write(
                    append_consent(&keys, "s1", "user_specified", &entry(true, "2024-01-01", 7))
                        .unwrap(),
                )
                .unwrap();
            let h = consent_history(store, &keys, "s1", "user_specified").unwrap();
            assert!(consent_is_live(&h, None));
            assert!(!h[h.len() - 2].given);
        }
    }

    #[test]
    fn approvals_cover_only_their_scope() {
        let a = Approval {
            id: "a1".into(),
            approver: "officer".into(),
            requester: "app".into(),
            purpose: "criminal_investigation".into(),
            subjects: vec!["s1".into()],
            reference: "case-17".into(),
            created_ms: 0,
            expires_ms: 100,
        };
        let store = MemoryStore::new();
        let keys = keyring(&store);
        store.write(put_approval(&keys, &a).unwrap()).unwrap();
        // Ids are never reused.
        assert!(store.write(put_approval(&keys, &a).unwrap()).is_err());
        let got = get_approval(&store, &keys, "a1").unwrap();
        let ok = |caller, purpose, reference, subject, now| {
            check_approval(
                got.as_ref(),
                false,
                caller,
                purpose,
                reference,
                subject,
                now,
            )
        };
        assert_eq!(
            ok("app", "criminal_investigation", "case-17", "s1", 50),
            Ok(())
        );
        assert_eq!(
            ok("app", "criminal_investigation", "case-17", "s1", 100),
            Err("approval_expired")
        );
        assert_eq!(
            ok("app", "criminal_investigation", "case-17", "s2", 50),
            Err("subject_not_covered")
        );
        assert_eq!(
            ok("app", "criminal_investigation", "case-18", "s1", 50),
            Err("reference_mismatch")
        );
        assert_eq!(
            ok("other", "criminal_investigation", "case-17", "s1", 50),
            Err("approval_not_found")
        );
        assert_eq!(
            ok("app", "public_safety_health", "case-17", "s1", 50),
            Err("approval_not_found")
        );
        assert_eq!(
            check_approval(None, false, "app", "x", "r", "s1", 0),
            Err("approval_not_found")
        );
        assert!(get_approval(&store, &keys, "").unwrap().is_none());
    }

    fn keyring(store: &dyn Store) -> Keyring {
        Keyring::open(
            &crate::secret::SecretKey::from_slice(&[5; 32]).unwrap(),
            store,
        )
        .unwrap()
    }

    fn approval(id: &str, requester: &str) -> Approval {
        Approval {
            id: id.into(),
            approver: "officer".into(),
            requester: requester.into(),
            purpose: "criminal_investigation".into(),
            subjects: vec!["victim".into()],
            reference: "case-17".into(),
            created_ms: 0,
            expires_ms: u64::MAX,
        }
    }

    /// An entry that leaves no live consent ends it (a release that read the
    /// consent runs again); a consent given to the current policy does not,
    /// nor anything for a purpose that does not rest on consent.
    #[test]
    fn a_withdrawal_or_an_outdated_consent_ends_consent() {
        let since = Some("2024-06-01");
        assert!(ends_consent(&entry(false, "2024-06-01", 1), true, since));
        assert!(ends_consent(&entry(true, "2023-01-01", 1), true, since));
        assert!(!ends_consent(&entry(true, "2024-06-01", 1), true, since));
        assert!(!ends_consent(&entry(true, "1", 1), true, None));
        assert!(
            !ends_consent(&entry(false, "1", 1), false, None),
            "not read"
        );
    }

    #[test]
    fn a_consent_written_into_the_database_never_counts() {
        let store = MemoryStore::new();
        let keys = keyring(&store);
        store
            .write(
                append_consent(
                    &keys,
                    "s1",
                    "user_specified",
                    &entry(false, "2024-01-01", 5),
                )
                .unwrap(),
            )
            .unwrap();
        let live = |store: &MemoryStore| {
            let newest = newest_consent(store, &keys, "s1", "user_specified").unwrap();
            consent_is_live(newest.as_slice(), None)
        };
        assert!(!live(&store));
        // A consent row in the clear after the withdrawal, as the vault
        // once stored them: it stands as a failed withdrawal.
        let forged = serde_json::to_vec(&entry(true, "2024-01-01", 6)).unwrap();
        let mut key = consent_prefix("s1", "user_specified");
        key.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
        let mut b = Batch::default();
        b.put(Space::Consents, key.clone(), forged);
        store.write(b).unwrap();
        assert!(!live(&store));
        let h = consent_history(&store, &keys, "s1", "user_specified").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].caller, UNREADABLE);
        assert!(!h[1].given);
        // A genuine consent of another subject moved here: the same.
        store
            .write(
                append_consent(&keys, "s2", "user_specified", &entry(true, "2024-01-01", 7))
                    .unwrap(),
            )
            .unwrap();
        let other = scan_prefix_rev(
            &store,
            Space::Consents,
            &consent_prefix("s2", "user_specified"),
            1,
        )
        .unwrap();
        let mut b = Batch::default();
        b.put(Space::Consents, key, other[0].1.clone());
        store.write(b).unwrap();
        assert!(!live(&store));
        // And a consent the vault records counts.
        store
            .write(
                append_consent_after(
                    &keys,
                    "s1",
                    "user_specified",
                    &entry(true, "2024-01-01", 8),
                    newest_consent_seq(&store, "s1", "user_specified").unwrap(),
                )
                .unwrap(),
            )
            .unwrap();
        assert!(live(&store));
    }

    fn put_raw(store: &MemoryStore, id: &str, bytes: Vec<u8>) {
        let mut b = Batch::default();
        b.put(Space::Approvals, id.as_bytes().to_vec(), bytes);
        store.write(b).unwrap();
    }

    #[test]
    fn an_approval_written_into_the_database_is_no_approval() {
        let store = MemoryStore::new();
        let keys = keyring(&store);
        // Stored sealed: neither the subject nor the reference in the clear.
        store
            .write(put_approval(&keys, &approval("apr-1", "app")).unwrap())
            .unwrap();
        let raw = store.get(Space::Approvals, b"apr-1").unwrap().unwrap();
        assert!(!raw.windows(6).any(|w| w == b"victim"));
        assert!(get_approval(&store, &keys, "apr-1").unwrap().is_some());
        // In the clear, as the vault once stored them.
        let forged = serde_json::to_vec(&approval("apr-2", "app")).unwrap();
        put_raw(&store, "apr-2", forged);
        assert_eq!(get_approval(&store, &keys, "apr-2").unwrap(), None);
        // A genuine one copied to another id.
        put_raw(&store, "apr-3", raw.clone());
        assert_eq!(get_approval(&store, &keys, "apr-3").unwrap(), None);
        // Sealed under another root.
        let other_store = MemoryStore::new();
        let other = Keyring::open(
            &crate::secret::SecretKey::from_slice(&[6; 32]).unwrap(),
            &other_store,
        )
        .unwrap();
        let foreign = put_approval(&other, &approval("apr-4", "app")).unwrap();
        other_store.write(foreign).unwrap();
        let bytes = other_store
            .get(Space::Approvals, b"apr-4")
            .unwrap()
            .unwrap();
        put_raw(&store, "apr-4", bytes);
        assert_eq!(get_approval(&store, &keys, "apr-4").unwrap(), None);
        // The genuine one still opens after a key rotation.
        store.write(keys.rotation(1).unwrap().0).unwrap();
        let rotated = keys.reload(&store).unwrap();
        assert!(get_approval(&store, &rotated, "apr-1").unwrap().is_some());
    }
}
