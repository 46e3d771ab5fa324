//! Request bodies, read in full before a request may take a handling place,
//! and response bodies, serialized without leaving copies behind.
//! Invariant: the body bytes held in memory by all requests together, those
//! still arriving and those being handled, never exceed the [`Budget`],
//! `2 × max-concurrent-requests × max-body-bytes`; a body that would go past
//! it is refused with 503 `overloaded`. A body is charged for the buffer
//! that holds it, as it grows with the bytes that arrive (not as declared,
//! and not just the bytes: a doubling buffer holds up to twice them, and is
//! charged before it is allocated): a client that declares a body and withholds
//! it holds no memory, only its stream (at most `max-streams-per-connection`
//! per connection), and only until the body deadline. Answers are counted
//! per caller until hyper has written them out; a caller whose unwritten
//! answers pass its share takes no new requests until they drain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroize;

use crate::api::ApiError;
use crate::server::Limits;

/// The bytes all request bodies together may hold, one permit a byte, and
/// each caller's share of them: at most half, so one caller that withholds
/// or floods bodies cannot leave another none.
#[derive(Clone, Debug)]
pub struct Budget {
    all: Arc<Semaphore>,
    share: usize,
    callers: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Semaphore>>>>,
    /// Bytes of each caller's answers built and not yet written out.
    answers: Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<AtomicUsize>>>>,
}

impl Budget {
    pub fn new(limits: &Limits) -> Budget {
        Budget::of_bytes(
            limits
                .max_concurrent_requests
                .saturating_mul(2)
                .saturating_mul(limits.max_body_bytes),
        )
    }

    fn of_bytes(bytes: usize) -> Budget {
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        Budget {
            all: Arc::new(Semaphore::new(bytes)),
            share: bytes / 2,
            callers: Arc::default(),
            answers: Arc::default(),
        }
    }

    /// The count of `caller`'s answers built and not yet written out (a
    /// configured caller's: a connection looks it up once).
    pub fn answers_of(&self, caller: &Arc<str>) -> Option<Arc<AtomicUsize>> {
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(answers.entry(caller.clone()).or_default().clone())
    }

    /// Whether a caller's answers not yet written out (a client that does
    /// not take them) hold more than its share: it is then refused more
    /// work (503 `overloaded`) until they drain, so answers nobody takes
    /// cannot grow memory without bound either.
    pub fn answers_over(&self, pending: &AtomicUsize) -> bool {
        pending.load(Ordering::Relaxed) > self.share
    }

    /// `answer` counted in `pending` until hyper has written it and
    /// dropped it (its bytes are shared, not copied).
    pub fn charge_answer(pending: &Arc<AtomicUsize>, answer: Bytes) -> Bytes {
        let len = answer.len();
        pending.fetch_add(len, Ordering::Relaxed);
        Bytes::from_owner(Charged {
            bytes: answer,
            pending: pending.clone(),
            len,
        })
    }
}

/// An answer's bytes and what they hold of their caller's count.
struct Charged {
    bytes: Bytes,
    pending: Arc<AtomicUsize>,
    len: usize,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.pending.fetch_sub(self.len, Ordering::Relaxed);
    }
}

impl Budget {
    /// The share of `caller` (a configured caller: bodies are read only
    /// once the caller is known, so the map holds no more than those).
    fn share_of(&self, caller: &Arc<str>) -> Result<Arc<Semaphore>, ApiError> {
        // A panic elsewhere while holding it left the map whole: one insert
        // at a time.
        let mut callers = self
            .callers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(callers
            .entry(caller.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)))
            .clone())
    }

    /// Takes `n` bytes from the budget and from `caller`'s share, adding
    /// them to `charge`.
    fn take(&self, caller: &Arc<str>, n: usize, charge: &mut Charge) -> Result<(), ApiError> {
        let n = u32::try_from(n).map_err(|_| ApiError::Overloaded)?;
        let mine = self
            .share_of(caller)?
            .try_acquire_many_owned(n)
            .map_err(|_| ApiError::Overloaded)?;
        let all = self
            .all
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ApiError::Overloaded)?;
        for (slot, more) in [(&mut charge.all, all), (&mut charge.mine, mine)] {
            match slot {
                Some(c) => c.merge(more),
                None => *slot = Some(more),
            }
        }
        Ok(())
    }
}

/// Bytes a handler built from a body and keeps (the pointers of
/// `/v1/records` while it waits for its write), held from the budget and
/// the caller's share until dropped.
#[derive(Debug)]
pub struct Held {
    _charge: Charge,
}

impl Budget {
    /// Holds `n` bytes from the budget and `caller`'s share: 503
    /// `overloaded` when there is no room.
    pub fn hold(&self, caller: &Arc<str>, n: usize) -> Result<Held, ApiError> {
        let mut charge = Charge::default();
        self.take(caller, n, &mut charge)?;
        Ok(Held { _charge: charge })
    }
}

/// What a body holds of the budget and of its caller's share, given back
/// on drop.
#[derive(Debug, Default)]
struct Charge {
    all: Option<OwnedSemaphorePermit>,
    mine: Option<OwnedSemaphorePermit>,
}

/// A whole request body and its share of the budget, given back on drop.
#[derive(Debug)]
pub struct Body {
    bytes: Bytes,
    _charge: Charge,
}

impl Body {
    /// No body: what a request whose body is never looked at (the seal)
    /// is read as, so it takes nothing from the budget it must not wait on.
    pub fn none() -> Body {
        Body {
            bytes: Bytes::new(),
            _charge: Charge::default(),
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// A body carries the caller's plaintext (values to tokenize, texts to
/// deidentify): it is wiped when the request is done with it, unless a
/// copy of the handle still lives elsewhere (then that copy's owner frees
/// it unwiped; nothing in the server keeps one).
impl Drop for Body {
    fn drop(&mut self) {
        drop(wiped(std::mem::take(&mut self.bytes)));
    }
}

/// `bytes` zeroed in place, if this was the only handle to them.
fn wiped(bytes: Bytes) -> Option<BytesMut> {
    let mut b = bytes.try_into_mut().ok()?;
    b.as_mut().zeroize();
    Some(b)
}

/// Reads the whole body: refused (413) before reading when the declared
/// length is over `max`, and while reading when the bytes are; refused (503
/// `overloaded`) when the budget runs out. The caller bounds it in time.
pub async fn read(
    budget: &Budget,
    caller: &Arc<str>,
    max: usize,
    headers: &HeaderMap,
    mut body: Incoming,
) -> Result<Body, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::BodyTooLarge(max));
    }
    let mut buf = Arriving::default();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiError::BadRequest("the request body could not be read"))?;
        // Trailers are not used.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.append(&data, max, budget, caller)?;
    }
    Ok(Body {
        bytes: std::mem::take(&mut buf.bytes.0).freeze(),
        _charge: buf.charge,
    })
}

/// A body while it arrives, and its charge: the capacity of its buffer, what
/// it holds in memory (up to twice the bytes received, as the buffer
/// doubles), not just the bytes.
#[derive(Default)]
struct Arriving {
    bytes: Wiping,
    charge: Charge,
}

impl Arriving {
    /// Appends `data`: 413 past `max` bytes, 503 when the budget cannot
    /// cover the bigger buffer, charged before it is allocated.
    fn append(
        &mut self,
        data: &[u8],
        max: usize,
        budget: &Budget,
        caller: &Arc<str>,
    ) -> Result<(), ApiError> {
        let need = self.bytes.0.len().saturating_add(data.len());
        if need > max {
            return Err(ApiError::BodyTooLarge(max));
        }
        let have = self.bytes.0.capacity();
        let cap = self.bytes.capacity_for(need, max);
        budget.take(caller, cap.saturating_sub(have), &mut self.charge)?;
        // Copied out of the frame: a small frame's bytes can share a large
        // receive buffer, which they would otherwise keep alive.
        self.bytes.push_within(data, cap);
        Ok(())
    }
}

/// A body while it arrives: wiped if the read fails part-way, and each
/// buffer it outgrows is wiped before it is freed (a plain `extend` would
/// leave the old one behind, unwiped, in the allocator).
#[derive(Default)]
struct Wiping(BytesMut);

impl Wiping {
    /// The capacity to hold `need` bytes: the present one if it does, else
    /// double it (at least `need`), but not past `limit` unless `need` is.
    fn capacity_for(&self, need: usize, limit: usize) -> usize {
        let have = self.0.capacity();
        if need <= have {
            return have;
        }
        have.saturating_mul(2).min(limit).max(need)
    }

    fn push(&mut self, data: &[u8]) {
        let need = self.0.len().saturating_add(data.len());
        self.push_within(data, self.capacity_for(need, usize::MAX));
    }

    /// Appends `data`, moving to a buffer of `cap` bytes if it does not fit.
    fn push_within(&mut self, data: &[u8], cap: usize) {
        let need = self.0.len().saturating_add(data.len());
        if need > self.0.capacity() {
            let mut bigger = BytesMut::with_capacity(cap.max(need));
            bigger.extend_from_slice(&self.0);
            self.0.as_mut().zeroize();
            self.0 = bigger;
        }
        self.0.extend_from_slice(data);
    }
}

impl Drop for Wiping {
    fn drop(&mut self) {
        self.0.as_mut().zeroize();
    }
}

impl std::io::Write for Wiping {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.push(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsRef<[u8]> for Wiping {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `value` as a JSON response body (empty if it cannot be serialized). A
/// response can carry plaintext (a detokenize, a subject's export): each
/// buffer the serializer outgrows is wiped before it is freed, and the
/// body itself once hyper has written it and dropped the last handle.
pub fn json<T: serde::Serialize>(value: &T) -> Bytes {
    let mut out = Wiping(BytesMut::with_capacity(256));
    if serde_json::to_writer(&mut out, value).is_err() {
        out.0.as_mut().zeroize();
        out.0.clear();
    }
    Bytes::from_owner(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_json_body_is_what_serde_writes_through_every_growth() {
        // Far past the first buffer, so it grows several times.
        let value: Vec<String> = (0..500).map(|i| format!("value-{i}")).collect();
        let body = json(&value);
        assert!(body.len() > 4 * 256);
        assert_eq!(
            body.as_ref(),
            serde_json::to_vec(&value).unwrap().as_slice()
        );
        assert_eq!(json(&serde_json::json!({})).as_ref(), b"{}");
    }

    #[test]
    fn the_budget_is_charged_until_the_body_is_dropped_and_shared_between_callers() {
        let budget = Budget::of_bytes(100);
        let (app, other, third): (Arc<str>, Arc<str>, Arc<str>) =
            ("app".into(), "officer".into(), "officer2".into());
        let mut a = Charge::default();
        budget.take(&app, 30, &mut a).unwrap();
        budget.take(&app, 20, &mut a).unwrap();
        // Half the budget is one caller's most: the other half stays for
        // the others.
        let mut more = Charge::default();
        assert!(matches!(
            budget.take(&app, 1, &mut more),
            Err(ApiError::Overloaded)
        ));
        let mut b = Charge::default();
        budget.take(&other, 50, &mut b).unwrap();
        // And the whole budget bounds them all.
        let mut c = Charge::default();
        assert!(matches!(
            budget.take(&third, 1, &mut c),
            Err(ApiError::Overloaded)
        ));
        let body = Body {
            bytes: Bytes::new(),
            _charge: a,
        };
        drop(body);
        budget.take(&third, 50, &mut c).unwrap();
        assert!(matches!(
            budget.take(&app, 50, &mut more),
            Err(ApiError::Overloaded)
        ));
        assert_eq!(budget.all.available_permits(), 0);
        drop((b, c));
        budget.take(&app, 50, &mut more).unwrap();
    }

    #[test]
    fn a_body_is_wiped_in_place_unless_shared() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"13812345678");
        let bytes = buf.freeze();
        let ptr = bytes.as_ptr();
        let w = wiped(bytes).unwrap();
        assert_eq!(w.as_ptr(), ptr, "the same memory, not a copy");
        assert!(w.iter().all(|b| *b == 0) && w.len() == 11);
        // A handle that is not the only one is left alone.
        let shared = Bytes::from(b"13812345678".to_vec());
        let other = shared.clone();
        assert!(wiped(shared).is_none());
        assert_eq!(&other[..], b"13812345678");
    }

    #[test]
    fn a_growing_body_moves_to_bigger_buffers_in_order() {
        let mut w = Wiping(BytesMut::new());
        let mut want = Vec::new();
        for i in 0..100u8 {
            let chunk = vec![i; usize::from(i) + 1];
            w.push(&chunk);
            want.extend_from_slice(&chunk);
            assert!(w.0.capacity() >= w.0.len());
        }
        assert_eq!(&w.0[..], &want[..]);
    }

    #[test]
    fn a_body_is_charged_for_the_memory_it_holds_not_just_its_bytes() {
        let budget = Budget::of_bytes(1 << 20);
        let free = || budget.all.available_permits();
        let x: Arc<str> = "app".into();
        let mut a = Arriving::default();
        // Chunks that make the buffer double past what arrived.
        for _ in 0..5 {
            a.append(&[7u8; 1000], 64 << 10, &budget, &x).unwrap();
            assert!((1 << 20) - free() >= a.bytes.0.capacity());
            assert!(a.bytes.0.capacity() >= a.bytes.0.len());
        }
        assert_eq!(a.bytes.0.len(), 5000);
        // Never past the body limit, so the last doubling stops at it.
        let mut b = Arriving::default();
        b.append(&[1u8; 40_000], 50_000, &budget, &x).unwrap();
        b.append(&[1u8; 10_000], 50_000, &budget, &x).unwrap();
        assert_eq!(b.bytes.0.len(), 50_000);
        assert!(b.bytes.0.capacity() < 80_000);
        assert!(matches!(
            b.append(&[1u8], 50_000, &budget, &x),
            Err(ApiError::BodyTooLarge(50_000))
        ));
        // When the budget cannot cover the next buffer (3000 bytes, 1500
        // more), 503 before it exists; the bytes already in keep their
        // charge until dropped.
        // A share of 2,999 bytes (half the budget).
        let small = Budget::of_bytes(5998);
        let mut c = Arriving::default();
        c.append(&[1u8; 1500], 1 << 20, &small, &x).unwrap();
        assert!(matches!(
            c.append(&[1u8; 100], 1 << 20, &small, &x),
            Err(ApiError::Overloaded)
        ));
        assert_eq!(c.bytes.0.len(), 1500);
        drop(c);
        assert_eq!(small.all.available_permits(), 5998);
    }

    #[test]
    fn a_huge_budget_is_capped_not_overflowed() {
        let limits = Limits {
            max_body_bytes: 64 << 20,
            max_items: 1,
            request_timeout: std::time::Duration::from_secs(1),
            body_timeout: std::time::Duration::from_secs(1),
            handshake_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            max_concurrent_requests: usize::MAX,
            max_connections: 1,
            max_streams_per_connection: 1,
        };
        let budget = Budget::new(&limits);
        assert_eq!(budget.all.available_permits(), Semaphore::MAX_PERMITS);
    }
}
