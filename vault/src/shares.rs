//! The root key split into Shamir shares over GF(256) (`blahaj`), and the
//! collector that puts it back together during unseal. Invariants: a share is
//! printed once by `vault operator init` and never stored; every buffer that
//! held a share or the recombined key is zeroized; the collector never says
//! which share was wrong, only that the set did not open the vault; the
//! shares that count come from as many different officers as the threshold.
//!
//! Wire form of a share: `vs1-` then 76 hex characters, the bytes
//! `threshold ‖ x ‖ y[32] ‖ check[3]`, where `check` is the first three bytes
//! of SHA-256 over the rest. The check catches typing mistakes at once; it is
//! no integrity protection (the wrapped keys are: a wrong set fails to unwrap
//! them).

use std::collections::BTreeMap;
use std::time::Instant;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::secret::SecretKey;

const PREFIX: &str = "vs1-";
const BODY: usize = 2 + 32;
const CHECK: usize = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("threshold must be 2..=shares and shares at most 16")]
    Parameters,
    #[error("this is not a vault key share (expected vs1- and 76 hex characters)")]
    Malformed,
    #[error("this share was already given")]
    Duplicate,
    #[error("this share belongs to a split with another threshold")]
    WrongThreshold,
    #[error("this is not a share of this vault's key")]
    NotOurs,
    #[error("this officer has already given a share; the next must come from another officer")]
    SameOfficer,
}

/// Splits `root` into `shares` shares, any `threshold` of which recover it.
pub fn split(
    root: &SecretKey<32>,
    shares: u8,
    threshold: u8,
) -> Result<Vec<Zeroizing<String>>, ShareError> {
    if threshold < 2 || shares < threshold || shares > 16 {
        return Err(ShareError::Parameters);
    }
    let dealer = blahaj::Sharks(threshold).dealer(root.expose_secret());
    Ok(dealer
        .take(usize::from(shares))
        .map(|s| {
            let raw = Zeroizing::new(Vec::from(&s));
            let mut body = Zeroizing::new(Vec::with_capacity(BODY + CHECK));
            body.push(threshold);
            body.extend_from_slice(&raw);
            let check = Sha256::digest(&body[..]);
            body.extend_from_slice(check.get(..CHECK).unwrap_or_default());
            // Hex straight into the share's own buffer, sized up front: no
            // temporary `String` of the share is left behind unwiped.
            let mut hex = Zeroizing::new(vec![0u8; 2 * body.len()]);
            let mut text = Zeroizing::new(String::with_capacity(PREFIX.len() + hex.len()));
            text.push_str(PREFIX);
            if hex::encode_to_slice(&body[..], &mut hex[..]).is_ok() {
                text.push_str(std::str::from_utf8(&hex).unwrap_or_default());
            }
            text
        })
        .collect())
}

/// A share's fingerprint, kept at init so each share given at unseal can
/// be checked alone: (x, hex of SHA-256 over a label and the share's body).
/// A share is 32 uniformly random bytes for any threshold of 2 or more, so
/// its fingerprint says nothing of it, nor of the key. `None` for text that
/// is no share.
pub fn fingerprint(text: &str) -> Option<(u8, String)> {
    let p = parse(text).ok()?;
    Some((p.x, digest(&p)))
}

fn digest(p: &Parsed) -> String {
    let mut h = Sha256::new();
    h.update(b"vault/share-fingerprint/v1\0");
    h.update([p.threshold]);
    h.update(&p.bytes[..]);
    hex::encode(h.finalize())
}

/// One parsed share: its threshold, x coordinate and `blahaj` bytes.
struct Parsed {
    threshold: u8,
    x: u8,
    bytes: Zeroizing<Vec<u8>>,
}

fn parse(text: &str) -> Result<Parsed, ShareError> {
    let hex_part = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(ShareError::Malformed)?;
    let mut raw = Zeroizing::new(vec![0u8; BODY + CHECK]);
    hex::decode_to_slice(hex_part, &mut raw[..]).map_err(|_| ShareError::Malformed)?;
    let (body, check) = raw.split_at(BODY);
    let want = Sha256::digest(body);
    if want.get(..CHECK) != Some(check) {
        return Err(ShareError::Malformed);
    }
    let (&threshold, share) = body.split_first().ok_or(ShareError::Malformed)?;
    let &x = share.first().ok_or(ShareError::Malformed)?;
    if threshold < 2 || x == 0 {
        return Err(ShareError::Malformed);
    }
    Ok(Parsed {
        threshold,
        x,
        bytes: Zeroizing::new(share.to_vec()),
    })
}

/// How long an officer's ask to resume counts.
pub const RESUME_ASK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How long a share given at unseal counts. The set must be completed
/// within it: a share is not left in memory for days, ready for whoever
/// later holds one more officer's certificate and share, after the team
/// gave up on the unseal.
pub const SHARE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One share given at unseal: its bytes, who gave it and when.
struct Given {
    bytes: Zeroizing<Vec<u8>>,
    officer: String,
    at: Instant,
}

impl Given {
    fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.at) < SHARE_LIFETIME
    }
}

/// What an unseal attempt has collected so far, and from whom: the
/// threshold is one of officers, not of shares, so one officer holding
/// others' shares (gathered by a ruse, or from a shared safe) cannot unseal
/// alone.
#[derive(Default)]
pub struct Collector {
    threshold: Option<u8>,
    /// The shares given, by x coordinate; one per officer. Only those
    /// given within [`SHARE_LIFETIME`] count.
    got: BTreeMap<u8, Given>,
    /// The officers who asked to resume (a root key from a file or a
    /// command, after an officer's seal), when, and under which seal (the
    /// key state's seal count).
    resumers: BTreeMap<String, (std::time::Instant, u64)>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("threshold", &self.threshold)
            .field("progress", &self.got.len())
            .finish()
    }
}

/// The outcome of adding a share.
#[derive(Debug)]
pub enum Progress {
    /// More shares are needed: `(have, need)`.
    Need(usize, usize),
    /// The threshold is reached; the recombined root key, to be tried.
    Complete(SecretKey<32>),
}

impl Collector {
    /// Adds one share given by `officer` (the caller's name) at `now`. A
    /// malformed or duplicate share, one whose fingerprint is not among
    /// `fingerprints` (when the vault kept them), or a second share from
    /// an officer who already gave one, leaves the progress as it was: a
    /// forged share cannot take a genuine one's place and spoil the set,
    /// and one officer counts once. Shares given [`SHARE_LIFETIME`] or more
    /// before `now` are forgotten first. On [`Progress::Complete`] the
    /// collector is emptied.
    pub fn add(
        &mut self,
        officer: &str,
        text: &str,
        expected_threshold: u8,
        fingerprints: &BTreeMap<u8, String>,
        now: Instant,
    ) -> Result<Progress, ShareError> {
        let p = self.validate(officer, text, expected_threshold, fingerprints, now)?;
        self.got.retain(|_, g| g.fresh(now));
        self.threshold = Some(p.threshold);
        self.got.insert(
            p.x,
            Given {
                bytes: p.bytes,
                officer: officer.to_string(),
                at: now,
            },
        );
        let need = usize::from(p.threshold);
        if self.got.len() < need {
            return Ok(Progress::Need(self.got.len(), need));
        }
        let shares: Vec<blahaj::Share> = self
            .got
            .values()
            .filter_map(|g| blahaj::Share::try_from(&g.bytes[..]).ok())
            .collect();
        let secret = Zeroizing::new(
            blahaj::Sharks(p.threshold)
                .recover(&shares)
                .unwrap_or_default(),
        );
        drop(shares);
        self.reset();
        SecretKey::from_slice(&secret)
            .map(Progress::Complete)
            .ok_or(ShareError::Malformed)
    }

    /// Whether [`Collector::add`] would take this share at `now`, without
    /// taking it: so the attempt can be logged before it counts.
    pub fn check(
        &self,
        officer: &str,
        text: &str,
        expected_threshold: u8,
        fingerprints: &BTreeMap<u8, String>,
        now: Instant,
    ) -> Result<(), ShareError> {
        self.validate(officer, text, expected_threshold, fingerprints, now)
            .map(drop)
    }

    fn validate(
        &self,
        officer: &str,
        text: &str,
        expected_threshold: u8,
        fingerprints: &BTreeMap<u8, String>,
        now: Instant,
    ) -> Result<Parsed, ShareError> {
        let p = parse(text)?;
        if p.threshold != expected_threshold {
            return Err(ShareError::WrongThreshold);
        }
        if !fingerprints.is_empty() && fingerprints.get(&p.x) != Some(&digest(&p)) {
            return Err(ShareError::NotOurs);
        }
        if self.got.get(&p.x).is_some_and(|g| g.fresh(now)) {
            return Err(ShareError::Duplicate);
        }
        if self
            .got
            .values()
            .any(|g| g.fresh(now) && g.officer == officer)
        {
            return Err(ShareError::SameOfficer);
        }
        Ok(p)
    }

    /// Drops (and wipes) the shares given [`SHARE_LIFETIME`] or more
    /// before `now`, and the asks to resume past theirs.
    pub fn forget_lapsed(&mut self, now: Instant) {
        self.got.retain(|_, g| g.fresh(now));
        self.resumers
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < RESUME_ASK_LIFETIME);
    }

    /// Shares collected so far that still count.
    pub fn progress(&self) -> usize {
        let now = Instant::now();
        self.got.values().filter(|g| g.fresh(now)).count()
    }

    /// Forgets every share given so far.
    pub fn reset(&mut self) {
        self.got.clear();
        self.threshold = None;
        self.resumers.clear();
    }

    /// Records `officer`'s ask to resume, made at `now`; answers how many
    /// distinct officers have asked within [`RESUME_ASK_LIFETIME`] (an older
    /// ask no longer counts: a stolen certificate must not complete an ask
    /// the team set aside).
    /// Asks made under another seal (`seal`, the seal count the ask was
    /// made under) never count: an ask still being logged when an officer
    /// seals again does not survive that seal.
    pub fn resume(&mut self, officer: &str, now: Instant, seal: u64) -> usize {
        self.resumers.retain(|_, (at, s)| {
            *s == seal && now.saturating_duration_since(*at) < RESUME_ASK_LIFETIME
        });
        self.resumers.insert(officer.to_string(), (now, seal));
        self.resumers.len()
    }

    /// How many distinct officers have asked to resume, within the asks'
    /// lifetime.
    pub fn resumers(&self) -> usize {
        self.resumers
            .values()
            .filter(|(at, _)| at.elapsed() < RESUME_ASK_LIFETIME)
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    /// An officer's ask to resume counts once, and only for its lifetime.
    #[test]
    fn asks_to_resume_count_each_officer_once_and_expire() {
        let mut c = Collector::default();
        let t0 = Instant::now();
        assert_eq!(c.resume("officer", t0, 1), 1);
        assert_eq!(c.resume("officer", t0, 1), 1);
        let late = t0 + RESUME_ASK_LIFETIME;
        assert_eq!(c.resume("officer2", late, 1), 1, "the first ask expired");
        assert_eq!(c.resume("officer", late, 1), 2);
        assert_eq!(c.resume("officer3", late, 2), 1, "asks under another seal");
        c.reset();
        assert_eq!(c.resumers(), 0);
    }

    /// No fingerprints kept: a vault initialized before they were.
    fn none() -> BTreeMap<u8, String> {
        BTreeMap::new()
    }

    fn complete(p: Progress) -> SecretKey<32> {
        match p {
            Progress::Complete(k) => k,
            Progress::Need(h, n) => panic!("need {h}/{n}"),
        }
    }

    #[test]
    fn any_threshold_subset_recovers_the_root() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        for (a, b, c) in [(0, 1, 2), (0, 2, 4), (1, 3, 4), (4, 3, 0)] {
            let mut col = Collector::default();
            assert!(matches!(
                col.add("a", &shares[a], 3, &none(), Instant::now())
                    .unwrap(),
                Progress::Need(1, 3)
            ));
            assert!(matches!(
                col.add("b", &shares[b], 3, &none(), Instant::now())
                    .unwrap(),
                Progress::Need(2, 3)
            ));
            let k = complete(
                col.add("c", &shares[c], 3, &none(), Instant::now())
                    .unwrap(),
            );
            assert!(k.ct_eq(&root));
            assert_eq!(col.progress(), 0);
        }
    }

    #[test]
    fn too_few_shares_do_not_recover_and_bad_ones_are_refused() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 3, 3).unwrap();
        let mut col = Collector::default();
        col.add("a", &shares[0], 3, &none(), Instant::now())
            .unwrap();
        assert_eq!(
            col.add("a", &shares[0], 3, &none(), Instant::now())
                .unwrap_err(),
            ShareError::Duplicate
        );
        assert_eq!(
            col.add("b", "vs1-00", 3, &none(), Instant::now())
                .unwrap_err(),
            ShareError::Malformed
        );
        assert_eq!(
            col.add("b", "hello", 3, &none(), Instant::now())
                .unwrap_err(),
            ShareError::Malformed
        );
        // One flipped character fails the check.
        let mut typo = shares[1].to_string();
        let last = typo.pop().unwrap();
        typo.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            col.add("b", &typo, 3, &none(), Instant::now()).unwrap_err(),
            ShareError::Malformed
        );
        assert_eq!(
            col.add("b", &shares[1], 2, &none(), Instant::now())
                .unwrap_err(),
            ShareError::WrongThreshold
        );
        assert_eq!(col.progress(), 1);
        // Shares of another split complete the count but give another key.
        let other = split(&SecretKey::<32>::generate(), 3, 3).unwrap();
        col.add("b", &other[1], 3, &none(), Instant::now()).unwrap();
        let k = complete(col.add("c", &other[2], 3, &none(), Instant::now()).unwrap());
        assert!(!k.ct_eq(&root));
    }

    #[test]
    fn a_forged_share_cannot_spoil_the_set_when_fingerprints_are_kept() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 3, 2).unwrap();
        let prints: BTreeMap<u8, String> = shares.iter().filter_map(|s| fingerprint(s)).collect();
        assert_eq!(prints.len(), 3);
        // A well-formed share of another split at x = 1 (what an insider
        // could make): refused, and the genuine x = 1 still counts.
        let forged = split(&SecretKey::<32>::generate(), 3, 2).unwrap();
        let mut col = Collector::default();
        assert_eq!(
            col.add("a", &forged[0], 2, &prints, Instant::now())
                .unwrap_err(),
            ShareError::NotOurs
        );
        assert_eq!(col.progress(), 0);
        assert!(matches!(
            col.add("a", &shares[0], 2, &prints, Instant::now())
                .unwrap(),
            Progress::Need(1, 2)
        ));
        assert_eq!(
            col.add("b", &forged[1], 2, &prints, Instant::now())
                .unwrap_err(),
            ShareError::NotOurs
        );
        let k = complete(
            col.add("b", &shares[1], 2, &prints, Instant::now())
                .unwrap(),
        );
        assert!(k.ct_eq(&root));
        assert_eq!(fingerprint("hello"), None);
    }

    #[test]
    fn an_officer_counts_once() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 3, 2).unwrap();
        let prints: BTreeMap<u8, String> = shares.iter().filter_map(|s| fingerprint(s)).collect();
        for prints in [prints, none()] {
            let mut col = Collector::default();
            assert!(matches!(
                col.add("officer", &shares[0], 2, &prints, Instant::now())
                    .unwrap(),
                Progress::Need(1, 2)
            ));
            // Another genuine share, from the same officer: refused, and
            // it does not count.
            assert_eq!(
                col.add("officer", &shares[1], 2, &prints, Instant::now())
                    .unwrap_err(),
                ShareError::SameOfficer
            );
            assert_eq!(col.progress(), 1);
            // Another officer completes the set, with that very share.
            let k = complete(
                col.add("officer2", &shares[1], 2, &prints, Instant::now())
                    .unwrap(),
            );
            assert!(k.ct_eq(&root));
            // Completion forgets who gave: the next unseal starts afresh.
            assert!(matches!(
                col.add("officer", &shares[2], 2, &prints, Instant::now())
                    .unwrap(),
                Progress::Need(1, 2)
            ));
            col.reset();
            assert!(matches!(
                col.add("officer", &shares[1], 2, &prints, Instant::now())
                    .unwrap(),
                Progress::Need(1, 2)
            ));
        }
    }

    /// A check says what an add would, and takes nothing.
    #[test]
    fn a_check_takes_nothing() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 3, 2).unwrap();
        let mut col = Collector::default();
        col.check("officer", &shares[0], 2, &none(), Instant::now())
            .unwrap();
        col.check("officer", &shares[0], 2, &none(), Instant::now())
            .unwrap();
        assert_eq!(col.progress(), 0);
        col.add("officer", &shares[0], 2, &none(), Instant::now())
            .unwrap();
        assert_eq!(
            col.check("officer", &shares[1], 2, &none(), Instant::now())
                .unwrap_err(),
            ShareError::SameOfficer
        );
        assert_eq!(
            col.check("officer2", &shares[0], 2, &none(), Instant::now())
                .unwrap_err(),
            ShareError::Duplicate
        );
        assert_eq!(
            col.check("officer2", "vs1-zz", 2, &none(), Instant::now())
                .unwrap_err(),
            ShareError::Malformed
        );
        assert_eq!(col.progress(), 1);
    }

    #[test]
    fn parameters_are_checked_and_debug_is_redacted() {
        let root = SecretKey::<32>::generate();
        assert_eq!(split(&root, 3, 1).unwrap_err(), ShareError::Parameters);
        assert_eq!(split(&root, 2, 3).unwrap_err(), ShareError::Parameters);
        assert_eq!(split(&root, 17, 3).unwrap_err(), ShareError::Parameters);
        let shares = split(&root, 2, 2).unwrap();
        let mut col = Collector::default();
        col.add("a", &shares[0], 2, &none(), Instant::now())
            .unwrap();
        let dbg = format!("{col:?}");
        assert!(
            dbg.contains("progress: 1") && !dbg.contains(&shares[0][4..12]),
            "{dbg}"
        );
    }

    /// A share counts for its lifetime: an unseal left half-done does not
    /// wait for the next officer for ever, and the officer whose share
    /// lapsed may give it again.
    #[test]
    fn shares_lapse_after_their_lifetime() {
        let root = SecretKey::<32>::generate();
        let shares = split(&root, 3, 2).unwrap();
        let mut col = Collector::default();
        let t0 = Instant::now();
        col.add("a", &shares[0], 2, &none(), t0).unwrap();
        let late = t0 + SHARE_LIFETIME;
        // The first share lapsed: the second only starts the count again.
        col.check("a", &shares[1], 2, &none(), late).unwrap();
        assert!(matches!(
            col.add("b", &shares[1], 2, &none(), late).unwrap(),
            Progress::Need(1, 2)
        ));
        // Its officer may give again, and the same share is no duplicate.
        let k = complete(col.add("a", &shares[0], 2, &none(), late).unwrap());
        assert!(k.ct_eq(&root));
        // Within the lifetime, two shares complete the set.
        let mut col = Collector::default();
        col.add("a", &shares[2], 2, &none(), t0).unwrap();
        let within = t0 + SHARE_LIFETIME - std::time::Duration::from_secs(1);
        assert_eq!(
            col.check("a", &shares[1], 2, &none(), within).unwrap_err(),
            ShareError::SameOfficer
        );
        let k = complete(col.add("b", &shares[1], 2, &none(), within).unwrap());
        assert!(k.ct_eq(&root));
        // A lapsed share leaves memory when told, without a next share.
        col.add("a", &shares[0], 2, &none(), t0).unwrap();
        col.forget_lapsed(within);
        assert_eq!(col.got.len(), 1);
        col.forget_lapsed(late);
        assert!(col.got.is_empty());
    }
}
