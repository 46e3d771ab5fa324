//! Group commit. Every write of the server goes through one committer thread:
//! it takes the first waiting job, drains whatever else is queued, chains their
//! audit events onto the log, and writes it all as one durable batch, so
//! concurrent requests share one WAL sync. Invariants: a job is acknowledged
//! only after its batch (data and audit events together) is durable; a failed
//! write acknowledges nobody, and the next group first lets the store
//! recover and reloads the chain head from it, so the chain goes on from
//! what is durable whether or not the failed batch landed.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::audit::{self, Draft, Head};
use crate::metrics::Metrics;
use crate::store::{Batch, Op, Space, Store, StoreError};

/// Most jobs folded into one write; bounds the batch and the latency of the
/// first job in it.
const MAX_GROUP: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the committer has stopped")]
    Stopped,
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

struct Job {
    batch: Batch,
    audit: Vec<Draft>,
    reply: oneshot::Sender<Result<(), CommitError>>,
}

/// Handle to the committer thread. Dropping it closes the queue and waits for
/// the thread, so the store it holds is closed before the drop returns (an
/// engine left open by a detached thread can abort the process at exit).
pub struct Committer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let head = Head::load(store.as_ref())?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("vault-commit".into())
            .spawn(move || run(store, metrics, rx, head))
            .map_err(|e| CommitError::Store(StoreError::Engine(e.to_string())))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
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

fn run(store: Arc<dyn Store>, metrics: Arc<Metrics>, rx: mpsc::Receiver<Job>, mut head: Head) {
    let mut last_time = 0u64;
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if failed {
            match resync(store.as_ref()) {
                Ok(h) => head = h,
                Err(e) => {
                    refuse(&metrics, group, &e);
                    continue;
                }
            }
        }
        let group = screen(store.as_ref(), group);
        failed = !write_group(store.as_ref(), &metrics, &mut head, &mut last_time, group);
    }
}

/// After a failed write: lets the store recover, then reads the chain head
/// back, since a batch that failed may still have landed whole.
fn resync(store: &dyn Store) -> Result<Head, StoreError> {
    store.recover()?;
    Head::load(store).map_err(|e| match e {
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

/// Answers `Conflict` at once to every job whose checks do not hold, against
/// the store or against a key an earlier job of the group writes, and
/// returns the rest: a failed check fails only its own job, never its
/// neighbours. The merged write re-checks the survivors atomically, so a
/// write that bypasses the committer can still only cause a conflict, never
/// a lost update.
fn screen(store: &dyn Store, group: Vec<Job>) -> Vec<Job> {
    if group.iter().all(|j| j.batch.checks.is_empty()) {
        return group;
    }
    let mut touched: HashSet<(Space, Vec<u8>)> = HashSet::new();
    let mut kept = Vec::with_capacity(group.len());
    for job in group {
        let holds = job.batch.checks.iter().all(|c| {
            !touched.contains(&(c.space, c.key.clone()))
                && store
                    .get(c.space, &c.key)
                    .is_ok_and(|cur| cur == c.expected)
        });
        if !holds {
            let _ = job
                .reply
                .send(Err(CommitError::Store(StoreError::Conflict)));
            continue;
        }
        for op in &job.batch.ops {
            let key = match op {
                Op::Put(space, k, _) | Op::Delete(space, k) => (*space, k.clone()),
            };
            touched.insert(key);
        }
        kept.push(job);
    }
    kept
}

/// Writes a screened group as one batch; `false` when the store failed.
fn write_group(
    store: &dyn Store,
    metrics: &Metrics,
    head: &mut Head,
    last_time: &mut u64,
    group: Vec<Job>,
) -> bool {
    if group.is_empty() {
        return true;
    }
    let mut merged = Batch::default();
    let mut next = *head;
    let time = now_ms().max(*last_time);
    let mut events = 0u64;
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        merged.absorb(job.batch);
        for draft in job.audit {
            let mut event = draft.into_event(next.seq + 1, time);
            let (h, bytes) = audit::chain(&next, &mut event);
            merged.put(Space::Audit, audit::seq_key(h.seq), bytes);
            next = h;
            events += 1;
        }
        replies.push(job.reply);
    }
    if events > 0 {
        merged.put(Space::Meta, audit::HEAD_KEY.to_vec(), next.encode());
    }
    let started = Instant::now();
    let result = store.write(merged);
    metrics.observe_store_write(started.elapsed().as_secs_f64(), replies.len());
    match result {
        Ok(()) => {
            *head = next;
            *last_time = time;
            metrics.audit_appended(events);
            metrics.set_store_writable(true);
            for r in replies {
                let _ = r.send(Ok(()));
            }
            true
        }
        Err(e) => {
            // A conflict is the batch's own fault; the store is fine.
            let broken = !matches!(e, StoreError::Conflict);
            metrics.audit_failed(events);
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::store::{MemoryStore, Rows};

    fn draft(i: usize) -> Draft {
        Draft {
            request_id: format!("r{i}"),
            caller: "app".into(),
            action: "detokenize",
            outcome: "released",
            ..Draft::default()
        }
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
        struct Landing(Flaky);
        impl Store for Landing {
            fn get(&self, s: Space, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
                self.0.get(s, k)
            }
            fn scan(
                &self,
                s: Space,
                f: &[u8],
                t: Option<&[u8]>,
                l: usize,
            ) -> Result<Rows, StoreError> {
                self.0.scan(s, f, t, l)
            }
            fn write(&self, b: Batch) -> Result<(), StoreError> {
                self.0.inner.write(b)?;
                if self.0.fail.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(StoreError::Engine("sync failed".into()));
                }
                Ok(())
            }
        }
        let store = Arc::new(Landing(Flaky {
            inner: MemoryStore::new(),
            fail: false.into(),
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
}
