//! Admission of API connections. Invariant: at most `max-connections` are
//! open at once, and when that many are, a new connection takes the place
//! of the oldest one still in its TLS handshake. Only a client with a
//! certificate the vault trusts gets past the handshake, so a source
//! without one can hold places only while its handshakes last, and to keep
//! a real client out it would have to open `max-connections` connections
//! within the few milliseconds that client's handshake takes. Connections
//! past their handshake are never evicted (they belong to authenticated
//! callers, and the idle deadline frees them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new connection waits for an evicted one to give up its
/// place; the evicted task only has to be polled once.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// The connection places, and the connections still in their handshake,
/// oldest first.
pub struct Admission {
    places: Arc<Semaphore>,
    max: usize,
    handshaking: Mutex<Handshaking>,
}

#[derive(Default)]
struct Handshaking {
    next: u64,
    by_age: BTreeMap<u64, Arc<Notify>>,
}

/// Why a connection was not admitted as it came.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A place was free.
    Free,
    /// The oldest connection in its handshake was told to close for it.
    Evicted,
}

/// A connection's place, held until the connection ends.
pub struct Place {
    _permit: OwnedSemaphorePermit,
}

/// A connection in its handshake; it leaves the handshaking set when
/// dropped (the handshake ended, one way or the other).
pub struct Handshake {
    admission: Arc<Admission>,
    id: u64,
    evicted: Arc<Notify>,
}

impl Handshake {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.admission.lock().by_age.remove(&self.id);
    }
}

impl Admission {
    pub fn new(max: usize) -> Admission {
        Admission {
            places: Arc::new(Semaphore::new(max)),
            max,
            handshaking: Mutex::new(Handshaking::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handshaking> {
        self.handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection: a free one, or the place of the oldest
    /// connection still in its handshake. `None` when every place belongs
    /// to a connection past its handshake (the new one is closed).
    pub async fn admit(&self) -> Option<(Place, Admitted)> {
        if let Ok(p) = self.places.clone().try_acquire_owned() {
            return Some((Place { _permit: p }, Admitted::Free));
        }
        let oldest = self.lock().by_age.pop_first();
        let (_, evicted) = oldest?;
        evicted.notify_one();
        let p = tokio::time::timeout(EVICTION_WAIT, self.places.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some((Place { _permit: p }, Admitted::Evicted))
    }

    /// Enters a newly admitted connection in the handshaking set.
    pub fn handshake(self: &Arc<Self>) -> Handshake {
        let evicted = Arc::new(Notify::new());
        let mut h = self.lock();
        let id = h.next;
        h.next += 1;
        h.by_age.insert(id, evicted.clone());
        Handshake {
            admission: self.clone(),
            id,
            evicted,
        }
    }

    /// Waits until every place is given back (all connections ended), up
    /// to `limit`.
    pub async fn drained(&self, limit: Duration) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(limit, self.places.acquire_many(all)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn a_full_house_evicts_the_oldest_handshake_and_never_an_established_connection() {
        let a = Arc::new(Admission::new(3));
        // One connection past its handshake, two still in theirs.
        let (established, how) = a.admit().await.unwrap();
        assert_eq!(how, Admitted::Free);
        let mut tasks = Vec::new();
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..2 {
            let (place, _) = a.admit().await.unwrap();
            let a = a.clone();
            let ended_tx = ended_tx.clone();
            // Entered in order: the first is the oldest.
            let (entered_tx, entered) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(async move {
                let h = a.handshake();
                let _ = entered_tx.send(());
                h.evicted().await;
                drop(h);
                drop(place);
                let _ = ended_tx.send(n);
            }));
            entered.await.unwrap();
        }
        let (_newcomer, how) = a.admit().await.expect("no place for a newcomer");
        assert_eq!(how, Admitted::Evicted);
        assert_eq!(ended.recv().await, Some(0), "not the oldest evicted");
        let (_second, how) = a.admit().await.unwrap();
        assert_eq!(how, Admitted::Evicted);
        assert_eq!(ended.recv().await, Some(1));
        // Now the places hold one established connection and two
        // newcomers that never entered a handshake: nobody to evict.
        assert!(a.admit().await.is_none());
        drop(established);
        assert_eq!(a.admit().await.unwrap().1, Admitted::Free);
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_finished_handshake_leaves_the_set() {
        let a = Arc::new(Admission::new(1));
        let (place, _) = a.admit().await.unwrap();
        drop(a.handshake());
        // The only connection finished its handshake: it cannot be evicted.
        assert!(a.admit().await.is_none());
        drop(place);
        assert!(a.admit().await.is_some());
    }
}
