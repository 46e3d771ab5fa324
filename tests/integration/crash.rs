//! Crash consistency under repeated SIGKILL: a child `vault dev` takes a
//! mixed load (5-field tokenize requests, erasures, detokenize) and is
//! killed at a random moment, many times over, on one data directory.
//! After every kill the raw database is checked for half-written requests
//! (a subject holds all five values of its request or none, and its key
//! exactly when it holds values); after every restart every acknowledged
//! write must still detokenize and every acknowledged erasure must hold;
//! at the end the audit chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{rngs::StdRng, Rng, SeedableRng};
use vault::store::{RocksStore, Space, Store};
use vault_sdk::wire::Status;

use crate::durability::{client, spawn};
use crate::harness::*;

const FIELDS: u64 = 5;

fn phone(request: u64, k: u64) -> String {
    format!("139{:08}", request * FIELDS + k)
}

#[derive(Clone, Default)]
struct Ledger {
    /// Subjects some request was sent for, acknowledged or not.
    tried: BTreeSet<u64>,
    /// Acknowledged requests: request number to its tokens.
    acked: BTreeMap<u64, Vec<String>>,
    /// Subjects whose erasure was asked for, acknowledged or not.
    erasing: BTreeSet<u64>,
    /// Subjects whose erasure was acknowledged.
    erased: BTreeSet<u64>,
}

fn subject(request: u64) -> String {
    format!("crash-{request}")
}

/// After a kill, before any restart: every subject holds all of its
/// request's values or none, and a subject key exactly when values.
fn check_raw(dir: &std::path::Path, ledger: &Ledger) {
    let store = RocksStore::open(dir).unwrap();
    for r in &ledger.tried {
        let s = subject(*r);
        let mut prefix = s.clone().into_bytes();
        prefix.push(0);
        let mut end = s.clone().into_bytes();
        end.push(1);
        let held = store
            .scan(Space::Subjects, &prefix, Some(&end), 100)
            .unwrap()
            .len() as u64;
        assert!(
            held == 0 || held == FIELDS,
            "{s}: {held} of {FIELDS} values: a request was half-written"
        );
        if ledger.acked.contains_key(r) && !ledger.erasing.contains(r) {
            assert_eq!(held, FIELDS, "{s}: acknowledged values missing on disk");
        }
        if ledger.erased.contains(r) {
            assert_eq!(held, 0, "{s}: acknowledged erasure undone");
        }
        let key = store.get(Space::SubjectKeys, s.as_bytes()).unwrap();
        if held > 0 {
            assert!(key.is_some(), "{s}: values without their subject key");
        }
    }
}

/// Against a running vault: acknowledged writes detokenize to their
/// values; acknowledged erasures stay erased.
async fn check_live(c: &vault_sdk::Client, ledger: &Ledger) {
    let all: Vec<(u64, u64, &String)> = ledger
        .acked
        .iter()
        .flat_map(|(r, toks)| toks.iter().enumerate().map(move |(k, t)| (*r, k as u64, t)))
        .collect();
    for chunk in all.chunks(1000) {
        let tokens: Vec<&str> = chunk.iter().map(|(_, _, t)| t.as_str()).collect();
        let out = c
            .detokenize(&detok_req("notification", &tokens))
            .await
            .unwrap();
        for ((r, k, _), v) in chunk.iter().zip(out.values) {
            if ledger.erased.contains(r) {
                assert_ne!(v.status, Status::Ok, "erased subject {r} readable");
            } else if ledger.erasing.contains(r) {
                // An erasure cut off by the kill: done or not, never half.
                assert!(matches!(
                    v.status,
                    Status::Ok | Status::Unknown | Status::Gone
                ));
            } else {
                assert_eq!(v.status, Status::Ok, "acknowledged write {r}/{k} lost");
                assert_eq!(v.value.as_deref().unwrap(), format!("+86{}", phone(*r, *k)));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_lose_nothing_acknowledged_and_half_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    kill_cycles(dir.path(), 6, |_, _| {}).await;
}

/// Rounds of mixed load against a child `vault dev` on `dir`, each ended
/// by a SIGKILL at a random moment and then `after_kill` (given the round
/// and the run's random source; the power-loss test cuts the power there),
/// after which the raw database must hold no half-written request. Then a
/// last start checks that every acknowledged write detokenizes and every
/// acknowledged erasure holds, and the audit chain verifies.
/// `VAULT_CRASH_SEED` and `VAULT_CRASH_CYCLES` replay or lengthen a run.
pub(crate) async fn kill_cycles(
    dir: &std::path::Path,
    default_cycles: u32,
    mut after_kill: impl FnMut(u32, &mut StdRng),
) {
    let seed: u64 = std::env::var("VAULT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261129);
    let cycles: u32 = std::env::var("VAULT_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cycles);
    let mut rng = StdRng::seed_from_u64(seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for cycle in 0..cycles {
        let mut child = spawn(dir);
        let c = client(dir, &child.api);
        let snapshot = ledger.lock().unwrap().clone();
        check_live(&c, &snapshot).await;
        let stop_at = Instant::now() + Duration::from_secs(5);
        let mut workers = Vec::new();
        for w in 0..8u64 {
            let (c, ledger, next) = (c.clone(), ledger.clone(), next.clone());
            let mut wrng = StdRng::seed_from_u64(seed ^ (u64::from(cycle) << 8) ^ w);
            workers.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let roll: u32 = wrng.gen_range(0..10);
                    if roll == 0 {
                        // Erase a subject acknowledged earlier.
                        let pick = {
                            let l = ledger.lock().unwrap().clone();
                            let live: Vec<u64> = l
                                .acked
                                .keys()
                                .filter(|r| !l.erasing.contains(r))
                                .copied()
                                .collect();
                            (!live.is_empty()).then(|| live[wrng.gen_range(0..live.len())])
                        };
                        if let Some(r) = pick {
                            ledger.lock().unwrap().erasing.insert(r);
                            match c.erase_subject(&subject(r)).await {
                                Ok(_) => {
                                    ledger.lock().unwrap().erased.insert(r);
                                }
                                Err(e) if e.status() == Some(503) => {}
                                Err(e) if e.status().is_some() => {
                                    panic!("erasure refused: {e}")
                                }
                                Err(_) => break,
                            }
                        }
                        continue;
                    }
                    let r = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ledger.lock().unwrap().tried.insert(r);
                    let fields = (0..FIELDS).map(|k| field("phone", &phone(r, k))).collect();
                    match c
                        .tokenize(&tok_req(&subject(r), "notification", fields))
                        .await
                    {
                        Ok(out) => {
                            let toks = out.tokens.into_iter().map(|t| t.token).collect();
                            ledger.lock().unwrap().acked.insert(r, toks);
                        }
                        Err(e) if e.status() == Some(503) => {}
                        Err(e) if e.status().is_some() => panic!("tokenize refused: {e}"),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill at a random moment while requests are in flight.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        after_kill(cycle, &mut rng);
        for w in workers {
            w.await.unwrap();
        }
        check_raw(dir, &ledger.lock().unwrap());
    }
    let l = ledger.lock().unwrap().clone();
    assert!(
        l.acked.len() > 100 && !l.erased.is_empty(),
        "too little load to prove anything: {} acknowledged, {} erased",
        l.acked.len(),
        l.erased.len()
    );
    let mut last = spawn(dir);
    let c = client(dir, &last.api);
    check_live(&c, &l).await;
    last.child.kill().unwrap();
    last.child.wait().unwrap();
    let (code, out, _) = audit_verify(dir);
    assert_eq!(code, 0, "{out}");
}
