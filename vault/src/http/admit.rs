//! Admission of API connections. Invariants:
//! - at most `max-connections` are open at once; when that many are, a new
//!   connection takes the place of the oldest one that is evictable: still
//!   in its TLS handshake, or past it with a certificate that names no
//!   caller of the policy (every request of such a connection is refused
//!   anyway);
//! - connections of callers with a role are never evicted, and app
//!   connections hold at most `max-connections` less [`officer_reserve`]
//!   places, so neither a source without a trusted certificate nor an app
//!   holding every connection it may can keep an officer (`vault seal`)
//!   out; one app holds at most half of the apps' places (from 16 up), so
//!   it cannot keep the other apps out either.
//!
//! Only a client with a certificate the vault trusts gets past the
//! handshake, so a source without one holds places only while its
//! handshakes last: to keep a real client out it must open
//! `max-connections` connections within that client's handshake.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::policy::Role;

/// How long a new connection waits for an evicted one to give up its
/// place; the evicted task only has to be polled once.
const EVICTION_WAIT: Duration = Duration::from_millis(200);

/// Places apps cannot take: those of officers, an eighth of
/// `max-connections`, at least 1 and at most 16 (none when there is only
/// one place).
pub fn officer_reserve(max: usize) -> usize {
    if max < 2 {
        0
    } else {
        (max / 8).clamp(1, 16)
    }
}

const EVICTABLE: u8 = 0;
const SETTLED: u8 = 1;
const EVICTED: u8 = 2;

/// One evictable connection: its state moves once, from evictable to
/// settled (the connection's own task, when its handshake ends with a
/// caller) or to evicted (the accept loop), whichever comes first.
struct Entry {
    state: AtomicU8,
    evicted: Notify,
}

/// The most connections one app may hold past their handshake: half of the
/// apps' places once they are 16 or more (so one app cannot keep the
/// others out), all of them below (a small deployment's one app).
pub fn caller_share(app_places: usize) -> usize {
    if app_places >= 16 {
        app_places / 2
    } else {
        app_places
    }
}

/// The connection places, and the evictable connections, oldest first.
pub struct Admission {
    places: Arc<Semaphore>,
    max: usize,
    /// App connections past their handshake.
    apps: AtomicUsize,
    /// The same, per app (configured callers only).
    per_app: Mutex<HashMap<Arc<str>, usize>>,
    evictable: Mutex<Evictable>,
}

/// The evictable connections by source address, and the sources ranked
/// for eviction: the one holding the most goes first, and among those
/// holding as many, the one with the oldest connection. So a source that
/// floods the vault with handshakes evicts its own connections before it
/// can evict another's.
#[derive(Default)]
struct Evictable {
    next: u64,
    by_source: HashMap<IpAddr, BTreeMap<u64, Arc<Entry>>>,
    ranked: BTreeSet<Rank>,
}

/// The source a connection from `ip` counts against: the address itself
/// for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6, which one host is
/// commonly given whole.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A source's place in the eviction order (the greatest goes first):
/// its evictable connections, its oldest one's id reversed, the address.
type Rank = (usize, Reverse<u64>, IpAddr);

fn rank(source: IpAddr, conns: &BTreeMap<u64, Arc<Entry>>) -> Option<Rank> {
    conns
        .first_key_value()
        .map(|(oldest, _)| (conns.len(), Reverse(*oldest), source))
}

impl Evictable {
    fn insert(&mut self, source: IpAddr, id: u64, entry: Arc<Entry>) {
        let conns = self.by_source.entry(source).or_default();
        if let Some(r) = rank(source, conns) {
            self.ranked.remove(&r);
        }
        conns.insert(id, entry);
        if let Some(r) = rank(source, conns) {
            self.ranked.insert(r);
        }
    }

    fn remove(&mut self, source: IpAddr, id: u64) -> Option<Arc<Entry>> {
        let conns = self.by_source.get_mut(&source)?;
        let before = rank(source, conns);
        let entry = conns.remove(&id)?;
        if let Some(r) = before {
            self.ranked.remove(&r);
        }
        match rank(source, conns) {
            Some(r) => {
                self.ranked.insert(r);
            }
            None => {
                self.by_source.remove(&source);
            }
        }
        Some(entry)
    }

    /// Takes out the next connection to evict.
    fn pop_next(&mut self) -> Option<Arc<Entry>> {
        let &(_, Reverse(id), source) = self.ranked.last()?;
        self.remove(source, id)
    }
}

/// How a connection was admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// A place was free.
    Free,
    /// The oldest evictable connection was told to close for it.
    Evicted,
}

/// A connection's place, held until the connection ends.
pub struct Place {
    _permit: OwnedSemaphorePermit,
}

/// A connection that may be evicted; it leaves the evictable set when
/// dropped or settled.
pub struct Handshake {
    admission: Arc<Admission>,
    source: IpAddr,
    id: u64,
    entry: Arc<Entry>,
}

impl Handshake {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.entry.evicted.notified().await;
    }

    /// The connection is past its handshake as a caller that is never
    /// evicted: `false` if it was evicted first (it must close: its place
    /// is promised to the newcomer).
    fn settle(self) -> bool {
        self.entry
            .state
            .compare_exchange(EVICTABLE, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.admission.lock().remove(self.source, self.id);
    }
}

/// An app connection past its handshake, counted until dropped.
pub struct AppSlot {
    admission: Arc<Admission>,
    caller: Arc<str>,
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.admission.apps.fetch_sub(1, Ordering::AcqRel);
        let mut per_app = self
            .admission
            .per_app
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = per_app.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_app.remove(&self.caller);
            }
        }
    }
}

/// What a connection past its handshake may do.
pub enum Settled {
    /// Serve it; an app connection holds its slot while it lives.
    Serve(Option<AppSlot>),
    /// Serve it, but it stays evictable (a certificate naming no caller).
    Evictable(Handshake),
    /// Close it: it was evicted as its handshake ended.
    Evicted,
    /// Close it: the app places are all taken (the rest are officers').
    AppsFull,
}

impl Admission {
    pub fn new(max: usize) -> Admission {
        Admission {
            places: Arc::new(Semaphore::new(max)),
            max,
            apps: AtomicUsize::new(0),
            per_app: Mutex::new(HashMap::new()),
            evictable: Mutex::new(Evictable::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Evictable> {
        self.evictable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a new connection: a free one, or the place of the oldest
    /// evictable connection. `None` when every place belongs to a
    /// connection that is not evictable (the new one is closed).
    pub async fn admit(&self) -> Option<(Place, Admitted)> {
        loop {
            if let Ok(p) = self.places.clone().try_acquire_owned() {
                return Some((Place { _permit: p }, Admitted::Free));
            }
            if !self.evict_oldest() {
                return None;
            }
            // The evicted task gives its place back when next polled.
            match tokio::time::timeout(EVICTION_WAIT, self.places.clone().acquire_owned()).await {
                Ok(Ok(p)) => return Some((Place { _permit: p }, Admitted::Evicted)),
                Ok(Err(_)) => return None,
                Err(_) => continue,
            }
        }
    }

    /// Tells the oldest connection still evictable to close; `false` when
    /// there is none. (Also how the accept loop makes room when the
    /// process is out of descriptors.)
    pub fn evict_oldest(&self) -> bool {
        loop {
            let Some(entry) = self.lock().pop_next() else {
                return false;
            };
            // One that settled meanwhile is passed over.
            if entry
                .state
                .compare_exchange(EVICTABLE, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                entry.evicted.notify_one();
                return true;
            }
        }
    }

    /// Enters a newly admitted connection from `source` in the evictable
    /// set.
    pub fn handshake(self: &Arc<Self>, source: IpAddr) -> Handshake {
        let entry = Arc::new(Entry {
            state: AtomicU8::new(EVICTABLE),
            evicted: Notify::new(),
        });
        let mut h = self.lock();
        let id = h.next;
        h.next += 1;
        h.insert(source, id, entry.clone());
        Handshake {
            admission: self.clone(),
            source,
            id,
            entry,
        }
    }

    /// The connection of `handshake` finished its handshake as a caller
    /// with `role` (`None`: its certificate names no caller).
    pub fn settle(
        self: &Arc<Self>,
        handshake: Handshake,
        who: Option<(Role, &Arc<str>)>,
    ) -> Settled {
        match who {
            None => Settled::Evictable(handshake),
            Some((role, caller)) => {
                if !handshake.settle() {
                    return Settled::Evicted;
                }
                if role == Role::Officer {
                    return Settled::Serve(None);
                }
                let cap = self.max - officer_reserve(self.max);
                let before = self.apps.fetch_add(1, Ordering::AcqRel);
                let mine = {
                    let mut per_app = self
                        .per_app
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let n = per_app.entry(caller.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                // Counted either way, given back by the slot's drop.
                let slot = AppSlot {
                    admission: self.clone(),
                    caller: caller.clone(),
                };
                if before >= cap || mine > caller_share(cap) {
                    return Settled::AppsFull;
                }
                Settled::Serve(Some(slot))
            }
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
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn app() -> Option<(Role, &'static Arc<str>)> {
        static APP: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "app".into());
        Some((Role::App, &APP))
    }

    fn officer() -> Option<(Role, &'static Arc<str>)> {
        static OFFICER: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| "officer".into());
        Some((Role::Officer, &OFFICER))
    }
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_one_its_ipv4() {
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        assert_eq!(source_of(v6("2001:db8:1:2:aaaa::1")), v6("2001:db8:1:2::"));
        assert_eq!(source_of(v6("::ffff:10.0.0.1")), A);
        assert_eq!(source_of(A), A);
    }

    /// A source flooding handshakes evicts its own before another's, even
    /// one older than all of its own; sources holding as many lose their
    /// oldest first.
    #[tokio::test]
    async fn a_flooding_source_evicts_its_own_handshakes_first() {
        let a = Arc::new(Admission::new(3));
        let (_p, _) = a.admit().await.unwrap();
        let legit = a.handshake(B);
        let mut flood = Vec::new();
        for _ in 0..2 {
            let (p, _) = a.admit().await.unwrap();
            flood.push((p, a.handshake(A)));
        }
        assert!(a.evict_oldest());
        assert_eq!(flood[0].1.entry.state.load(Ordering::Acquire), EVICTED);
        assert_eq!(legit.entry.state.load(Ordering::Acquire), EVICTABLE);
        drop(flood.remove(0));
        // One each now: the older (the legitimate one) goes first.
        assert!(a.evict_oldest());
        assert_eq!(legit.entry.state.load(Ordering::Acquire), EVICTED);
        assert!(a.evict_oldest());
        assert!(!a.evict_oldest());
        drop(legit);
        drop(flood);
        let e = a.lock();
        assert!(
            e.by_source.is_empty() && e.ranked.is_empty(),
            "entries left behind"
        );
    }

    #[tokio::test]
    async fn a_full_house_evicts_the_oldest_handshake_and_never_an_established_connection() {
        let a = Arc::new(Admission::new(3));
        // One connection past its handshake, two still in theirs.
        let (established, how) = a.admit().await.unwrap();
        assert_eq!(how, Admitted::Free);
        assert!(matches!(
            a.settle(a.handshake(A), app()),
            Settled::Serve(Some(_))
        ));
        let mut tasks = Vec::new();
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..2 {
            let (place, _) = a.admit().await.unwrap();
            let h = a.handshake(A);
            let ended_tx = ended_tx.clone();
            tasks.push(tokio::spawn(async move {
                h.evicted().await;
                drop(h);
                drop(place);
                let _ = ended_tx.send(n);
            }));
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
    async fn a_connection_that_settled_is_passed_over_not_waited_for() {
        let a = Arc::new(Admission::new(2));
        // The older connection finished its handshake but has not left the
        // set yet (its task is between the two steps); the younger is
        // still in its handshake.
        let (_p1, _) = a.admit().await.unwrap();
        let h1 = a.handshake(A);
        let entry = h1.entry.clone();
        let (p2, _) = a.admit().await.unwrap();
        let h2 = a.handshake(A);
        assert!(entry
            .state
            .compare_exchange(EVICTABLE, SETTLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok());
        let t = tokio::spawn(async move {
            h2.evicted().await;
            drop(h2);
            drop(p2);
        });
        let started = std::time::Instant::now();
        let (_p3, how) = a.admit().await.unwrap();
        assert_eq!(how, Admitted::Evicted);
        assert!(
            started.elapsed() < EVICTION_WAIT,
            "waited for a settled one"
        );
        t.await.unwrap();
        // The settled one can no longer be evicted, nor settle twice.
        assert!(!h1.settle());
    }

    #[tokio::test]
    async fn an_evicted_handshake_cannot_settle_and_a_callerless_one_stays_evictable() {
        let a = Arc::new(Admission::new(2));
        let (_p1, _) = a.admit().await.unwrap();
        let h1 = a.handshake(A);
        assert!(a.evict_oldest());
        assert!(matches!(a.settle(h1, officer()), Settled::Evicted));
        let (_p2, _) = a.admit().await.unwrap();
        let Settled::Evictable(h2) = a.settle(a.handshake(A), None) else {
            panic!("a certificate naming no caller settled");
        };
        assert!(a.evict_oldest());
        h2.evicted().await;
    }

    #[tokio::test]
    async fn apps_leave_the_officers_their_reserve() {
        assert_eq!(officer_reserve(4096), 16);
        assert_eq!(officer_reserve(64), 8);
        assert_eq!(officer_reserve(7), 1);
        assert_eq!(officer_reserve(2), 1);
        assert_eq!(officer_reserve(1), 0);
        let a = Arc::new(Admission::new(16));
        let reserve = officer_reserve(16);
        assert_eq!(reserve, 2);
        let mut held = Vec::new();
        for _ in 0..16 - reserve {
            let (p, _) = a.admit().await.unwrap();
            let Settled::Serve(Some(slot)) = a.settle(a.handshake(A), app()) else {
                panic!("an app refused below its cap");
            };
            held.push((p, slot));
        }
        let (_p, _) = a.admit().await.unwrap();
        assert!(matches!(a.settle(a.handshake(A), app()), Settled::AppsFull));
        let (_p, _) = a.admit().await.unwrap();
        assert!(matches!(
            a.settle(a.handshake(A), officer()),
            Settled::Serve(None)
        ));
        // An app that leaves gives its slot back.
        held.pop();
        let (_p, _) = a.admit().await.unwrap();
        assert!(matches!(
            a.settle(a.handshake(A), app()),
            Settled::Serve(Some(_))
        ));
    }

    /// From 16 app places up, one app holds half of them at most; the
    /// others still get in, and a slot given back counts at once.
    #[tokio::test]
    async fn one_app_holds_half_of_the_app_connections() {
        let a = Arc::new(Admission::new(64));
        let share = caller_share(64 - officer_reserve(64));
        assert_eq!(share, 28);
        let mut held = Vec::new();
        for _ in 0..share {
            let (p, _) = a.admit().await.unwrap();
            let Settled::Serve(Some(slot)) = a.settle(a.handshake(A), app()) else {
                panic!("refused within its share");
            };
            held.push((p, slot));
        }
        let (_p, _) = a.admit().await.unwrap();
        assert!(matches!(a.settle(a.handshake(A), app()), Settled::AppsFull));
        let other: Arc<str> = "app2".into();
        let (_p2, _) = a.admit().await.unwrap();
        assert!(matches!(
            a.settle(a.handshake(A), Some((Role::App, &other))),
            Settled::Serve(Some(_))
        ));
        held.pop();
        let (_p3, _) = a.admit().await.unwrap();
        assert!(matches!(
            a.settle(a.handshake(A), app()),
            Settled::Serve(Some(_))
        ));
        assert_eq!(caller_share(15), 15, "small deployments: no split");
    }

    #[tokio::test]
    async fn a_finished_handshake_leaves_the_set() {
        let a = Arc::new(Admission::new(1));
        let (place, _) = a.admit().await.unwrap();
        assert!(a.handshake(A).settle());
        // The only connection finished its handshake: it cannot be evicted.
        assert!(a.admit().await.is_none());
        drop(place);
        assert!(a.admit().await.is_some());
    }
}
