//! Handling places: how many requests are handled at once
//! (`max-concurrent-requests`), shared so that no one caller can take them
//! all. Invariants: a caller holds at most half of them; apps together
//! leave at least one eighth (one at the least, from two places up) to
//! officers, whose audit queries and exposure reports an incident needs
//! while a compromised app floods; the map of callers holds configured callers only (a request
//! reaches here once its caller is known to the policy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::policy::Role;

pub struct Places {
    all: Arc<Semaphore>,
    apps: Arc<Semaphore>,
    share: usize,
    callers: Mutex<HashMap<Arc<str>, Arc<Semaphore>>>,
}

/// One request's place, given back on drop.
pub struct Place {
    _all: OwnedSemaphorePermit,
    _app: Option<OwnedSemaphorePermit>,
    _mine: OwnedSemaphorePermit,
}

impl Places {
    pub fn new(max: usize) -> Places {
        let max = max.max(1);
        let reserve = if max >= 2 { (max / 8).max(1) } else { 0 };
        Places {
            all: Arc::new(Semaphore::new(max)),
            apps: Arc::new(Semaphore::new(max - reserve)),
            share: (max / 2).max(1),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a request of `caller`, or 503 `overloaded` when the
    /// caller holds its share, apps hold theirs, or all are taken.
    pub fn take(&self, caller: &Arc<str>, role: Role) -> Result<Place, ApiError> {
        let mine = {
            // A panic elsewhere while holding it left the map whole: one
            // insert at a time.
            let mut callers = self
                .callers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            callers
                .entry(caller.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
                .clone()
        };
        let busy = |_| ApiError::Overloaded;
        let mine = mine.try_acquire_owned().map_err(busy)?;
        let app = match role {
            Role::App => Some(self.apps.clone().try_acquire_owned().map_err(busy)?),
            Role::Officer => None,
        };
        let all = self.all.clone().try_acquire_owned().map_err(busy)?;
        Ok(Place {
            _all: all,
            _app: app,
            _mine: mine,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// One app takes half the places at most, apps together leave officers
    /// theirs, and places come back when dropped.
    #[test]
    fn no_caller_takes_every_place() {
        let places = Places::new(16);
        let (app, app2, officer): (Arc<str>, Arc<str>, Arc<str>) =
            ("app".into(), "app2".into(), "officer".into());
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(places.take(&app, Role::App).unwrap());
        }
        assert!(places.take(&app, Role::App).is_err(), "past its half");
        for _ in 0..6 {
            held.push(places.take(&app2, Role::App).unwrap());
        }
        assert!(
            places.take(&app2, Role::App).is_err(),
            "into the officers' eighth"
        );
        held.push(places.take(&officer, Role::Officer).unwrap());
        held.push(places.take(&officer, Role::Officer).unwrap());
        assert!(
            places.take(&officer, Role::Officer).is_err(),
            "all 16 taken"
        );
        held.clear();
        assert!(places.take(&app, Role::App).is_ok());
        // One place: shared by whoever asks first.
        let one = Places::new(1);
        let p = one.take(&app, Role::App).unwrap();
        assert!(one.take(&officer, Role::Officer).is_err());
        drop(p);
        assert!(one.take(&officer, Role::Officer).is_ok());
    }
}
