//! The subject's data lifecycle end to end: erasure by crypto-shredding
//! (proved on the raw database files), legal hold, account closure with
//! the sweeper, correction, and erasures racing detokenize and collection.

use std::sync::Arc;

use crate::harness::*;
use vault::store::Space;
use vault_sdk::wire::Status;

const ID: &str = "350102199003071234";
const PHONE: &str = "13800138000";

fn all_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The shred log of the `vault dev` directory `dir`, its lines' fingerprints.
/// Collects the subject's resident ID number for identity verification:
/// its token.
async fn resident_id(app: &vault_sdk::Client, subject: &str) -> String {
    tokenize_one(app, subject, "identity_verification", "cn_resident_id", ID).await
}

fn shredded(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("shred.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

fn names(dir: &std::path::Path, subject: &str, wrapped: &[u8]) -> bool {
    let fp = hex::encode(vault::shreds::fingerprint(subject, wrapped));
    shredded(dir).contains(&fp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_shreds_the_subject_and_spares_shared_values() {
    let mut v = TestVault::start().await;
    let app = v.client("app");
    let fields = vec![field("cn_resident_id", ID), field("phone", PHONE)];
    let toks = app
        .tokenize(&tok_req("acct-a", "identity_verification", fields))
        .await
        .unwrap()
        .tokens;
    // The same phone number for another subject: one token, two records.
    let shared = tokenize_one(&app, "acct-b", "notification", "phone", PHONE).await;
    assert_eq!(shared, toks[1].token);
    let store = v.store();
    let wrapped = store.get(Space::SubjectKeys, b"acct-a").unwrap().unwrap();
    // Make sure the key reached table files, not only the WAL.
    drop(store);

    let receipt = app.erase_subject("acct-a").await.unwrap();
    assert_eq!(receipt.values_erased, 2);
    assert_eq!(receipt.digest.len(), 64);
    let events = v
        .client("officer")
        .audit(Some("acct-a"), None, None)
        .await
        .unwrap()
        .events;
    let erasure = events.iter().find(|e| e.action == "erasure").unwrap();
    assert_eq!(erasure.reference.as_deref(), Some(receipt.digest.as_str()));

    let out = app
        .detokenize(&detok_req("identity_verification", &[&toks[0].token]))
        .await
        .unwrap();
    assert_eq!(
        out.values[0].status,
        Status::Gone,
        "erased: gone (SPEC), not unknown"
    );
    assert!(out.values[0].value.is_none());
    // The shared phone is still acct-b's.
    let out = app
        .detokenize(&detok_req("notification", &[&shared]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("+8613800138000"));
    assert!(app
        .export_subject("acct-a")
        .await
        .unwrap()
        .values
        .is_empty());
    assert_eq!(app.export_subject("acct-b").await.unwrap().values.len(), 1);
    // Erasing again is harmless.
    assert_eq!(app.erase_subject("acct-a").await.unwrap().values_erased, 0);
    // The shred log names the destroyed key, once (an erasure waits for
    // the append only so long: on a loaded machine it may come after).
    eventually("the log names the key", || {
        names(v.dir.path(), "acct-a", &wrapped)
    })
    .await;
    assert_eq!(shredded(v.dir.path()).len(), 1);

    // On disk: the wrapped subject key is in no file of the database (WAL
    // and table files included), so even the master key cannot bring the
    // subject's old ciphertexts back.
    v.stop().await;
    let mut files = Vec::new();
    all_files(v.dir.path(), &mut files);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !contains(&bytes, &wrapped),
            "the erased subject key survives in {}",
            f.display()
        );
    }
    let cfg = config(v.dir.path());
    let raw = vault::store::RocksStore::open(v.dir.path()).unwrap();
    let master = vault::server::load_master(&cfg).unwrap();
    let keys = vault::keys::Keyring::open(&master, &raw).unwrap();
    assert!(vault::subject_keys::load(&raw, &keys, "acct-a")
        .unwrap()
        .is_none());
    assert!(vault::subject_keys::load(&raw, &keys, "acct-b")
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn the_subject_key_cache_follows_its_setting() {
    for (setting, cached) in [(65_536, 1), (0, 0)] {
        let v = TestVault::start_with(|c| c.keys.subject_key_cache = setting).await;
        let app = v.client("app");
        tokenize_one(&app, "acct-d", "notification", "phone", PHONE).await;
        // The second write reads the key the first one created.
        tokenize_one(&app, "acct-d", "notification", "email", "d@example.cn").await;
        let cache = v.running().vault.keys.cache().clone();
        assert_eq!(cache.len(), cached, "subject-key-cache = {setting}");
        // The metrics say how the cache does. The first write created the
        // key and the second read it from the store (the creating write
        // dropped it from the cache); a third is a hit, unless the cache
        // is off.
        tokenize_one(&app, "acct-d", "notification", "email", "d2@example.cn").await;
        let (_, metrics) = v.ops_get("/metrics").await;
        let (hits, misses) = if setting == 0 { (0, 3) } else { (1, 2) };
        for line in [
            format!("vault_keys_subject_cache_hits_total {hits}"),
            format!("vault_keys_subject_cache_misses_total {misses}"),
            format!("vault_keys_subject_cache_entries {cached}"),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
        }
        // A seal drops whatever was kept.
        v.running().vault.keys.seal();
        assert!(cache.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_erased_after_its_key_was_cached_starts_over_with_a_new_key() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let first = tokenize_one(&app, "acct-c", "notification", "phone", PHONE).await;
    // A second write and a read of the subject: its key is now cached.
    tokenize_one(&app, "acct-c", "notification", "email", "c@example.cn").await;
    let out = app
        .detokenize(&detok_req("notification", &[&first]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    let old = v
        .store()
        .get(Space::SubjectKeys, b"acct-c")
        .unwrap()
        .unwrap();

    assert_eq!(app.erase_subject("acct-c").await.unwrap().values_erased, 2);
    // A value sealed under the cached (erased) key would fail its guard;
    // the erasure made the cache forget it, so this write takes a new key.
    let again = tokenize_one(&app, "acct-c", "notification", "phone", PHONE).await;
    assert_eq!(again, first, "tokens are deterministic");
    let new = v
        .store()
        .get(Space::SubjectKeys, b"acct-c")
        .unwrap()
        .unwrap();
    assert_ne!(new, old);
    let out = app
        .detokenize(&detok_req("notification", &[&again]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("+8613800138000"));
}

#[tokio::test]
async fn legal_hold_blocks_erasure_until_lifted() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = tokenize_one(&app, "acct-h", "notification", "phone", PHONE).await;
    assert_eq!(
        app.legal_hold("acct-h", true).await.unwrap_err().code(),
        Some("forbidden")
    );
    // The app's try is in the subject's audit trail.
    let events = officer
        .audit(Some("acct-h"), None, None)
        .await
        .unwrap()
        .events;
    assert!(events
        .iter()
        .any(|e| e.caller == "app" && e.action == "legal_hold" && e.outcome == "forbidden"));
    assert!(officer.legal_hold("acct-h", true).await.unwrap().held);
    let e = app.erase_subject("acct-h").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("legal_hold")));
    let out = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    assert!(!officer.legal_hold("acct-h", false).await.unwrap().held);
    assert_eq!(app.erase_subject("acct-h").await.unwrap().values_erased, 1);
    let events = officer
        .audit(Some("acct-h"), None, None)
        .await
        .unwrap()
        .events;
    for (action, outcome) in [
        ("legal_hold", "hold_placed"),
        ("erasure", "refused_legal_hold"),
        ("legal_hold", "hold_lifted"),
        ("erasure", "erased"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.outcome == outcome),
            "{action} {outcome}"
        );
    }
    let r = app
        .raw(http::Method::DELETE, "/v1/subjects/a%20b", None)
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_subject_with_many_due_values_does_not_stall_the_sweeper() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention.sweep_interval_ms = 100;
    })
    .await;
    let app = v.client("app");
    let officer = v.client("officer");
    officer.legal_hold("acct-held", true).await.unwrap();
    // More due values of the held subject than one sweep batch (1,000),
    // all due before the other subject's one.
    let mut held = Vec::new();
    for part in 0..2 {
        let fields = (0..600)
            .map(|i| field("phone", &format!("1390000{:04}", part * 600 + i)))
            .collect();
        let mut req = tok_req("acct-held", "notification", fields);
        req.retention = Some("PT1S".into());
        held.extend(app.tokenize(&req).await.unwrap().tokens);
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut req = tok_req("acct-free", "notification", vec![field("phone", PHONE)]);
    req.retention = Some("PT1S".into());
    let free = app.tokenize(&req).await.unwrap().tokens[0].token.clone();
    let store = v.store();
    let key = value_key;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while holds_record(store.as_ref(), &key(&free, "acct-free")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the free subject's value was never swept"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The held subject's values all stay.
    for t in &held {
        assert!(holds_record(store.as_ref(), &key(&t.token, "acct-held")));
    }
    let (_, metrics) = v.ops_get("/metrics").await;
    assert!(
        metrics.contains("vault_retention_due_values 1200"),
        "the held values are counted as due: {}",
        metrics
            .lines()
            .filter(|l| l.contains("retention"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_closure_starts_the_clocks_and_the_sweeper_purges() {
    // Two seconds: the closures and the requests after them must fit in it
    // on a loaded machine.
    let v = TestVault::start_with(|cfg| {
        cfg.retention.after_account_closed = "PT2S".into();
        cfg.retention.sweep_interval_ms = 100;
    })
    .await;
    let app = v.client("app");
    let officer = v.client("officer");
    let a = tokenize_one(&app, "acct-c", "notification", "phone", PHONE).await;
    let held = tokenize_one(&app, "acct-d", "notification", "phone", "13900139000").await;
    officer.legal_hold("acct-d", true).await.unwrap();
    assert_eq!(
        app.account_closed("acct-c").await.unwrap().values_affected,
        1
    );
    assert_eq!(
        app.account_closed("acct-d").await.unwrap().values_affected,
        1
    );
    // Within the period, still there; and a value collected after the
    // closure gets the closure's clock, not none.
    let out = app
        .detokenize(&detok_req("notification", &[&a]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    let late = tokenize_one(&app, "acct-c", "notification", "email", "c@example.cn").await;
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let out = app
        .detokenize(&detok_req("notification", &[&late]))
        .await
        .unwrap();
    assert_ne!(
        out.values[0].status,
        Status::Ok,
        "the late value expired too"
    );
    // Once the period is over, nothing more is collected for the account:
    // a token that reads `gone` at once is no answer.
    let e = app
        .tokenize(&tok_req(
            "acct-c",
            "notification",
            vec![field("email", "d@example.cn")],
        ))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("account_closed")));
    let out = app
        .detokenize(&detok_req("notification", &[&a, &held]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone, "swept: gone");
    assert_ne!(
        out.values[1].status,
        Status::Ok,
        "expiry holds at read time"
    );
    let store = v.store();
    let key = value_key;
    eventually("acct-c's value swept", || {
        !holds_record(store.as_ref(), &key(&a, "acct-c"))
    })
    .await;
    assert!(
        holds_record(store.as_ref(), &key(&held, "acct-d")),
        "a held subject is not swept"
    );
    officer.legal_hold("acct-d", false).await.unwrap();
    eventually("swept once the hold is lifted", || {
        !holds_record(store.as_ref(), &key(&held, "acct-d"))
    })
    .await;
    // With the last value of each closed account gone, its key went too, as
    // on erasure: copies in old files stay unreadable.
    for subject in ["acct-c", "acct-d"] {
        eventually(&format!("{subject}'s key goes with its values"), || {
            store
                .get(Space::SubjectKeys, subject.as_bytes())
                .unwrap()
                .is_none()
        })
        .await;
    }
    // (The sweeper's recorder appends on its next pass.)
    eventually("both keys are in the log", || {
        shredded(v.dir.path()).len() == 2
    })
    .await;
    // What a deleted value leaves says `gone` until it has been kept long
    // enough; then the sweeper removes it too (one planted as due now).
    let tomb = store
        .get(Space::Values, &key(&a, "acct-c"))
        .unwrap()
        .unwrap();
    let tomb = vault::schema::Tombstone::decode(&tomb).expect("a tombstone");
    assert_eq!(tomb.class.as_str(), "phone");
    let due = vault::api::now_ms() - 1;
    let planted = vault::schema::Tombstone {
        keep_until: due,
        ..tomb
    };
    let token = vault::crypto::decode_token(&a).unwrap();
    let mut b = vault::store::Batch::default();
    b.put(Space::Values, key(&a, "acct-c"), planted.encode());
    b.put(
        Space::Expiry,
        vault::schema::expiry_key(due, &token, "acct-c"),
        Vec::new(),
    );
    store.write(b).unwrap();
    eventually("the planted tombstone is swept", || {
        store
            .get(Space::Values, &key(&a, "acct-c"))
            .unwrap()
            .is_none()
    })
    .await;
    let out = app
        .detokenize(&detok_req("notification", &[&a]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Unknown);
    v.metrics_reach("vault_retention_purged_values_total 3")
        .await;
    // Bad events.
    let (s, body) = post_raw(
        &app,
        "/v1/subjects/acct-c/events",
        br#"{"event":"party"}"#.to_vec(),
    )
    .await;
    assert_eq!((s, code(&body)), (400, "invalid_request"));
    let (s, body) = post_raw(&app, "/v1/subjects/acct-c/events", b"{".to_vec()).await;
    assert_eq!((s, code(&body)), (400, "malformed_json"));
}

#[tokio::test]
async fn correction_replaces_the_value_and_its_token() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let old = tokenize_one(&app, "acct-e", "notification", "phone", PHONE).await;
    let new = app.correct("acct-e", &old, "139 0013 9000").await.unwrap();
    assert_ne!(new.token, old);
    assert_eq!(new.class, "phone");
    let out = app
        .detokenize(&detok_req("notification", &[&old, &new.token]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone, "corrected away: gone");
    assert_eq!(out.values[1].value.as_deref(), Some("+8613900139000"));
    let e = app
        .correct("acct-e", &new.token, "12345")
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(422), Some("invalid_value")));
    assert_eq!(
        app.correct("acct-e", &old, "13900139001")
            .await
            .unwrap_err()
            .code(),
        Some("not_found")
    );
    assert_eq!(
        app.correct("acct-e", "not-a-token", "13900139001")
            .await
            .unwrap_err()
            .code(),
        Some("not_found")
    );
    let e = app
        .correct("acct-x", &new.token, "13900139001")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"));
    // Not mistaken for a missing endpoint.
    assert!(
        e.to_string().contains("no live value under this token"),
        "{e}"
    );
    let r = app
        .raw(
            http::Method::PUT,
            &format!("/v1/subjects/acct-e/tokens/{}", new.token),
            Some(br#"{"value":1}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let events = v
        .client("officer")
        .audit(Some("acct-e"), None, None)
        .await
        .unwrap()
        .events;
    assert!(events
        .iter()
        .any(|e| e.action == "correction" && e.reference.as_deref() == Some(new.token.as_str())));
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains("13900139000"));
    // Under a legal hold the data stays as it is.
    v.client("officer")
        .legal_hold("acct-e", true)
        .await
        .unwrap();
    let e = app
        .correct("acct-e", &new.token, "13900139001")
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("legal_hold")));
    let out = app
        .detokenize(&detok_req("notification", &[&new.token]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("+8613900139000"));
}

/// A correction collects a value: an officer may not make one, nor an app
/// that may not collect the value's class for the purpose it was
/// collected for (here one allowed only IP addresses). Each would get back
/// the token of a value of its choosing. Refused 403, audited, and the
/// value stays.
#[tokio::test]
async fn correction_is_for_apps_that_may_collect_the_value() {
    let v = TestVault::start_with(|c| {
        for caller in c.callers.iter_mut() {
            if caller.name == "officer2" {
                caller.role = vault::policy::Role::App;
            }
        }
        c.grants.push(vault::config::GrantConfig {
            caller: "officer2".into(),
            purpose: "traffic_statistics".into(),
            collect: vec!["ip".into()],
            full: Vec::new(),
            masked: Vec::new(),
        });
    })
    .await;
    let app = v.client("app");
    let old = tokenize_one(&app, "acct-f", "notification", "phone", PHONE).await;
    for who in ["officer", "officer2"] {
        let e = v
            .client(who)
            .correct("acct-f", &old, "13900139000")
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(403), Some("purpose_not_allowed")),
            "{who}"
        );
    }
    let out = app
        .detokenize(&detok_req("notification", &[&old]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("+8613800138000"));
    let refused: Vec<_> = v
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "correction" && e.outcome == "purpose_not_allowed")
        .map(|e| e.caller)
        .collect();
    assert_eq!(refused, ["officer", "officer2"]);
    // The app that collected it still may.
    app.correct("acct-f", &old, "13900139000").await.unwrap();
}

#[tokio::test]
async fn correction_keeps_the_class_token_style() {
    let v = TestVault::start_with(|cfg| {
        cfg.tokens
            .insert("phone".into(), vault::tokens::TokenStyle::Preserving);
    })
    .await;
    let app = v.client("app");
    let old = tokenize_one(&app, "acct-p", "notification", "phone", PHONE).await;
    assert_eq!(old.len(), 11, "a phone-shaped token");
    let new = app.correct("acct-p", &old, "13900139000").await.unwrap();
    // The token tokenize gives the new value: same value, same token.
    let again = tokenize_one(&app, "acct-q", "notification", "phone", "13900139000").await;
    assert_eq!(new.token, again);
    let out = app
        .detokenize(&detok_req("notification", &[&old, &new.token]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone, "corrected away: gone");
    assert_eq!(out.values[1].value.as_deref(), Some("+8613900139000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_racing_detokenize_gives_the_value_or_nothing() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = resident_id(&app, "acct-r").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (c, tok, stop) = (v.client("app"), tok.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let out = c
                        .detokenize(&detok_req("identity_verification", &[&tok]))
                        .await
                        .unwrap();
                    match out.values[0].status {
                        Status::Ok => {
                            assert_eq!(out.values[0].value.as_deref(), Some(ID));
                            seen.0 += 1;
                        }
                        _ => {
                            assert!(out.values[0].value.is_none());
                            seen.1 += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    app.erase_subject("acct-r").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut after = 0;
    for r in readers {
        after += r.await.unwrap().1;
    }
    assert!(after > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_within_a_legal_retention_period_restricts_then_erases() {
    let mut v = TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("cn_resident_id".into(), "PT5S".into());
        cfg.retention.sweep_interval_ms = 100;
        cfg.retention.after_account_closed = "PT1S".into();
    })
    .await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = resident_id(&app, "acct-l").await;
    // A phone, which no law requires keeping, beside it.
    let phone = tokenize_one(&app, "acct-l", "identity_verification", "phone", PHONE).await;
    let wrapped = v
        .store()
        .get(Space::SubjectKeys, b"acct-l")
        .unwrap()
        .unwrap();
    let receipt = app.erase_subject("acct-l").await.unwrap();
    assert_eq!(receipt.values_erased, 1, "the phone goes at once");
    let until = receipt.restricted_until.expect("restricted, not erased");
    assert!(until > receipt.time_ms);
    // Closing the account now changes no clock: the kept value stays to
    // its legal end (a closure clock of 1 s would have cut it short).
    assert_eq!(
        app.account_closed("acct-l").await.unwrap().values_affected,
        0
    );
    let out = app
        .detokenize(&detok_req("identity_verification", &[&phone]))
        .await
        .unwrap();
    assert!(out.values[0].status == Status::Gone, "{:?}", out.values[0]);
    // Nothing new is collected for the subject meanwhile, nor is a kept
    // value collected again (which would have restarted its clock).
    for (class, value) in [("phone", PHONE), ("cn_resident_id", ID)] {
        let e = app
            .tokenize(&tok_req(
                "acct-l",
                "identity_verification",
                vec![field(class, value)],
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(409), Some("subject_restricted"))
        );
    }
    // Restricted: nothing for ordinary purposes...
    let out = app
        .detokenize(&detok_req("identity_verification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(
        (out.values[0].status, out.values[0].reason.as_deref()),
        (Status::Denied, Some("restricted"))
    );
    // ...but a legal exception with an approval still works.
    let req = approved_detok_req(&officer, "legal_obligation", "acct-l", "tax-2026", &[&tok]).await;
    assert_eq!(
        app.detokenize(&req).await.unwrap().values[0]
            .value
            .as_deref(),
        Some(ID)
    );
    // When the period ends the sweeper erases, key and all.
    let wait = until.saturating_sub(vault::api::now_ms());
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let store = v.store();
    eventually("the sweeper erases at the period's end", || {
        store.get(Space::SubjectKeys, b"acct-l").unwrap().is_none()
    })
    .await;
    drop(store);
    eventually("the key is in the log", || {
        names(v.dir.path(), "acct-l", &wrapped)
    })
    .await;
    let out = app
        .detokenize(&detok_req("identity_verification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(
        out.values[0].status,
        Status::Gone,
        "erased with the period's end: gone"
    );
    let events = officer
        .audit(Some("acct-l"), None, None)
        .await
        .unwrap()
        .events;
    assert!(events.iter().any(|e| e.action == "erasure"
        && e.outcome == "restricted"
        && e.reference.as_deref() == Some(receipt.digest.as_str())));
    assert!(events.iter().any(|e| e.action == "retention_purge"));
    assert!(names(v.dir.path(), "acct-l", &wrapped));
    // As with an immediate erasure, the key is in no file of the database.
    v.stop().await;
    let mut files = Vec::new();
    all_files(v.dir.path(), &mut files);
    for f in &files {
        assert!(
            !contains(&std::fs::read(f).unwrap(), &wrapped),
            "the erased subject key survives in {}",
            f.display()
        );
    }
}

/// An erasure the law turns into a restriction keeps a value no longer
/// than its own clock would have, and does not bring back a value whose
/// clock ran out before the sweeper reached it.
#[tokio::test]
async fn a_restricting_erasure_keeps_nothing_past_its_own_clock() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("phone".into(), "PT1H".into());
        cfg.retention.sweep_interval_ms = 600_000;
    })
    .await;
    let app = v.client("app");
    let officer = v.client("officer");
    let mut tokens = Vec::new();
    for (value, retention) in [(PHONE, "PT1S"), ("13900139000", "PT30S")] {
        let mut req = tok_req(
            "acct-clock",
            "identity_verification",
            vec![field("phone", value)],
        );
        req.retention = Some(retention.into());
        tokens.push(app.tokenize(&req).await.unwrap().tokens[0].token.clone());
    }
    // The first value's clock runs out; the sweeper is far away.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let receipt = app.erase_subject("acct-clock").await.unwrap();
    assert_eq!(receipt.values_erased, 1, "the expired value is erased");
    let until = receipt.restricted_until.expect("the second is kept");
    assert!(
        until <= receipt.time_ms + 30_000,
        "kept past its own clock: {until} after {}",
        receipt.time_ms
    );
    // Not even a legal exception reaches the expired one.
    let req = approved_detok_req(
        &officer,
        "legal_obligation",
        "acct-clock",
        "tax-2026",
        &[&tokens[0], &tokens[1]],
    )
    .await;
    let out = app.detokenize(&req).await.unwrap();
    assert_eq!(out.values[0].status, Status::Gone, "{:?}", out.values[0]);
    assert_eq!(out.values[1].value.as_deref(), Some("+8613900139000"));
}

/// Purges that fail (a compaction on a disk short of room) are not tried
/// once per erasure: a burst shares one try, its mark stays for the
/// sweeper, and every erasure answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_behind_a_failing_purge_share_its_try() {
    let (v, store) = start_hooked(|_| {}).await;
    let app = v.client("app");
    for i in 0..10 {
        tokenize_one(&app, &format!("acct-p{i}"), "notification", "phone", PHONE).await;
    }
    store
        .fail_purges
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = store.purges.load(std::sync::atomic::Ordering::SeqCst);
    let mut erasing = Vec::new();
    for i in 0..10 {
        let app = v.client("app");
        erasing.push(tokio::spawn(async move {
            app.erase_subject(&format!("acct-p{i}")).await
        }));
    }
    for e in erasing {
        e.await.unwrap().unwrap();
    }
    let tried = store.purges.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!((1..=3).contains(&tried), "{tried} purges for one burst");
    assert!(
        v.store()
            .get(Space::Meta, vault::subject_keys::PURGE_PENDING)
            .unwrap()
            .is_some(),
        "the mark of a failed purge stays"
    );
}

/// Collections racing an erasure that the law turns into a restriction:
/// each value acknowledged before the restriction was committed is either
/// in the first pass or found by the second, so every phone (which no law
/// keeps) is gone when the erasure answers, however the two interleaved,
/// and nothing is collected afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_a_restricting_erasure_leave_no_phone_behind() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("cn_resident_id".into(), "PT1H".into());
    })
    .await;
    let app = v.client("app");
    let mut raced = 0;
    for round in 0..6u32 {
        let subject = format!("acct-race-{round}");
        let id = tokenize_one(
            &app,
            &subject,
            "identity_verification",
            "cn_resident_id",
            ID,
        )
        .await;
        let collectors: Vec<_> = (0..4u32)
            .map(|c| {
                let (app, subject) = (v.client("app"), subject.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0u32.. {
                        let phone = format!("1390{round}{c}{i:05}");
                        match app
                            .tokenize(&tok_req(
                                &subject,
                                "identity_verification",
                                vec![field("phone", &phone)],
                            ))
                            .await
                        {
                            Ok(r) => acked.push(r.tokens[0].token.clone()),
                            Err(e) => {
                                assert_eq!(
                                    (e.status(), e.code()),
                                    (Some(409), Some("subject_restricted")),
                                    "{e}"
                                );
                                return acked;
                            }
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20 + u64::from(round) * 5)).await;
        let receipt = app.erase_subject(&subject).await.unwrap();
        assert!(receipt.restricted_until.is_some(), "restricted, not erased");
        let mut acked = Vec::new();
        for c in collectors {
            acked.extend(c.await.unwrap());
        }
        // Acknowledged phones the erasure counted: all of them, those of
        // its first pass and those of its second.
        assert_eq!(receipt.values_erased, acked.len() as u64, "round {round}");
        for chunk in acked.chunks(100) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let out = app
                .detokenize(&detok_req("identity_verification", &refs))
                .await
                .unwrap();
            for r in &out.values {
                assert_eq!(r.status, Status::Gone, "round {round}: {r:?}");
            }
        }
        let out = app
            .detokenize(&detok_req("identity_verification", &[&id]))
            .await
            .unwrap();
        assert_eq!(
            (out.values[0].status, out.values[0].reason.as_deref()),
            (Status::Denied, Some("restricted"))
        );
        raced += u32::from(!acked.is_empty());
    }
    assert!(raced > 0, "no collection raced the erasure");
}

/// Collections racing an account closure: a value acknowledged before the
/// closure was committed gets the closure's clock from its first or its
/// second pass, and one collected after it gets the clock at collection,
/// so when the period ends every value is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_an_account_closure_all_get_its_clock() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention.after_account_closed = "PT1S".into();
        cfg.retention.sweep_interval_ms = 100;
    })
    .await;
    let app = v.client("app");
    let mut acked = Vec::new();
    let mut closures = Vec::new();
    for round in 0..4u32 {
        let subject = format!("acct-close-{round}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let collectors: Vec<_> = (0..4u32)
            .map(|c| {
                let (app, subject, stop) = (v.client("app"), subject.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut i = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let phone = format!("1370{round}{c}{i:05}");
                        let r = app
                            .tokenize(&tok_req(
                                &subject,
                                "notification",
                                vec![field("phone", &phone)],
                            ))
                            .await
                            .unwrap();
                        acked.push(r.tokens[0].token.clone());
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20 + u64::from(round) * 5)).await;
        closures.push(app.account_closed(&subject).await.unwrap().values_affected);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in collectors {
            acked.extend(c.await.unwrap());
        }
    }
    assert!(closures.iter().all(|n| *n > 0), "{closures:?}");
    // The period (1 s) and a few sweeps.
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    for chunk in acked.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let out = app
            .detokenize(&detok_req("notification", &refs))
            .await
            .unwrap();
        for r in &out.values {
            assert_eq!(r.status, Status::Gone, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymizing_keeps_only_generalized_counts() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention.after_account_closed = "PT1S".into();
        cfg.retention.sweep_interval_ms = 100;
        cfg.retention.on_expiry = vault::config::OnExpiry::Anonymize;
    })
    .await;
    let app = v.client("app");
    for (s, phone) in [("acct-x", PHONE), ("acct-y", "13800138001")] {
        let fields = vec![
            field("cn_resident_id", ID),
            field("phone", phone),
            field("name", "陈明"),
        ];
        app.tokenize(&tok_req(s, "identity_verification", fields))
            .await
            .unwrap();
        app.account_closed(s).await.unwrap();
    }
    // Both subjects swept, in one pass or two.
    let want = [
        ("cn_resident_id", "province=35;birth_year=1990", 2),
        ("name", "", 2),
        ("phone", "block=138", 2),
    ];
    let deadline = std::time::Instant::now() + EVENTUALLY;
    let stats = loop {
        let stats = v.client("officer").anonymized_stats().await.unwrap();
        let got: Vec<(&str, &str, u64)> = stats
            .entries
            .iter()
            .map(|e| (e.class.as_str(), e.generalization.as_str(), e.count))
            .collect();
        if got == want {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(app
        .export_subject("acct-x")
        .await
        .unwrap()
        .values
        .is_empty());
    v.metrics_reach("vault_retention_anonymized_values_total 6")
        .await;
    assert!(!serde_json::to_string(&stats).unwrap().contains("1234"));
    assert_eq!(
        app.anonymized_stats().await.unwrap_err().code(),
        Some("forbidden")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_due_while_the_vault_is_down_are_swept_after_restart() {
    // No sweeping in the first run: everything falls due while stopped.
    let mut v = TestVault::start_with(|cfg| {
        cfg.retention.after_account_closed = "PT1S".into();
        cfg.retention.sweep_interval_ms = 600_000;
    })
    .await;
    let app = v.client("app");
    let mut tokens = Vec::new();
    for r in 0..3 {
        let subject = format!("acct-{r}");
        let fields = (0..400)
            .map(|k| field("phone", &format!("139{:08}", r * 1000 + k)))
            .collect();
        let out = app
            .tokenize(&tok_req(&subject, "notification", fields))
            .await
            .unwrap();
        tokens.extend(out.tokens.into_iter().map(|t| t.token));
        assert_eq!(
            app.account_closed(&subject).await.unwrap().values_affected,
            400
        );
    }
    v.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // The restarted vault sweeps it all, over more than one batch.
    let text = std::fs::read_to_string(v.dir.path().join("vault.toml")).unwrap();
    let text = text
        .replace(
            "after-account-closed = \"P180D\"",
            "after-account-closed = \"PT1S\"",
        )
        .replace("sweep-interval-ms = 1000", "sweep-interval-ms = 100");
    std::fs::write(v.dir.path().join("vault.toml"), text).unwrap();
    v.restart().await;
    let store = v.store();
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = store
            .scan(Space::Values, b"", None, 10_000)
            .unwrap()
            .iter()
            .filter(|(_, b)| vault::schema::Record::decode(b).is_some())
            .count();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0);
    // Counted once the sweeper's last commit has returned to it.
    v.metrics_reach("vault_retention_purged_values_total 1200")
        .await;
    v.metrics_reach("vault_retention_due_values 0").await;
    let app = v.client("app");
    let refs: Vec<&str> = tokens.iter().take(100).map(|t| t.as_str()).collect();
    let out = app
        .detokenize(&detok_req("notification", &refs))
        .await
        .unwrap();
    assert!(out.values.iter().all(|x| x.status != Status::Ok));
}

/// An erasure marks, in its own write, that the destroyed key still has to
/// leave the engine's files; the purge clears the mark, and a mark left by
/// a crash between the two is purged at the next start.
#[tokio::test]
async fn a_purge_cut_short_is_made_at_the_next_start() {
    use vault::store::{Batch, Space};
    use vault::subject_keys::PURGE_PENDING;
    let mut v = TestVault::start().await;
    let app = v.client("app");
    tokenize_one(&app, "acct-p", "notification", "phone", "13800138000").await;
    app.erase_subject("acct-p").await.unwrap();
    assert_eq!(v.store().get(Space::Meta, PURGE_PENDING).unwrap(), None);
    // As the erasure's write leaves it when the process dies before the
    // purge.
    let mut b = Batch::default();
    b.put(Space::Meta, PURGE_PENDING.to_vec(), vec![7; 8]);
    v.store().write(b).unwrap();
    v.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while v.store().get(Space::Meta, PURGE_PENDING).unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the mark stayed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An officer's hold that commits while a sweep pass is between reading
/// its due entries and writing its deletions wins: the pass conflicts and
/// the next one passes the held subject over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_during_a_sweep_pass_keeps_the_values() {
    let (v, store) = start_hooked(|cfg| {
        cfg.retention.sweep_interval_ms = 50;
    })
    .await;
    let app = v.client("app");
    let mut req = tok_req("acct-h", "notification", vec![field("phone", PHONE)]);
    req.retention = Some("PT1S".into());
    let tok = app.tokenize(&req).await.unwrap().tokens[0].token.clone();
    // The sweeper's read of the due value is the next read of `Values`:
    // the hold lands right then, as a PUT committed mid-pass would.
    store.arm(Space::Values, |inner| {
        use vault::store::Store as _;
        let mut b = vault::store::Batch::default();
        b.put(Space::Meta, b"hold/acct-h".to_vec(), b"officer".to_vec());
        inner.write(b).unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !store.fired.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Several passes later, the held value is still there.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        holds_record(store.as_ref(), &value_key(&tok, "acct-h")),
        "a value under a hold acknowledged before the sweep's write was deleted"
    );
}

/// Erasing a closed account does not undo its closure: a value collected
/// for the subject afterwards still gets the post-closure clock.
#[tokio::test]
async fn an_erased_closed_account_stays_closed() {
    let v = TestVault::start().await;
    let app = v.client("app");
    tokenize_one(&app, "acct-e", "notification", "phone", PHONE).await;
    app.account_closed("acct-e").await.unwrap();
    app.erase_subject("acct-e").await.unwrap();
    let late = tokenize_one(&app, "acct-e", "notification", "email", "e@example.cn").await;
    let bytes = v
        .store()
        .get(Space::Values, &value_key(&late, "acct-e"))
        .unwrap()
        .unwrap();
    let rec = vault::schema::Record::decode(&bytes).unwrap();
    assert!(
        rec.expires_ms.is_some(),
        "a value collected after the erasure of a closed account has no clock"
    );
}

/// A collection that commits between an erasure's read of the subject's
/// values and the erasure's own write (it is guarded on the key, which the
/// erasure has not yet destroyed) is erased too, not left behind as a row
/// nobody can open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_landing_inside_an_erasure_is_erased_with_it() {
    use vault::store::Store as _;
    let (v, store) = start_hooked(|_| {}).await;
    let app = v.client("app");
    let first = tokenize_one(&app, "acct-r", "notification", "phone", PHONE).await;
    let late = tokenize_one(&app, "acct-r", "notification", "phone", "13900139000").await;
    // Take the late value's rows out, to put them back at the moment the
    // erasure has read the index (its first read of a value).
    let vk = value_key(&late, "acct-r");
    let token = vault::crypto::decode_token(&late).unwrap();
    let sk = vault::schema::subject_key("acct-r", &token);
    let row = store.inner.get(Space::Values, &vk).unwrap().unwrap();
    let mut b = vault::store::Batch::default();
    b.delete(Space::Values, vk.clone());
    b.delete(Space::Subjects, sk.clone());
    store.inner.write(b).unwrap();
    store.arm(Space::Values, move |inner| {
        let mut b = vault::store::Batch::default();
        b.put(Space::Values, vk, row);
        b.put(Space::Subjects, sk, Vec::new());
        inner.write(b).unwrap();
    });
    let receipt = app.erase_subject("acct-r").await.unwrap();
    assert!(store.fired.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(receipt.values_erased, 2);
    let left = store
        .inner
        .scan(Space::Subjects, b"acct-r\0", Some(b"acct-r\x01"), 10)
        .unwrap();
    assert!(left.is_empty(), "{} index rows left", left.len());
    let out = app
        .detokenize(&detok_req("notification", &[&first, &late]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone);
    assert_eq!(out.values[1].status, Status::Gone);
    // A value collected after the erasure (a new key) is not touched by a
    // later look: it is the subject's new data.
    let again = tokenize_one(&app, "acct-r", "notification", "phone", PHONE).await;
    let out = app
        .detokenize(&detok_req("notification", &[&again]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
}

/// The files of the database in `dir` (a `vault dev` directory), without
/// the configuration, the keys and the shred log.
fn database_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            !["vault.toml", "master.key", "shred.log"].contains(&name)
        })
        .collect()
}

/// A vault whose resident IDs the law keeps for `period` (written into its
/// `vault.toml`, so restarts keep it), and that file.
async fn with_legal_minimum(period: &str) -> (TestVault, std::path::PathBuf) {
    let mut v = TestVault::start().await;
    let toml = v.dir.path().join("vault.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace(
        "# cn_resident_id = \"P3Y\"",
        &format!("cn_resident_id = \"{period}\""),
    );
    std::fs::write(&toml, text).unwrap();
    v.restart().await;
    (v, toml)
}

/// `vault operator accept-shred-log` on the stopped vault of `toml`, which
/// must succeed.
fn accept_shred_log(toml: &std::path::Path) {
    let (code, out, err) = run_accept_shred_log(toml);
    assert_eq!(code, 0, "{out}{err}");
}

/// `vault operator accept-shred-log --config toml`: exit code, stdout, stderr.
fn run_accept_shred_log(toml: &std::path::Path) -> (i32, String, String) {
    run_vault(&[
        "operator",
        "accept-shred-log",
        "--config",
        toml.to_str().unwrap(),
    ])
}

/// A copy of the database in `dir` (a backup), in a new directory.
fn copy_database(dir: &std::path::Path) -> tempfile::TempDir {
    let backup = tempfile::tempdir().unwrap();
    for f in database_files(dir) {
        std::fs::copy(&f, backup.path().join(f.file_name().unwrap())).unwrap();
    }
    backup
}

/// Puts the database of `backup` back in `dir`, as a restore would.
fn restore_database(dir: &std::path::Path, backup: &std::path::Path) {
    for f in database_files(dir) {
        std::fs::remove_file(f).unwrap();
    }
    for f in database_files(backup) {
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// A database restored from a copy taken before an erasure (a backup)
/// does not bring the erased subject back: the shred log, kept outside
/// the database, names the destroyed key, and the start erases it again
/// before serving. A subject erased and collected again before the copy
/// keeps its new key, and a plain restart checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_does_not_bring_erased_subjects_back() {
    let mut v = TestVault::start().await;
    let app = v.client("app");
    let gone = tokenize_one(&app, "acct-gone", "notification", "phone", "13800138000").await;
    let kept = tokenize_one(&app, "acct-kept", "notification", "phone", "13900139000").await;
    tokenize_one(&app, "acct-back", "notification", "phone", "13700137000").await;
    app.erase_subject("acct-back").await.unwrap();
    let back = tokenize_one(&app, "acct-back", "notification", "phone", "13600136000").await;
    v.stop().await;
    let backup = copy_database(v.dir.path());

    v.restart().await;
    let app = v.client("app");
    assert_eq!(
        app.erase_subject("acct-gone").await.unwrap().values_erased,
        1
    );
    let log = std::fs::read_to_string(v.dir.path().join("shred.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    // The log names keys, not subjects.
    assert!(!log.contains("acct"), "{log}");
    v.stop().await;

    // The restore: the database's files as they were in the copy.
    restore_database(v.dir.path(), backup.path());
    v.restart().await;
    let app = v.client("app");
    let out = app
        .detokenize(&detok_req("notification", &[&gone, &kept, &back]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone);
    assert_eq!(out.values[1].value.as_deref(), Some("+8613900139000"));
    assert_eq!(out.values[2].value.as_deref(), Some("+8613600136000"));
    assert!(app
        .export_subject("acct-gone")
        .await
        .unwrap()
        .values
        .is_empty());
    assert_eq!(
        v.store().get(Space::SubjectKeys, b"acct-gone").unwrap(),
        None
    );
    let again = |events: &[vault_sdk::wire::AuditEvent]| {
        events
            .iter()
            .filter(|e| e.action == "erasure" && e.outcome == "erased_again")
            .map(|e| e.subject.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(again(&v.audit_events().await), ["acct-gone"]);
    // Nothing new in the log: the key was already named.
    let after = std::fs::read_to_string(v.dir.path().join("shred.log")).unwrap();
    assert_eq!(after, log);

    // A plain restart finds the database in step with the log.
    v.restart().await;
    assert_eq!(again(&v.audit_events().await), ["acct-gone"]);
    let out = v
        .client("app")
        .detokenize(&detok_req("notification", &[&kept, &back]))
        .await
        .unwrap();
    assert!(out.values.iter().all(|x| x.status == Status::Ok));
}

/// An erasure whose process dies after its write and before the shred
/// log's append leaves a pending row; the next start appends it. A log
/// that is not the one the database saw (cut, or replaced by another of
/// the same length) stops the start until an operator accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shred_log_catches_up_after_a_crash_and_a_changed_one_stops_the_start() {
    use vault::store::Batch;
    let mut v = TestVault::start().await;
    let app = v.client("app");
    tokenize_one(&app, "acct-x", "notification", "phone", PHONE).await;
    let wrapped = v
        .store()
        .get(Space::SubjectKeys, b"acct-x")
        .unwrap()
        .unwrap();
    app.erase_subject("acct-x").await.unwrap();
    eventually("the log names the key", || {
        names(v.dir.path(), "acct-x", &wrapped)
    })
    .await;
    // As an erasure's write leaves it when the process dies before the
    // append.
    let mut b = Batch::default();
    vault::shreds::mark(&mut b, "acct-y", b"a wrapped key", 1);
    v.store().write(b).unwrap();
    v.restart().await;
    let pending = v
        .store()
        .scan(Space::Meta, vault::shreds::PENDING, None, 10)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with(vault::shreds::PENDING))
        .count();
    assert_eq!(pending, 0);
    assert!(names(v.dir.path(), "acct-y", b"a wrapped key"));
    assert_eq!(shredded(v.dir.path()).len(), 2);
    v.stop().await;

    let log = v.dir.path().join("shred.log");
    let good = std::fs::read(&log).unwrap();
    let toml = v.dir.path().join("vault.toml");
    let cfg = config(v.dir.path());
    let mut changed = good.clone();
    changed[3] = if changed[3] == b'0' { b'1' } else { b'0' };
    // A record still pending (its append failed before the stop) stays in
    // the database while the start refuses the log: it must not go into a
    // log that is about to be put right.
    let pending_here = |dir: &std::path::Path| {
        let store = vault::store::RocksStore::open(dir).unwrap();
        vault::store::Store::scan(&store, Space::Meta, vault::shreds::PENDING, None, 10)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(vault::shreds::PENDING))
            .count()
    };
    {
        let store = vault::store::RocksStore::open(v.dir.path()).unwrap();
        let mut b = Batch::default();
        vault::shreds::mark(&mut b, "acct-z", b"another wrapped key", 2);
        vault::store::Store::write(&store, b).unwrap();
    }
    for (bytes, what) in [(&good[..70], "cut"), (&changed[..], "replaced")] {
        std::fs::write(&log, bytes).unwrap();
        let e = vault::server::start(&cfg).await.unwrap_err().to_string();
        assert!(e.contains("accept-shred-log"), "{what}: {e}");
        assert_eq!(std::fs::read(&log).unwrap(), bytes, "{what}: written to");
        assert_eq!(pending_here(v.dir.path()), 1, "{what}");
    }
    // The operator goes on with the replaced log: the next start checks
    // every key against it, and says so in the audit log.
    accept_shred_log(&toml);
    v.restart().await;
    let events = v.audit_events().await;
    let accepted = events
        .iter()
        .find(|e| e.action == "shred_log_accepted")
        .unwrap();
    let reference = accepted.reference.as_deref().unwrap_or_default();
    assert!(
        reference.contains(&format!("accepted={}:", changed.len())),
        "{reference}"
    );
    assert!(names(v.dir.path(), "acct-z", b"another wrapped key"));
    // The database took the replaced log: the one it had before is now
    // the one it did not see, and is refused in turn.
    v.stop().await;
    std::fs::write(&log, &good).unwrap();
    let e = vault::server::start(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("accept-shred-log"), "{e}");
}

/// Erasures at once each append their key to the shred log, and the
/// database stays in step with it (what lets a plain restart skip the
/// check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_erasures_keep_the_database_in_step_with_the_shred_log() {
    let v = TestVault::start().await;
    let app = v.client("app");
    for i in 0..20 {
        let phone = format!("1390000{i:04}");
        tokenize_one(&app, &format!("acct-c{i}"), "notification", "phone", &phone).await;
    }
    let mut erasures = tokio::task::JoinSet::new();
    for i in 0..20 {
        let app = app.clone();
        erasures.spawn(async move { app.erase_subject(&format!("acct-c{i}")).await.unwrap() });
    }
    while let Some(r) = erasures.join_next().await {
        assert_eq!(r.unwrap().values_erased, 1);
    }
    // (Each erasure waits for its append only so long.)
    let store = v.store();
    eventually("20 lines, and the database in step with them", || {
        let log = std::fs::read(v.dir.path().join("shred.log")).unwrap();
        let seen = store.get(Space::Meta, vault::shreds::SEEN).unwrap();
        shredded(v.dir.path()).len() == 20
            && seen.and_then(|s| s.get(..8).map(<[u8]>::to_vec))
                == Some((log.len() as u64).to_be_bytes().to_vec())
    })
    .await;
}

/// A shred log the vault cannot create or hold stops the start: erasures
/// would go unrecorded.
#[tokio::test]
async fn a_start_without_a_usable_shred_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.server.shred_log = Some(dir.path().join("missing").join("shred.log"));
    let e = vault::server::start(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("shred log") && e.contains("missing"), "{e}");
    // Held by another opener (another vault with the same file).
    let held = dir.path().join("held.log");
    let _other = vault::shreds::ShredLog::open(&held).unwrap();
    cfg.server.shred_log = Some(held);
    let e = vault::server::start(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("another process holds it"), "{e}");
    // accept-shred-log with no shred log configured: a configuration error.
    let toml = dir.path().join("vault.toml");
    let bare = dir.path().join("no-log.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&bare, text.replace("shred-log = \"shred.log\"", "")).unwrap();
    let (code, _, err) = run_accept_shred_log(&bare);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("server.shred-log is not set"), "{err}");
}

/// An erasure the law turned into a restriction (PIPL Art. 47) is in the
/// shred log too: a database restored from before it has the subject
/// restricted again at start, and the values no law requires erased again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_does_not_lift_a_restriction() {
    let (mut v, _) = with_legal_minimum("P1D").await;
    let app = v.client("app");
    let id = resident_id(&app, "acct-r").await;
    let phone = tokenize_one(&app, "acct-r", "identity_verification", "phone", PHONE).await;
    v.stop().await;
    let backup = copy_database(v.dir.path());
    v.restart().await;
    let receipt = v.client("app").erase_subject("acct-r").await.unwrap();
    assert!(receipt.restricted_until.is_some());
    let log = std::fs::read_to_string(v.dir.path().join("shred.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.split(' ').nth(2).is_some_and(|r| r.starts_with('r'))),
        "{log}"
    );
    v.stop().await;
    restore_database(v.dir.path(), backup.path());
    v.restart().await;
    let app = v.client("app");
    let out = app
        .detokenize(&detok_req("identity_verification", &[&id, &phone]))
        .await
        .unwrap();
    assert_eq!(
        (out.values[0].status, out.values[0].reason.as_deref()),
        (Status::Denied, Some("restricted"))
    );
    assert_eq!(out.values[1].status, Status::Gone, "erased again");
    let e = app
        .tokenize(&tok_req(
            "acct-r",
            "identity_verification",
            vec![field("phone", PHONE)],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("subject_restricted"));
    let events = v.audit_events().await;
    assert!(events
        .iter()
        .any(|e| e.outcome == "restricted_again" && e.subject.as_deref() == Some("acct-r")));
    // Nothing waits for a second pass.
    let redo = v
        .store()
        .scan(Space::Meta, b"shred/redo/", None, 10)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"shred/redo/"))
        .count();
    assert_eq!(redo, 0);
}

/// A shred log cut while the vault runs takes nothing more: the erasure's
/// record waits in the database, the next start refuses the cut log, and
/// with the right log put back the record goes into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_log_cut_while_running_keeps_the_records_for_the_right_one() {
    let mut v = TestVault::start().await;
    let app = v.client("app");
    tokenize_one(&app, "acct-1", "notification", "phone", PHONE).await;
    tokenize_one(&app, "acct-2", "notification", "phone", "13900139000").await;
    let wrapped = v
        .store()
        .get(Space::SubjectKeys, b"acct-2")
        .unwrap()
        .unwrap();
    app.erase_subject("acct-1").await.unwrap();
    let log = v.dir.path().join("shred.log");
    let good = std::fs::read(&log).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_eq!(app.erase_subject("acct-2").await.unwrap().values_erased, 1);
    assert!(std::fs::read(&log).unwrap().is_empty(), "nothing appended");
    let pending = |v: &TestVault| {
        v.store()
            .scan(Space::Meta, vault::shreds::PENDING, None, 10)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(vault::shreds::PENDING))
            .count()
    };
    assert_eq!(pending(&v), 1);
    v.stop().await;
    let cfg = config(v.dir.path());
    let e = vault::server::start(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("accept-shred-log"), "{e}");
    std::fs::write(&log, &good).unwrap();
    v.restart().await;
    assert_eq!(pending(&v), 0);
    assert!(names(v.dir.path(), "acct-2", &wrapped));
    assert_eq!(shredded(v.dir.path()).len(), 2);
}

/// A start that checks every key against the shred log leaves a
/// restriction the database already holds to the sweeper, whose end waits
/// while a legal hold is on: a held subject is not erased at start because
/// its logged restriction has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checking_start_does_not_erase_a_held_subject_whose_restriction_ended() {
    let (mut v, toml) = with_legal_minimum("PT2S").await;
    let app = v.client("app");
    resident_id(&app, "acct-h").await;
    let receipt = app.erase_subject("acct-h").await.unwrap();
    assert!(receipt.restricted_until.is_some());
    v.client("officer")
        .legal_hold("acct-h", true)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    v.stop().await;
    // The next start checks every key (as after a crash mid-append).
    accept_shred_log(&toml);
    v.restart().await;
    assert!(
        v.store()
            .get(Space::SubjectKeys, b"acct-h")
            .unwrap()
            .is_some(),
        "the held subject's key was destroyed at start"
    );
    let events = v.audit_events().await;
    assert!(!events
        .iter()
        .any(|e| e.outcome == "erased_again" || e.outcome == "restricted_again"));
}

/// A copy restored from before an erasure that the law turned into a
/// restriction (of 5 s), taken while a hold was on, after the restriction's end:
/// the subject is restricted again at once and without an end (nothing is
/// released meanwhile, though the logged end has passed), and its values
/// wait for the hold; once it is lifted, the law requires nothing any more
/// and the subject is erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_held_copy_releases_nothing_while_its_restriction_waits() {
    let (mut v, _) = with_legal_minimum("PT5S").await;
    let app = v.client("app");
    let id = resident_id(&app, "acct-q").await;
    let phone = tokenize_one(&app, "acct-q", "identity_verification", "phone", PHONE).await;
    let officer = v.client("officer");
    officer.legal_hold("acct-q", true).await.unwrap();
    v.stop().await;
    let backup = copy_database(v.dir.path());
    v.restart().await;
    let officer = v.client("officer");
    officer.legal_hold("acct-q", false).await.unwrap();
    assert!(v
        .client("app")
        .erase_subject("acct-q")
        .await
        .unwrap()
        .restricted_until
        .is_some());
    v.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(5500)).await;
    restore_database(v.dir.path(), backup.path());
    v.restart().await;
    let app = v.client("app");
    let out = app
        .detokenize(&detok_req("identity_verification", &[&id, &phone]))
        .await
        .unwrap();
    for x in &out.values {
        assert_eq!(
            (x.status, x.reason.as_deref()),
            (Status::Denied, Some("restricted")),
            "{x:?}"
        );
    }
    v.client("officer")
        .legal_hold("acct-q", false)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = app
            .detokenize(&detok_req("identity_verification", &[&id, &phone]))
            .await
            .unwrap();
        if out.values.iter().all(|x| x.status == Status::Gone) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{:?}", out.values);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(v.store().get(Space::SubjectKeys, b"acct-q").unwrap(), None);
    let events = v.audit_events().await;
    assert!(events.iter().any(|e| e.outcome == "restricted_again"));
    assert!(events.iter().any(|e| e.outcome == "erased_again"));
}
