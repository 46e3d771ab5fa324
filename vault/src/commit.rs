//! Group commit. Every write of the server goes through one committer thread:
//! it takes the first waiting job, drains whatever else is queued, chains their
//! audit events onto the log, and writes it all as one durable batch, so
//! concurrent requests share one WAL sync. Invariants: a job is acknowledged
//! only after its batch (data and audit events together) is durable; a failed
//! write acknowledges nobody, and the next group first lets the store
//! recover and reloads the chain head from it, so the chain goes on from
//! what is durable whether or not the failed batch landed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::audit::{self, Draft, Head};
use crate::metrics::Metrics;
use crate::store::{Batch, Space, Store, StoreError};
use crate::subject_keys::KeyCache;

/// Most jobs folded into one write; bounds the batch and the latency of the
/// first job in it.
const MAX_GROUP: usize = 512;

/// Buckets of [`Recent`], and the subjects each remembers: a subject is
/// forgotten (its bucket's floor raised past it) only when more than
/// [`TOUCH_WAYS`] subjects of one bucket are touched while a release is
/// under way.
const TOUCH_BUCKETS: usize = 1 << 14;
const TOUCH_WAYS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the committer has stopped")]
    Stopped,
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// A release read a subject that a batch dequeued since changed, or
    /// began before a seal or a failed write (`Batch::reads`): nothing was
    /// written; read again.
    #[error("what the release read changed before it was written")]
    Stale,
}

type Reply = oneshot::Sender<Result<(), CommitError>>;

struct Job {
    batch: Batch,
    audit: Vec<Draft>,
    reply: Reply,
}

/// Handle to the committer thread. Dropping it closes the queue and waits for
/// the thread, so the store it holds is closed before the drop returns (an
/// engine left open by a detached thread can abort the process at exit).
pub struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The last group written (or tried), counted from 1, published before
    /// its jobs are answered.
    applied: Arc<AtomicU64>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

impl Committer {
    /// Starts the committer thread over `store`. It stops once the
    /// `Committer` is dropped and its queue is drained.
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Result<Self, CommitError> {
        Self::start_with_cache(store, metrics, None)
    }

    /// As [`Committer::start`], also keeping `cache` true: every write that
    /// touches a subject key makes it forget that subject before the write
    /// is answered.
    pub fn start_with_cache(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        cache: Option<Arc<KeyCache>>,
    ) -> Result<Self, CommitError> {
        let head = Head::load_checked(store.as_ref())?;
        // Event times never decrease along the chain (the exposure report
        // searches it by time): after a restart with the clock set back,
        // they go on from the last one.
        let last_time = audit::head_time(store.as_ref(), &head)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let applied = Arc::new(AtomicU64::new(0));
        let published = applied.clone();
        let thread = std::thread::Builder::new()
            .name("vault-commit".into())
            .spawn(move || {
                let w = Writer {
                    store: store.as_ref(),
                    metrics: &metrics,
                    cache: cache.as_deref(),
                    applied: &published,
                };
                run(&w, rx, head, last_time)
            })
            .map_err(|e| CommitError::Store(StoreError::Engine(e.to_string())))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            applied,
        })
    }

    /// Where the writes stand: every group up to this one has been written
    /// (or failed) and is visible to reads begun after this call. A release
    /// takes it before its first read and sends it in `Batch::reads`.
    pub fn epoch(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Writes `batch` with `audit` events chained onto the log, durably.
    pub async fn commit(&self, batch: Batch, audit: Vec<Draft>) -> Result<(), CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(CommitError::Stopped)?
            .send(Job {
                batch,
                audit,
                reply,
            })
            .map_err(|_| CommitError::Stopped)?;
        rx.await.map_err(|_| CommitError::Stopped)?
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What the committer thread writes with.
struct Writer<'a> {
    store: &'a dyn Store,
    metrics: &'a Metrics,
    cache: Option<&'a KeyCache>,
    applied: &'a AtomicU64,
}

fn run(w: &Writer<'_>, rx: mpsc::Receiver<Job>, mut head: Head, mut last_time: u64) {
    let (store, metrics) = (w.store, w.metrics);
    let mut failed = false;
    let mut screen = Screen::default();
    let mut seq = 0u64;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        seq += 1;
        if failed {
            match resync(store) {
                Ok(h) => {
                    // Event times go on from the landed write's, if it did.
                    last_time = last_time.max(audit::head_time(store, &h).unwrap_or(0));
                    head = h;
                    failed = false;
                    // A failed write may land with the recovery (a replay),
                    // after reads that cached what it changed: what the
                    // cache holds was read before, and goes.
                    if let Some(cache) = w.cache {
                        cache.clear();
                    }
                    metrics.set_store_writable(true);
                    // The failed write may have landed only now, after
                    // reads that did not see it: every release read before
                    // this group runs again.
                    screen.recent.horizon = screen.recent.horizon.max(seq);
                }
                Err(e) => {
                    refuse(metrics, group, &e);
                    w.applied.store(seq, Ordering::Release);
                    continue;
                }
            }
        }
        let min_before = screen.min_decryption;
        let (group, stale) = screen.take(seq, group);
        if !group.is_empty() {
            failed = !write_group(w, seq, &mut head, &mut last_time, group);
        }
        // A new minimum that was not written is not the committer's either
        // (the key change that sent it hands over the stored one once the
        // store recovers).
        if failed {
            screen.min_decryption = min_before;
        }
        // Written, failed or refused: what this group did is visible (or
        // was never done) for every read begun from here.
        w.applied.store(seq, Ordering::Release);
        // Stale releases hear of it only now, so they read again from an
        // epoch that includes this group (and whatever made them stale).
        for reply in stale {
            let _ = reply.send(Err(CommitError::Stale));
        }
    }
}

/// What the committer checks of each job in queue order, before the
/// store checks their preconditions.
#[derive(Default)]
struct Screen {
    /// No job sealed under an older key version passes (`raise_floor`).
    floor: u32,
    /// No release that decrypted under a lower minimum decryption version
    /// passes (`raise_min_decryption`).
    min_decryption: u32,
    recent: Recent,
}

impl Screen {
    /// Takes group number `seq` in queue order: a job that seals new values
    /// under a version below the floor is answered `Conflict` (its request
    /// runs again with the keys of now); a job that raises the floor raises
    /// it for every job after it, in this group and the next. A release
    /// whose reads began before a touch of a subject it released is
    /// refused: returns the jobs to write and the replies of those, to be
    /// answered `Stale` once this group is written.
    fn take(&mut self, seq: u64, group: Vec<Job>) -> (Vec<Job>, Vec<Reply>) {
        let mut kept = Vec::with_capacity(group.len());
        let mut stale = Vec::new();
        for job in group {
            if job.batch.sealed_under.is_some_and(|v| v < self.floor) {
                let _ = job
                    .reply
                    .send(Err(CommitError::Store(StoreError::Conflict)));
                continue;
            }
            if job.batch.reads.as_ref().is_some_and(|r| {
                r.min_decryption < self.min_decryption || self.recent.stale(r.epoch, &r.subjects)
            }) {
                stale.push(job.reply);
                continue;
            }
            if let Some(f) = job.batch.raise_floor {
                self.floor = self.floor.max(f);
            }
            // Set, not raised: an officer may lower the minimum again, and
            // each change carries the whole new value (they are serialized).
            if let Some(m) = job.batch.raise_min_decryption {
                self.min_decryption = m;
            }
            if job.batch.touches_all {
                self.recent.horizon = self.recent.horizon.max(seq);
            }
            for &tag in &job.batch.touches {
                self.recent.touch(tag, seq);
            }
            kept.push(job);
        }
        (kept, stale)
    }
}

/// The last group that touched each subject, in buckets of a few
/// subjects each (a keyed hash picks the bucket), and the last group that
/// touched them all (a seal, a recovery): fixed memory, whatever the rate
/// of touches, and a subject is refused for another's touch only when its
/// bucket overflowed.
struct Recent {
    buckets: Box<[Bucket]>,
    /// Every release read before this group runs again.
    horizon: u64,
}

/// Up to [`TOUCH_WAYS`] subjects, each its tag and the group that last
/// touched it (0: an empty way), and the newest group of a subject it
/// forgot.
#[derive(Clone, Copy, Default)]
struct Bucket {
    ways: [(u64, u64); TOUCH_WAYS],
    floor: u64,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            buckets: vec![Bucket::default(); TOUCH_BUCKETS].into_boxed_slice(),
            horizon: 0,
        }
    }
}

impl Recent {
    fn bucket(tag: u64) -> usize {
        usize::try_from(tag % TOUCH_BUCKETS as u64).unwrap_or(0)
    }

    fn touch(&mut self, tag: u64, seq: u64) {
        let Some(b) = self.buckets.get_mut(Self::bucket(tag)) else {
            return;
        };
        if let Some(way) = b.ways.iter_mut().find(|(t, s)| *s > 0 && *t == tag) {
            way.1 = way.1.max(seq);
            return;
        }
        // The way of the subject touched longest ago (or an empty one):
        // that subject is forgotten.
        if let Some(way) = b.ways.iter_mut().min_by_key(|(_, s)| *s) {
            b.floor = b.floor.max(way.1);
            *way = (tag, seq);
        }
    }

    /// Whether reads begun at `epoch` may have missed a touch of one of
    /// `subjects`: one in a later group, one forgotten since, or a touch of
    /// them all.
    fn stale(&self, epoch: u64, subjects: &[u64]) -> bool {
        epoch < self.horizon
            || subjects.iter().any(|&t| {
                self.buckets.get(Self::bucket(t)).is_none_or(|b| {
                    b.floor > epoch || b.ways.iter().any(|&(tag, s)| tag == t && s > epoch)
                })
            })
    }
}

/// After a failed write: lets the store recover, then reads the chain head
/// back, since a batch that failed may still have landed whole.
fn resync(store: &dyn Store) -> Result<Head, StoreError> {
    store.recover()?;
    Head::load_checked(store).map_err(|e| match e {
        audit::AuditError::Store(e) => e,
        e => StoreError::Engine(e.to_string()),
    })
}

/// Answers every job of a group that cannot be written with `e`.
fn refuse(metrics: &Metrics, group: Vec<Job>, e: &StoreError) {
    let events: usize = group.iter().map(|j| j.audit.len()).sum();
    metrics.audit_failed(u64::try_from(events).unwrap_or(u64::MAX));
    metrics.set_store_writable(false);
    tracing::warn!(error = %e, jobs = group.len(), "Storage not writable");
    for job in group {
        let _ = job.reply.send(Err(CommitError::Store(e.clone())));
    }
}

/// Writes a group as one batch: the jobs whose checks hold, with their
/// audit events chained; a job whose check fails is answered `Conflict`
/// alone. Returns `false` when the store failed.
fn write_group(
    w: &Writer<'_>,
    seq: u64,
    head: &mut Head,
    last_time: &mut u64,
    group: Vec<Job>,
) -> bool {
    let (store, metrics) = (w.store, w.metrics);
    let time = now_ms().max(*last_time);
    let mut batches = Vec::with_capacity(group.len());
    let mut drafts = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        batches.push(job.batch);
        drafts.push(job.audit);
        replies.push(job.reply);
    }
    // Per job, the subject keys it writes (none, mostly).
    let touched: Vec<Vec<Vec<u8>>> = match w.cache {
        Some(_) => batches.iter().map(|b| KeyCache::touched(&b.ops)).collect(),
        None => Vec::new(),
    };
    let all_events: usize = drafts.iter().map(Vec::len).sum();
    let mut next = *head;
    let mut events = 0u64;
    // Chains the kept jobs' events, once the store has said which are kept
    // (it asks once).
    let mut finish = |kept: &[bool]| {
        let mut extra = Batch::default();
        for (audit, _) in drafts.iter_mut().zip(kept).filter(|(_, k)| **k) {
            for draft in std::mem::take(audit) {
                let mut event = draft.into_event(next.seq + 1, time);
                let (h, bytes) = audit::chain(&next, &mut event);
                extra.put(Space::Audit, audit::seq_key(h.seq), bytes);
                next = h;
                events += 1;
            }
        }
        if events > 0 {
            extra.put(Space::Meta, audit::HEAD_KEY.to_vec(), next.encode());
        }
        extra
    };
    let started = Instant::now();
    // A panic in the write (the store, or the chaining above) would end
    // this thread and with it every later write: it is a failed write
    // instead, answered as one, and the next group lets the store recover
    // and reloads the head (`resync`). Nothing is carried over from the
    // unwound write but the drafts and head it was building, dropped here
    // unused; the panic's message (it may hold data) is dropped unread.
    let result = catch_unwind(AssertUnwindSafe(|| store.write_group(batches, &mut finish)))
        .unwrap_or_else(|payload| {
            drop(payload);
            Err(StoreError::Engine("the write panicked".into()))
        });
    // Landed or not (a failed write may have), the keys it touched are
    // forgotten before anyone hears of it.
    if let Some(cache) = w.cache {
        let kept = result.as_ref().ok();
        for (i, keys) in touched.iter().enumerate() {
            if kept.is_none_or(|k| k.get(i).copied().unwrap_or(true)) {
                cache.forget(keys);
            }
        }
    }
    // Visible before anyone hears of it: a caller that reads right after
    // its write is answered takes an epoch that includes it.
    w.applied.store(seq, Ordering::Release);
    match result {
        Ok(kept) => {
            let written = kept.iter().filter(|k| **k).count();
            metrics.observe_store_write(started.elapsed().as_secs_f64(), written);
            if written > 0 {
                *head = next;
                *last_time = time;
                metrics.audit_appended(events);
            }
            metrics.set_store_writable(true);
            for (r, k) in replies.into_iter().zip(kept) {
                let answer = if k {
                    Ok(())
                } else {
                    Err(CommitError::Store(StoreError::Conflict))
                };
                let _ = r.send(answer);
            }
            true
        }
        Err(e) => {
            metrics.observe_store_write(started.elapsed().as_secs_f64(), replies.len());
            metrics.audit_failed(u64::try_from(all_events).unwrap_or(u64::MAX));
            // A conflict (a store re-checking inside its write) is the
            // batch's own fault; the store is fine.
            let broken = !matches!(e, StoreError::Conflict);
            if broken {
                metrics.set_store_writable(false);
            }
            tracing::error!(error = %e, jobs = replies.len(), "Durable write failed");
            for r in replies {
                let _ = r.send(Err(CommitError::Store(e.clone())));
            }
            !broken
        }
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
    use crate::store::{MemoryStore, Op, Rows};

    fn draft(i: usize) -> Draft {
        Draft {
            request_id: format!("r{i}"),
            caller: "app".into(),
            action: "detokenize",
            outcome: "released",
            ..Draft::default()
        }
    }

    /// In queue order: a job sealed under a version below the floor is
    /// refused, a fence raises the floor for the jobs after it (and the
    /// next groups), never lowers it, and jobs without versions pass.
    #[tokio::test]
    async fn the_floor_refuses_what_was_sealed_under_older_keys_after_a_fence() {
        let job = |sealed: Option<u32>, raise: Option<u32>| {
            let (reply, rx) = oneshot::channel();
            let mut batch = Batch::default();
            if let Some(v) = sealed {
                batch.seals_under(v);
            }
            batch.raise_floor = raise;
            (
                Job {
                    batch,
                    audit: Vec::new(),
                    reply,
                },
                rx,
            )
        };
        let mut screen = Screen::default();
        let (jobs, mut answers): (Vec<_>, Vec<_>) = [
            job(Some(1), None),
            job(None, Some(2)),
            job(Some(1), None),
            job(Some(2), None),
            job(None, None),
            job(None, Some(1)),
        ]
        .into_iter()
        .unzip();
        let (kept, stale) = screen.take(1, jobs);
        assert!(stale.is_empty());
        assert_eq!(kept.len(), 5);
        assert_eq!(screen.floor, 2);
        assert!(matches!(
            answers.remove(2).await.unwrap(),
            Err(CommitError::Store(StoreError::Conflict))
        ));
        let (late, rx) = job(Some(1), None);
        assert!(screen.take(2, vec![late]).0.is_empty());
        assert!(rx.await.unwrap().is_err());
    }

    fn release_job(
        epoch: u64,
        subjects: &[&str],
    ) -> (Job, oneshot::Receiver<Result<(), CommitError>>) {
        let (reply, rx) = oneshot::channel();
        let batch = Batch {
            reads: Some(crate::store::Reads {
                epoch,
                subjects: subjects
                    .iter()
                    .map(|s| crate::store::subject_tag(s))
                    .collect(),
                min_decryption: 1,
            }),
            ..Batch::default()
        };
        let job = Job {
            batch,
            audit: vec![draft(0)],
            reply,
        };
        (job, rx)
    }

    fn touch_job(subject: &str) -> Job {
        let mut batch = Batch::default();
        batch.touch(subject);
        Job {
            batch,
            audit: Vec::new(),
            reply: oneshot::channel().0,
        }
    }

    /// In queue order: a release whose reads began before a touch of a
    /// subject it released is refused `Stale`, in the toucher's group (after
    /// it) and in every later group; one ahead of the touch in the queue,
    /// one of another subject, and one whose reads began after the touch's
    /// group pass.
    #[tokio::test]
    async fn a_release_read_before_a_touch_of_its_subject_is_stale() {
        let mut screen = Screen::default();
        // Another subject.
        let t = (0..)
            .map(|i| format!("t{i}"))
            .find(|t| crate::store::subject_tag(t) != crate::store::subject_tag("s"))
            .unwrap();
        let (ahead, ahead_rx) = release_job(0, &["s"]);
        let (behind, behind_rx) = release_job(0, &["s", &t]);
        let (other, other_rx) = release_job(0, &[&t]);
        let (kept, stale) = screen.take(1, vec![ahead, touch_job("s"), behind, other]);
        assert_eq!(kept.len(), 3);
        answer_stale(stale);
        assert!(matches!(behind_rx.await.unwrap(), Err(CommitError::Stale)));
        drop(kept);
        assert!(
            ahead_rx.await.is_err(),
            "kept, so not answered by the screen"
        );
        assert!(other_rx.await.is_err());
        let (late, late_rx) = release_job(0, &["s"]);
        let (fresh, _) = release_job(1, &["s"]);
        let (kept, stale) = screen.take(2, vec![late, fresh]);
        assert_eq!(kept.len(), 1);
        answer_stale(stale);
        assert!(matches!(late_rx.await.unwrap(), Err(CommitError::Stale)));
    }

    /// What the committer does with the stale replies, once the group is
    /// written.
    fn answer_stale(stale: Vec<Reply>) {
        for reply in stale {
            reply.send(Err(CommitError::Stale)).unwrap();
        }
    }

    /// A touch of every subject (a seal) refuses every release read before
    /// its group and none read after; a subject in a bucket that overflowed
    /// is refused too (the price of fixed memory).
    #[test]
    fn a_touch_of_all_refuses_every_release_read_before_it() {
        let mut screen = Screen::default();
        let all = Job {
            batch: Batch {
                touches_all: true,
                ..Batch::default()
            },
            audit: Vec::new(),
            reply: oneshot::channel().0,
        };
        let (before, before_rx) = release_job(4, &["x"]);
        let (after, _) = release_job(5, &["x"]);
        let (kept, stale) = screen.take(5, vec![all, before, after]);
        assert_eq!(kept.len(), 2);
        answer_stale(stale);
        assert!(matches!(
            before_rx.blocking_recv().unwrap(),
            Err(CommitError::Stale)
        ));
        // Subjects of one bucket: each remembered, until a fifth is touched
        // and the one touched longest ago is forgotten.
        let mut recent = Recent::default();
        let b = TOUCH_BUCKETS as u64;
        for (i, seq) in (0..4).zip(1..) {
            recent.touch(7 + i * b, seq);
        }
        assert!(!recent.stale(0, &[7 + 5 * b]), "another subject");
        assert!(recent.stale(0, &[7]));
        assert!(!recent.stale(4, &[7 + 3 * b]));
        recent.touch(7 + 4 * b, 5);
        assert!(recent.stale(0, &[7 + 5 * b]), "the bucket forgot a subject");
        assert!(!recent.stale(1, &[7 + 5 * b]));
        assert!(recent.stale(4, &[7 + 4 * b]));
    }

    /// A new minimum decryption version refuses, from its batch on, every
    /// release that decrypted under a lower one, whenever its reads began
    /// (the old keyring may still be installed after the batch is
    /// written); one under the new minimum passes, and so does one under a
    /// minimum lowered again.
    #[test]
    fn a_new_minimum_refuses_releases_that_decrypted_under_the_old_one() {
        let mut screen = Screen::default();
        let raise = Job {
            batch: Batch {
                raise_min_decryption: Some(2),
                ..Batch::default()
            },
            audit: Vec::new(),
            reply: oneshot::channel().0,
        };
        let (ahead, _) = release_job(0, &["x"]);
        let (behind, _) = release_job(5, &["x"]);
        let (kept, stale) = screen.take(1, vec![ahead, raise, behind]);
        assert_eq!((kept.len(), stale.len()), (2, 1));
        let (mut later, _) = release_job(9, &["x"]);
        if let Some(r) = later.batch.reads.as_mut() {
            r.min_decryption = 2;
        }
        let (kept, stale) = screen.take(2, vec![later]);
        assert_eq!((kept.len(), stale.len()), (1, 0));
        // Lowered again: releases under the lower minimum pass.
        let lower = Job {
            batch: Batch {
                raise_min_decryption: Some(1),
                ..Batch::default()
            },
            audit: Vec::new(),
            reply: oneshot::channel().0,
        };
        let (after, _) = release_job(10, &["x"]);
        let (kept, stale) = screen.take(3, vec![lower, after]);
        assert_eq!((kept.len(), stale.len()), (2, 0));
    }

    /// A write that failed may land when the store recovers: every release
    /// read before the next group is written is refused, one read after it
    /// passes.
    #[tokio::test]
    async fn a_failed_write_refuses_the_releases_read_before_the_next_one() {
        let store = failing_once();
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        let mut erase = Batch::default();
        erase.touch("s");
        assert!(c.commit(erase, vec![draft(0)]).await.is_err());
        let read_before = c.epoch();
        let read = |epoch| Batch {
            reads: Some(crate::store::Reads {
                epoch,
                subjects: vec![crate::store::subject_tag("other")],
                min_decryption: 0,
            }),
            ..Batch::default()
        };
        assert!(matches!(
            c.commit(read(read_before), vec![draft(1)]).await,
            Err(CommitError::Stale)
        ));
        c.commit(read(c.epoch()), vec![draft(2)]).await.unwrap();
    }

    /// A new minimum whose write failed is not the committer's: releases
    /// under the old minimum pass once the store has recovered.
    #[tokio::test]
    async fn a_minimum_not_written_is_not_kept() {
        let store = failing_once();
        let c = Committer::start(store, Arc::new(Metrics::new())).unwrap();
        let raise = Batch {
            raise_min_decryption: Some(4),
            ..Batch::default()
        };
        assert!(c.commit(raise, vec![draft(0)]).await.is_err());
        let read = |epoch| Batch {
            reads: Some(crate::store::Reads {
                epoch,
                subjects: vec![crate::store::subject_tag("s")],
                min_decryption: 1,
            }),
            ..Batch::default()
        };
        // The recovery refuses what was read before it; then, read again,
        // it passes under the old minimum.
        assert!(matches!(
            c.commit(read(c.epoch()), vec![draft(1)]).await,
            Err(CommitError::Stale)
        ));
        c.commit(read(c.epoch()), vec![draft(2)]).await.unwrap();
    }

    /// The in-memory store, failing its first group write.
    fn failing_once() -> Arc<dyn Store> {
        let store = crate::store::testing::HookedStore::new(|_| {});
        store.fail_writes.store(1, Ordering::SeqCst);
        Arc::new(store)
    }

    /// Through the thread: the epoch moves once a group is written, and a
    /// release taken before a touching job was written is refused.
    #[tokio::test]
    async fn the_epoch_moves_past_each_written_group() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Committer::start(store, Arc::new(Metrics::new())).unwrap();
        let before = c.epoch();
        let mut touch = Batch::default();
        touch.touch("s");
        c.commit(touch, Vec::new()).await.unwrap();
        let after = c.epoch();
        assert!(after > before);
        let read = |epoch| Batch {
            reads: Some(crate::store::Reads {
                epoch,
                subjects: vec![crate::store::subject_tag("s")],
                min_decryption: 0,
            }),
            ..Batch::default()
        };
        assert!(matches!(
            c.commit(read(before), vec![draft(1)]).await,
            Err(CommitError::Stale)
        ));
        c.commit(read(after), vec![draft(2)]).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_chain_one_gapless_log() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Arc::new(Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = Batch::default();
                b.put(Space::Values, format!("k{i}").into_bytes(), vec![1]);
                c.commit(b, vec![draft(i), draft(i)]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 400 }
        );
        assert_eq!(
            store.scan(Space::Values, b"", None, 1000).unwrap().len(),
            200
        );
    }

    /// A store whose writes fail on demand, to prove a failed write
    /// acknowledges nobody and leaves the chain intact.
    struct Flaky {
        inner: MemoryStore,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Store for Flaky {
        fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(s, k)
        }
        fn scan(&self, s: Space, f: &[u8], t: Option<&[u8]>, l: usize) -> Result<Rows, StoreError> {
            self.inner.scan(s, f, t, l)
        }
        fn write(&self, b: Batch) -> Result<(), StoreError> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Engine("No space left on device".into()));
            }
            self.inner.write(b)
        }
    }

    /// A panic in a write is a failed write: its jobs are answered with a
    /// store error, not dropped, and the writes after it go on with an
    /// intact chain (the thread would otherwise be gone, and every write
    /// after it refused until a restart).
    #[tokio::test]
    async fn a_write_that_panics_fails_its_group_and_the_next_goes_on() {
        let store = Arc::new(WritesWith::new(|f: &Flaky, b| {
            if f.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                panic!("a bug in the write");
            }
            f.inner.write(b)
        }));
        let metrics = Arc::new(Metrics::new());
        let c = Committer::start(store.clone(), metrics.clone()).unwrap();
        c.commit(Batch::default(), vec![draft(1)]).await.unwrap();
        store
            .0
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut b = Batch::default();
        b.ops.push(Op::Put(Space::Values, b"x".to_vec(), vec![]));
        match c.commit(b, vec![draft(2)]).await {
            Err(CommitError::Store(StoreError::Engine(m))) => assert_eq!(m, "the write panicked"),
            other => panic!("expected a store error, got {other:?}"),
        }
        c.commit(Batch::default(), vec![draft(3)]).await.unwrap();
        assert_eq!(store.get(Space::Values, b"x").unwrap(), None);
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 2 }
        );
    }

    /// A [`Flaky`] whose writes do what `.1` says.
    struct WritesWith<F>(Flaky, F);

    impl<F> WritesWith<F> {
        fn new(write: F) -> Self {
            Self(
                Flaky {
                    inner: MemoryStore::new(),
                    fail: false.into(),
                },
                write,
            )
        }
    }

    impl<F: Fn(&Flaky, Batch) -> Result<(), StoreError> + Send + Sync + 'static> Store
        for WritesWith<F>
    {
        fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(s, k)
        }
        fn scan(&self, s: Space, f: &[u8], t: Option<&[u8]>, l: usize) -> Result<Rows, StoreError> {
            self.0.scan(s, f, t, l)
        }
        fn write(&self, b: Batch) -> Result<(), StoreError> {
            (self.1)(&self.0, b)
        }
    }

    #[tokio::test]
    async fn failed_write_acknowledges_nobody_and_keeps_the_head() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            fail: false.into(),
        });
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        c.commit(Batch::default(), vec![draft(1)]).await.unwrap();
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut b = Batch::default();
        b.ops.push(Op::Put(Space::Values, b"x".to_vec(), vec![]));
        assert!(c.commit(b, vec![draft(2)]).await.is_err());
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        c.commit(Batch::default(), vec![draft(3)]).await.unwrap();
        assert_eq!(store.get(Space::Values, b"x").unwrap(), None);
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 2 }
        );
    }

    /// A write reported failed may still have landed whole (the log record
    /// was written, its sync failed): the chain must go on from what the
    /// store holds, not from the head the committer last knew.
    #[tokio::test]
    async fn after_a_failed_write_that_landed_the_chain_goes_on_from_the_store() {
        let store = Arc::new(WritesWith::new(|f: &Flaky, b| {
            f.inner.write(b)?;
            if f.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Engine("sync failed".into()));
            }
            Ok(())
        }));
        let metrics = Arc::new(Metrics::new());
        let c = Committer::start(store.clone(), metrics.clone()).unwrap();
        c.commit(Batch::default(), vec![draft(1)]).await.unwrap();
        store
            .0
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(c.commit(Batch::default(), vec![draft(2)]).await.is_err());
        assert!(metrics.render().contains("vault_store_writable 0"));
        store
            .0
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        c.commit(Batch::default(), vec![draft(3)]).await.unwrap();
        assert!(metrics.render().contains("vault_store_writable 1"));
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 3 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_racing_create_if_absent_jobs_exactly_one_wins() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Arc::new(Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap());
        let tasks: Vec<_> = (0..40u8)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut b = Batch::default();
                    b.expect(Space::Meta, b"once".to_vec(), None);
                    b.put(Space::Meta, b"once".to_vec(), vec![i]);
                    // Unchecked neighbours ride along and always land.
                    let mut n = Batch::default();
                    n.put(Space::Values, vec![i], vec![]);
                    let (checked, plain) =
                        tokio::join!(c.commit(b, vec![draft(1)]), c.commit(n, vec![draft(2)]));
                    plain.unwrap();
                    checked.is_ok()
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1);
        assert_eq!(store.scan(Space::Values, b"", None, 100).unwrap().len(), 40);
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 41 }
        );
    }

    #[tokio::test]
    async fn event_times_go_on_from_the_last_one_after_a_restart() {
        // A chain whose last event is an hour ahead of this clock (the
        // clock was set back across a restart).
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ahead = now_ms() + 3_600_000;
        let mut first = draft(1).into_event(1, ahead);
        let (head, bytes) = audit::chain(&Head::EMPTY, &mut first);
        let mut b = Batch::default();
        b.put(Space::Audit, audit::seq_key(1), bytes);
        b.put(Space::Meta, audit::HEAD_KEY.to_vec(), head.encode());
        store.write(b).unwrap();
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        c.commit(Batch::default(), vec![draft(2)]).await.unwrap();
        let events = audit::query(store.as_ref(), None, 0, 10, audit::Deadline::NEVER).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[1].time_ms >= ahead, "times never go back");
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 2 }
        );
    }

    /// A head deleted, moved back, or past the events (a partial restore,
    /// an edit): the committer does not start, rather than write new
    /// events over old ones; a consistent head starts it.
    #[tokio::test]
    async fn a_head_that_does_not_match_the_events_stops_the_start() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        for i in 0..3 {
            c.commit(Batch::default(), vec![draft(i)]).await.unwrap();
        }
        drop(c);
        let head = Head::load(store.as_ref()).unwrap();
        assert_eq!(head.seq, 3);
        let event_1 = store.get(Space::Audit, &audit::seq_key(1)).unwrap();
        let set_head = |h: Option<Head>| {
            let mut b = Batch::default();
            match h {
                Some(h) => b.put(Space::Meta, audit::HEAD_KEY.to_vec(), h.encode()),
                None => b.delete(Space::Meta, audit::HEAD_KEY.to_vec()),
            }
            store.write(b).unwrap();
        };
        let refused = |why: &str| {
            let started = Committer::start(store.clone(), Arc::new(Metrics::new()));
            let e = started.map(drop).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        };
        set_head(None);
        refused("events lie past it");
        set_head(Some(Head {
            seq: 2,
            hash: head.hash,
        }));
        refused("another hash");
        let moved_back = audit::event_at(store.as_ref(), 2).unwrap().unwrap();
        let mut h = [0u8; 32];
        hex::decode_to_slice(&moved_back.hash, &mut h).unwrap();
        set_head(Some(Head { seq: 2, hash: h }));
        refused("events lie past it");
        set_head(Some(Head {
            seq: 4,
            hash: head.hash,
        }));
        refused("its event is missing");
        set_head(Some(Head {
            seq: u64::MAX,
            hash: head.hash,
        }));
        refused("no sequence number follows it");
        // Nothing was written over the old events, and the true head
        // starts it again.
        assert_eq!(
            store.get(Space::Audit, &audit::seq_key(1)).unwrap(),
            event_1
        );
        set_head(Some(head));
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        c.commit(Batch::default(), vec![draft(4)]).await.unwrap();
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 4 }
        );
    }

    #[tokio::test]
    async fn a_failed_check_fails_only_its_own_job() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let c = Committer::start(store.clone(), Arc::new(Metrics::new())).unwrap();
        let mut bad = Batch::default();
        bad.expect(Space::Meta, b"k".to_vec(), Some(b"nope".to_vec()));
        let mut good = Batch::default();
        good.put(Space::Values, b"g".to_vec(), vec![]);
        let (a, b) = tokio::join!(
            c.commit(bad, vec![draft(1)]),
            c.commit(good, vec![draft(2)])
        );
        assert!(matches!(a, Err(CommitError::Store(StoreError::Conflict))));
        b.unwrap();
        assert_eq!(
            audit::verify(store.as_ref()).unwrap(),
            audit::Verdict::Intact { events: 1 }
        );
    }

    #[tokio::test]
    async fn a_write_of_a_subject_key_is_forgotten_before_it_is_answered() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            fail: false.into(),
        });
        let mut root = [3u8; 32];
        let ring = crate::keys::Keyring::open(
            &crate::secret::SecretKey::from_array(&mut root),
            store.as_ref(),
        )
        .unwrap();
        let cache = Arc::new(KeyCache::new(8));
        cache.reset(true);
        let c = Committer::start_with_cache(
            store.clone(),
            Arc::new(Metrics::new()),
            Some(cache.clone()),
        )
        .unwrap();
        for s in ["s1", "s2"] {
            let (_, b) = crate::subject_keys::create(&ring, s).unwrap();
            c.commit(b, vec![]).await.unwrap();
            crate::subject_keys::load_cached(store.as_ref(), &ring, &cache, s).unwrap();
        }
        assert_eq!(cache.len(), 2);
        // A write that touches no subject key leaves the cache alone, and
        // so does one screened out by its check: nothing of it was written.
        c.commit(Batch::default(), vec![draft(0)]).await.unwrap();
        let mut screened = Batch::default();
        screened.expect(Space::Meta, b"absent".to_vec(), Some(vec![1]));
        crate::subject_keys::destroy(&mut screened, "s2", b"wrapped");
        assert!(c.commit(screened, vec![]).await.is_err());
        assert_eq!(cache.len(), 2);
        let mut erase = Batch::default();
        crate::subject_keys::destroy(&mut erase, "s1", b"wrapped");
        c.commit(erase, vec![draft(1)]).await.unwrap();
        assert_eq!(cache.len(), 1);
        assert!(
            crate::subject_keys::load_cached(store.as_ref(), &ring, &cache, "s1")
                .unwrap()
                .is_none()
        );
        // A write the engine failed forgets too: it may have landed.
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut erase = Batch::default();
        crate::subject_keys::destroy(&mut erase, "s2", b"wrapped");
        assert!(c.commit(erase, vec![]).await.is_err());
        assert!(cache.is_empty());
        // Read back before the recovery (which may replay that write), a
        // key is dropped when the store recovers.
        crate::subject_keys::load_cached(store.as_ref(), &ring, &cache, "s2").unwrap();
        assert_eq!(cache.len(), 1);
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        c.commit(Batch::default(), vec![draft(2)]).await.unwrap();
        assert!(cache.is_empty(), "a key read before the recovery is kept");
    }
}
