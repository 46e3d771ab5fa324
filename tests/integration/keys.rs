//! Key custody end to end: operator init and unseal by shares, restart
//! sealed, rotation under load, rewrap, the minimum decryption version,
//! seal during load, and the officer CLI's output and exit codes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::harness::*;
use vault_sdk::wire::Status;

const PHONE: &str = "13800138000";
/// How the vault gives `PHONE` back: normalized to E.164.
const E164: &str = "+8613800138000";

fn cli(args: &[&str]) -> (i32, String, String) {
    run_vault(args)
}

/// Switches a prepared dev directory to unseal-with-shares and runs
/// `vault operator init` on it; returns the shares it printed.
fn init_with_shares(dir: &std::path::Path, shares: u8, threshold: u8) -> Vec<String> {
    let path = vault::dev::prepare(dir).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "master-key-file = \"master.key\"",
        "unseal-with-shares = true",
    );
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap();
    // The defaults (5 shares, threshold 3) on a configuration of two
    // officers: a vault nobody could unseal, refused before anything is
    // made.
    let (code, out, err) = cli(&["operator", "init", "--config", p]);
    assert_eq!(code, 64, "{err}");
    assert!(out.is_empty() && err.contains("names 2"), "{out}\n{err}");
    let (code, out, err) = cli(&[
        "operator",
        "init",
        "--config",
        p,
        "--shares",
        &shares.to_string(),
        "--threshold",
        &threshold.to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list: Vec<String> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(list.len(), usize::from(shares));
    // A second init changes nothing and says so.
    let (code, _, err) = cli(&["operator", "init", "--config", p]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already initialized"), "{err}");
    list
}

async fn start_in(dir: tempfile::TempDir) -> TestVault {
    let cfg = config(dir.path());
    let running = vault::server::start(&cfg).await.unwrap();
    TestVault {
        api: running.api_addr,
        ops: running.ops_addr,
        running: Some(running),
        dir,
    }
}

#[tokio::test]
async fn init_unseal_by_threshold_and_restart_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let shares = init_with_shares(dir.path(), 3, 2);
    let mut v = start_in(dir).await;
    let app = v.client("app");
    let officer = v.client("officer");
    let officer2 = v.client("officer2");

    // Sealed: data endpoints refuse, readiness fails, progress is visible.
    let err = app
        .tokenize(&tok_req("s1", "notification", vec![field("phone", PHONE)]))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("sealed")));
    assert_eq!(v.ops_get("/readyz").await.0, 503);
    let st = officer.keys_status().await.unwrap();
    assert!(st.sealed);
    assert_eq!((st.unseal_progress, st.unseal_threshold), (0, 2));

    // Only officers unseal; bad and repeated shares leave progress alone.
    assert_eq!(
        app.unseal(&shares[0]).await.unwrap_err().code(),
        Some("forbidden")
    );
    assert_eq!(
        officer.unseal("vs1-nonsense").await.unwrap_err().code(),
        Some("invalid_share")
    );
    let st = officer.unseal(&shares[0]).await.unwrap();
    assert!(st.sealed);
    assert_eq!(st.unseal_progress, 1);
    assert_eq!(
        officer.unseal(&shares[0]).await.unwrap_err().code(),
        Some("invalid_share")
    );
    // A well-formed share of another split (what an insider could forge)
    // does not count, so it cannot spoil the set: the genuine holder of the
    // same index still completes it.
    let forged = vault::shares::split(&vault::secret::SecretKey::<32>::generate(), 3, 2).unwrap();
    let st = officer.unseal(&forged[2]).await.unwrap_err();
    assert_eq!(st.code(), Some("invalid_share"));
    assert_eq!(officer.keys_status().await.unwrap().unseal_progress, 1);
    // The threshold is one of officers: a second genuine share from the
    // same officer is refused and does not count; another officer's does.
    let err = officer.unseal(&shares[2]).await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("invalid_share"))
    );
    assert!(err.to_string().contains("another officer"), "{err}");
    let st = officer.keys_status().await.unwrap();
    assert!(st.sealed && st.unseal_progress == 1, "{st:?}");
    let st = officer2.unseal(&shares[2]).await.unwrap();
    assert!(!st.sealed, "{st:?}");
    assert_eq!(v.ops_get("/readyz").await.0, 200);
    let tok = tokenize_one(&app, "s1", "notification", "phone", PHONE).await;

    // A restart comes back sealed; two other shares open the same keys.
    v.restart().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let officer2 = v.client("officer2");
    assert_eq!(
        app.detokenize(&detok_req("notification", &[&tok]))
            .await
            .unwrap_err()
            .code(),
        Some("sealed")
    );
    officer.unseal(&shares[1]).await.unwrap();
    officer2.unseal(&shares[2]).await.unwrap();
    let out = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some(E164));
    assert_eq!(
        tokenize_one(&app, "s1", "notification", "phone", PHONE).await,
        tok
    );

    // Shares of another vault are refused one by one: their fingerprints
    // are not this vault's.
    officer.seal().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = init_with_shares(other_dir.path(), 2, 2);
    for s in &other {
        assert_eq!(
            officer.unseal(s).await.unwrap_err().code(),
            Some("invalid_share")
        );
    }
    assert_eq!(officer.keys_status().await.unwrap().unseal_progress, 0);
    // A vault initialized before fingerprints were kept checks only the
    // set: shares of another vault complete the count, fail, and reset
    // progress.
    let store = v.store();
    let mut meta: vault::keys::UnsealMeta = serde_json::from_slice(
        &store
            .get(vault::store::Space::Meta, vault::keys::UNSEAL_SLOT)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta.fingerprints.len(), 3);
    meta.fingerprints.clear();
    let mut b = vault::store::Batch::default();
    b.put(
        vault::store::Space::Meta,
        vault::keys::UNSEAL_SLOT.to_vec(),
        serde_json::to_vec(&meta).unwrap(),
    );
    store.write(b).unwrap();
    officer.unseal(&other[0]).await.unwrap();
    assert_eq!(
        officer2.unseal(&other[1]).await.unwrap_err().code(),
        Some("unseal_failed")
    );
    let st = officer.keys_status().await.unwrap();
    assert!(st.sealed && st.unseal_progress == 0, "{st:?}");

    // Every attempt is in the audit log, the failed ones too.
    officer.unseal(&shares[0]).await.unwrap();
    officer2.unseal(&shares[1]).await.unwrap();
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let seen = |action: &str, outcome: &str| {
        events
            .iter()
            .any(|e| e.action == action && e.outcome == outcome)
    };
    assert!(seen("unseal_share", "rejected"));
    assert!(seen("unseal", "failed"));
    assert!(seen("unseal", "unsealed"));
    assert!(seen("seal", "ok"));
    let text = serde_json::to_string(&events).unwrap();
    for s in &shares {
        assert!(!text.contains(&s[4..20]), "a share reached the audit log");
    }
}

/// Runs tokenize+detokenize round trips until `stop`, counting failures.
fn load(
    v: &TestVault,
    stop: Arc<std::sync::atomic::AtomicBool>,
    fails: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let c = v.client("app");
            let (stop, fails, ok) = (stop.clone(), fails.clone(), ok.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let phone = format!("139{:08}", w * 1_000_000 + i);
                    let r = c
                        .tokenize(&tok_req(
                            &format!("s{w}"),
                            "notification",
                            vec![field("phone", &phone)],
                        ))
                        .await;
                    let good = match r {
                        Ok(t) => {
                            let d = c
                                .detokenize(&detok_req("notification", &[&t.tokens[0].token]))
                                .await;
                            d.is_ok_and(|d| {
                                d.values[0].value.as_deref() == Some(format!("+86{phone}").as_str())
                            })
                        }
                        Err(_) => false,
                    };
                    if good {
                        ok.fetch_add(1, Ordering::SeqCst)
                    } else {
                        fails.fetch_add(1, Ordering::SeqCst)
                    };
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_then_rewrap_and_min_version() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let old = tokenize_one(&app, "old", "notification", "phone", PHONE).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (fails, ok) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers = load(&v, stop.clone(), fails.clone(), ok.clone());
    for want in 2..=4u32 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let st = officer.rotate_keys().await.unwrap();
        assert_eq!(st.active_version, Some(want));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        fails.load(Ordering::SeqCst),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::SeqCst) > 10);

    // Tokens do not change with the data key; old values still open.
    assert_eq!(
        tokenize_one(&app, "old", "notification", "phone", PHONE).await,
        old
    );
    let st = officer.keys_status().await.unwrap();
    assert_eq!(st.versions.len(), 4);
    assert_eq!(st.versions[3].state, "active");
    let total: u64 = st.versions.iter().map(|k| k.values).sum();
    assert!(total > 10);

    // The minimum decryption version refuses older ciphertext at once...
    let fresh = tokenize_one(&app, "new", "notification", "phone", "13900000001").await;
    officer.set_min_decryption_version(4).await.unwrap();
    let out = app
        .detokenize(&detok_req("notification", &[&old, &fresh]))
        .await
        .unwrap();
    // `old` was re-sealed under v4 by the re-tokenize above; an untouched
    // value from the load (under an older version) is refused.
    assert_eq!(out.values[1].status, Status::Ok);
    let st = officer.keys_status().await.unwrap();
    assert!(
        st.versions
            .iter()
            .any(|k| k.state == "refused" && k.values > 0),
        "{st:?}"
    );
    assert_eq!(
        officer
            .set_min_decryption_version(9)
            .await
            .unwrap_err()
            .code(),
        Some("invalid_request")
    );

    // ...and lowering it again, then rewrapping, moves everything to v4.
    officer.set_min_decryption_version(1).await.unwrap();
    // Lowered again, the older values release at once.
    let out = app
        .detokenize(&detok_req("notification", &[&old, &fresh]))
        .await
        .unwrap();
    assert!(out.values.iter().all(|v| v.status == Status::Ok), "{out:?}");
    officer.start_rewrap().await.unwrap();
    let mut st = officer.rewrap_status().await.unwrap();
    for _ in 0..200 {
        if st.state == "done" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        st = officer.rewrap_status().await.unwrap();
    }
    assert_eq!(st.state, "done", "{st:?}");
    assert!(st.rewrapped > 0);
    let keys = officer.keys_status().await.unwrap();
    for k in &keys.versions[..3] {
        assert_eq!(k.values, 0, "{keys:?}");
    }
    officer.set_min_decryption_version(4).await.unwrap();
    let out = app
        .detokenize(&detok_req("notification", &[&old]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some(E164));
    let (_, metrics) = v.ops_get("/metrics").await;
    assert!(metrics.contains("vault_keys_active_version 4"), "{metrics}");
    assert!(metrics.contains("vault_rewrap_values_total"));
    // Key operations are officers' only.
    assert_eq!(
        app.rotate_keys().await.unwrap_err().code(),
        Some("forbidden")
    );
    assert_eq!(
        app.keys_status().await.unwrap_err().code(),
        Some("forbidden")
    );
}

/// In an incident the app may be the attacker, holding every handling
/// place: the officer's seal still gets through, and takes effect before
/// anything it waits for (its own audit event) is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_officer_seals_while_every_handling_place_is_taken() {
    let (v, store) = start_hooked(|cfg| cfg.server.max_concurrent_requests = 1).await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "s", "notification", "phone", PHONE).await;
    // Writes resume however this test ends, so a failure cannot hang it.
    let _holding = store.holding_writes();
    // With retries: a probe below may hold the place for a moment first.
    let holder = v.builder("app").retries(8).build().unwrap();
    let held =
        tokio::spawn(async move { holder.detokenize(&detok_req("notification", &[&tok])).await });
    // The detokenize waits on its audit write, in the one place there is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // A probe that writes nothing (an app's try at an officer endpoint
        // is audited, and writes are held).
        let r = app
            .raw(http::Method::GET, "/v1/detokenize", None)
            .await
            .unwrap();
        if r.status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let officer = v.client("officer");
    let seal = tokio::spawn(async move { officer.seal().await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !v.running().vault.keys.is_sealed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the seal was held back by the flood"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.hold_writes.store(false, Ordering::SeqCst);
    assert!(seal.await.unwrap().unwrap().sealed);
    // The held detokenize either finished before the seal or is refused.
    let _ = held.await.unwrap();
}

/// One app holding every place it may (half of them, its writes held)
/// leaves the rest to others: an officer's key status is answered, and
/// the app's next request is refused, not queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_cannot_take_every_handling_place() {
    let (v, store) = start_hooked(|cfg| cfg.server.max_concurrent_requests = 4).await;
    let app = v.builder("app").retries(0).build().unwrap();
    tokenize_one(&app, "s", "notification", "phone", PHONE).await;
    let _holding = store.holding_writes();
    // Two tokenizes wait on their writes: the app's half of four places.
    let mut held = Vec::new();
    for i in 0..2 {
        let app = app.clone();
        held.push(tokio::spawn(async move {
            app.tokenize(&tok_req(
                &format!("held-{i}"),
                "notification",
                vec![field("phone", PHONE)],
            ))
            .await
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(store.held.load(Ordering::SeqCst) && v.running().vault.metrics.in_flight().get() >= 2) {
        assert!(std::time::Instant::now() < deadline, "nothing was held");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // A third is refused at once (with one place for each of two apps and
    // officers left, a shared pool would have taken it and held it too).
    let req = tok_req("more", "notification", vec![field("phone", PHONE)]);
    let more = app.tokenize(&req);
    let e = tokio::time::timeout(std::time::Duration::from_secs(2), more)
        .await
        .expect("the app took a third place")
        .unwrap_err();
    assert_eq!(e.code(), Some("overloaded"), "{e:?}");
    let st = v.client("officer").keys_status().await.unwrap();
    assert!(!st.sealed);
    store.hold_writes.store(false, Ordering::SeqCst);
    for h in held {
        h.await.unwrap().unwrap();
    }
}

/// A rotation whose request runs out of time while its write is held
/// still installs the keys it wrote once the write lands: new values go
/// under the new version, and the next rotation does not conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_that_times_out_after_committing_is_still_installed() {
    let (v, store) = start_hooked(|cfg| cfg.server.request_timeout_ms = 300).await;
    let officer = v.builder("officer").retries(0).build().unwrap();
    store.hold_writes.store(true, Ordering::SeqCst);
    let rotating = tokio::spawn({
        let officer = officer.clone();
        async move { officer.rotate_keys().await }
    });
    // Held until the rotation's write is waiting and its request is out
    // of time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !store.held.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "nothing was held");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    store.hold_writes.store(false, Ordering::SeqCst);
    let err = rotating.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("timeout"), "{err:?}");
    let active = || v.running().vault.keys.get().unwrap().meta().active;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while active() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the committed rotation was never installed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(officer.rotate_keys().await.unwrap().active_version, Some(3));
}

/// An officer's seal holds across a restart of a vault whose root key is
/// in a file: it starts sealed, until two different officers ask to
/// resume; then it reads its root key again, unseals, and starts unsealed
/// again afterwards. Before, a restart (or a crash an attacker could
/// cause) quietly undid the seal.
#[tokio::test]
async fn a_seal_holds_across_a_restart_until_two_officers_resume() {
    let mut v = TestVault::start().await;
    let token = tokenize_one(&v.client("app"), "acct-s", "notification", "phone", PHONE).await;
    assert!(v.client("officer").seal().await.unwrap().sealed);
    v.restart().await;
    let (app, officer, officer2) = (v.client("app"), v.client("officer"), v.client("officer2"));
    let st = officer.keys_status().await.unwrap();
    assert!(st.sealed);
    assert_eq!((st.unseal_progress, st.unseal_threshold), (0, 2));
    let err = app
        .detokenize(&detok_req("notification", &[&token]))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("sealed")));
    assert_eq!(v.ops_get("/readyz").await.0, 503);
    // Only officers, not with shares, and one officer asking twice is one.
    assert_eq!(
        app.resume_unseal().await.unwrap_err().code(),
        Some("forbidden")
    );
    assert_eq!(
        officer.unseal("vs1-x").await.unwrap_err().code(),
        Some("invalid_request")
    );
    // Malformed asks: not JSON, a wrong type, an unknown field, both
    // ways at once. None counts.
    for body in [
        &b"{"[..],
        br#"{"resume":"yes"}"#,
        br#"{"resume":true,"extra":1}"#,
        br#"{"resume":true,"share":"vs1-00"}"#,
    ] {
        let (status, v) = post_raw(&officer, "/v1/admin/unseal", body.to_vec()).await;
        assert_eq!(status, 400, "{v}");
        assert!(
            matches!(code(&v), "malformed_json" | "invalid_request"),
            "{v}"
        );
    }
    assert_eq!(officer.keys_status().await.unwrap().unseal_progress, 0);
    for _ in 0..2 {
        let st = officer.resume_unseal().await.unwrap();
        assert!(st.sealed);
        assert_eq!(st.unseal_progress, 1);
    }
    let st = officer2.resume_unseal().await.unwrap();
    assert!(!st.sealed, "{st:?}");
    let out = app
        .detokenize(&detok_req("notification", &[&token]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    v.restart().await;
    assert!(!v.client("officer").keys_status().await.unwrap().sealed);
    let events = v.audit_events().await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.action.contains("seal"))
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("seal", "ok"),
            ("unseal", "forbidden"),
            ("unseal_resume", "accepted"),
            ("unseal_resume", "accepted"),
            ("unseal_resume", "accepted"),
            ("unseal", "unsealed")
        ]
    );
}

/// A seal the database cannot take holds, says so (`seal_unrecorded`),
/// keeps unseals out, and is written as soon as writes work again, so a
/// restart after that starts sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_that_cannot_be_written_says_so_and_is_written_once_it_can() {
    use std::sync::atomic::Ordering::SeqCst;
    let (mut v, store) = start_hooked(|_| {}).await;
    let officer = v.client("officer");
    store.fail_writes.store(true, SeqCst);
    let st = officer.seal().await.unwrap();
    assert!(st.sealed && st.seal_unrecorded, "{st:?}");
    assert_eq!(
        officer.resume_unseal().await.unwrap_err().code(),
        Some("conflict")
    );
    store.fail_writes.store(false, SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while officer.keys_status().await.unwrap().seal_unrecorded {
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    v.stop().await;
    let cfg = config(v.dir.path());
    let keys = vault::server::open_keys(&cfg, store.as_ref()).unwrap();
    assert!(keys.is_sealed(), "a restart starts sealed");
}

/// `vault operator clear-seal` clears an officer's seal while the vault
/// is stopped (refused while it runs: the database is locked), audited;
/// the vault then starts unsealed.
#[tokio::test]
async fn operator_clear_seal_lets_a_stopped_vault_start_unsealed() {
    let mut v = TestVault::start().await;
    v.client("officer").seal().await.unwrap();
    let config = vault::dev::prepare(v.dir.path()).unwrap();
    let clear = || {
        run_vault(&[
            "operator".as_ref(),
            "clear-seal".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ])
    };
    let (code, _, err) = clear();
    assert_ne!(code, 0, "cleared under a running vault: {err}");
    v.stop().await;
    let (code, out, err) = clear();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Seal cleared"), "{out}");
    let (code, out, _) = clear();
    assert_eq!(code, 0);
    assert!(out.contains("No officer's seal"), "{out}");
    v.restart().await;
    assert!(!v.client("officer").keys_status().await.unwrap().sealed);
    let events = v.audit_events().await;
    assert!(events
        .iter()
        .any(|e| e.action == "seal_cleared" && e.caller == "operator"));
}

/// A subject's export lists the live values it cannot open (a key
/// version officers retired for decryption) as withheld, with class,
/// token and times and no value, so it does not pass for the whole of the
/// subject's data; the log records each as denied.
#[tokio::test]
async fn an_export_lists_what_it_cannot_open_as_withheld() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let old = tokenize_one(&app, "acct-w", "notification", "phone", "13800138000").await;
    officer.rotate_keys().await.unwrap();
    let new = tokenize_one(&app, "acct-w", "notification", "email", "w@fj.gov.cn").await;
    assert!(app
        .export_subject("acct-w")
        .await
        .unwrap()
        .withheld
        .is_empty());
    officer.set_min_decryption_version(2).await.unwrap();
    let export = app.export_subject("acct-w").await.unwrap();
    assert_eq!(export.values.len(), 1);
    assert_eq!(export.values[0].token, new);
    assert_eq!(export.withheld.len(), 1, "{export:?}");
    let w = &export.withheld[0];
    assert_eq!(
        (w.class.as_str(), w.token.as_str(), w.reason.as_str()),
        ("phone", old.as_str(), "key_version_refused")
    );
    assert_eq!(w.purpose, "notification");
    let events = officer
        .audit(Some("acct-w"), None, Some(100))
        .await
        .unwrap()
        .events;
    assert!(events.iter().any(|e| e.action == "subject_export"
        && e.outcome == "denied"
        && e.token.as_deref() == Some(old.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_during_load_stops_every_release() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = tokenize_one(&app, "s", "notification", "phone", PHONE).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = v.client("app");
        let tok = tok.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..40 {
                match c.detokenize(&detok_req("notification", &[&tok])).await {
                    Ok(d) => {
                        assert_eq!(d.values[0].value.as_deref(), Some(E164));
                        codes.push("ok".to_string());
                    }
                    Err(e) => codes.push(e.code().unwrap_or("none").to_string()),
                }
            }
            codes
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    officer.seal().await.unwrap();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert!(all.iter().all(|c| c == "ok" || c == "sealed"), "{all:?}");
    let err = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("sealed"));
    assert_eq!(v.ops_get("/readyz").await.0, 503);
    assert!(v.ops_get("/metrics").await.1.contains("vault_sealed 1"));
    // A dev vault has no shares: it unseals by restarting with its key file.
    assert_eq!(
        officer.unseal("vs1-00").await.unwrap_err().code(),
        Some("invalid_request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn officer_cli_output_and_exit_codes() {
    let v = TestVault::start().await;
    let dir = v.dir.path().to_str().unwrap().to_string();
    let endpoint = format!("https://127.0.0.1:{}", v.api.port());
    // `keys` takes the connection flags before its subcommand.
    let keys = |sub: &[&str]| {
        let mut args = vec!["keys", "--dev", &dir, "--endpoint", &endpoint];
        args.extend_from_slice(sub);
        cli(&args)
    };
    let (code, out, _) = keys(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("active version: 1"), "{out}");
    let (code, out, _) = keys(&["--json", "rotate"]);
    assert_eq!(code, 0);
    let st: vault_sdk::wire::KeysStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(st.active_version, Some(2));
    let (code, _, err) = keys(&["min-decryption-version", "7"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid_request"), "{err}");
    // Nobody listening: 69.
    let (code, _, err) = cli(&["seal", "--dev", &dir, "--endpoint", "https://127.0.0.1:1"]);
    assert_eq!(code, 69, "{err}");
    // No credentials: 64.
    let (code, _, _) = cli(&["seal", "--endpoint", &endpoint]);
    assert_eq!(code, 64);
    let audit_query = |limit: &str| {
        cli(&[
            "audit",
            "query",
            "--dev",
            &dir,
            "--endpoint",
            &endpoint,
            "--limit",
            limit,
        ])
    };
    let (code, out, err) = audit_query("10");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("keys_rotate") && out.contains("event(s)"),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "approve",
        "--dev",
        &dir,
        "--endpoint",
        &endpoint,
        "--requester",
        "app",
        "--purpose",
        "criminal_investigation",
        "--subject",
        "s1",
        "--subject",
        "s2",
        "--reference",
        "case-1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("approval apr-") && out.contains("subjects s1,s2"),
        "{out}"
    );
    // The grant's events name whom it is for, and the case.
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (code, log, err) = audit_query("50");
    assert_eq!(code, 0, "{err}");
    let grants: Vec<&str> = log.lines().filter(|l| l.contains(" approval ")).collect();
    assert_eq!(grants.len(), 2, "{log}");
    for line in grants {
        assert!(
            line.contains("outcome=granted")
                && line.contains(&format!("approval={id} requester=app reference=case-1")),
            "{line}"
        );
    }
    let (code, _, err) = cli(&[
        "approve",
        "--dev",
        &dir,
        "--endpoint",
        &endpoint,
        "--requester",
        "officer",
        "--purpose",
        "criminal_investigation",
        "--subject",
        "s1",
        "--reference",
        "case-1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("self_approval"), "{err}");
    let (code, out, err) = cli(&["seal", "--dev", &dir, "--endpoint", &endpoint]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sealed: yes"));
}

#[tokio::test]
async fn scheduled_rotation_makes_new_versions() {
    let v = TestVault::start_with(|cfg| cfg.keys.auto_rotate_period = Some("PT1S".into())).await;
    let officer = v.client("officer");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut st = officer.keys_status().await.unwrap();
    while st.active_version < Some(2) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        st = officer.keys_status().await.unwrap();
    }
    assert!(st.active_version >= Some(2), "{st:?}");
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    assert!(events
        .iter()
        .any(|e| e.action == "keys_auto_rotate" && e.caller == "vault"));
}

#[tokio::test]
async fn retiring_a_version_needs_it_unused() {
    // A short request timeout, for a short grace after the rotation (two
    // timeouts); long enough for every request here on a loaded machine.
    let v = TestVault::start_with(|cfg| cfg.server.request_timeout_ms = 500).await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = tokenize_one(&app, "s", "notification", "phone", PHONE).await;
    officer.rotate_keys().await.unwrap();
    // Still protecting a value: refused, and nothing changes.
    assert_eq!(
        officer.retire_key_version(1).await.unwrap_err().code(),
        Some("key_in_use")
    );
    assert_eq!(
        officer.retire_key_version(2).await.unwrap_err().code(),
        Some("invalid_request")
    );
    rewrap_until_done(&officer).await;
    // The background job was fenced before it scanned, and proved its
    // target as the floor: no value is under version 1 any more.
    let job = officer.rewrap_status().await.unwrap();
    assert!(job.fenced, "{job:?}");
    assert_eq!(job.proven_floor, Some(2), "{job:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    let st = officer.retire_key_version(1).await.unwrap();
    assert_eq!(st.versions.len(), 1, "{st:?}");
    assert_eq!(st.versions[0].version, 2);
    let out = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some(E164));
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    assert!(events
        .iter()
        .any(|e| e.action == "keys_retire" && e.outcome == "refused"));
    assert!(events
        .iter()
        .any(|e| e.action == "keys_retire" && e.outcome == "ok"));
}

/// A version superseded moments ago may still be in use by requests that
/// began under it: retiring it is refused as in use (409), not a 500; and
/// the active version's gauge is right from the start, not only after a
/// rotation.
#[tokio::test]
async fn retiring_a_version_just_superseded_is_in_use() {
    let mut v = TestVault::start().await;
    let officer = v.client("officer");
    officer.rotate_keys().await.unwrap();
    rewrap_until_done(&officer).await;
    let err = officer.retire_key_version(1).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err:?}");
    assert_eq!(err.code(), Some("key_in_use"));
    v.restart().await;
    let (_, metrics) = v.ops_get("/metrics").await;
    assert!(metrics.contains("vault_keys_active_version 2"), "{metrics}");
}

/// `vault unseal` turns core dumps off before it reads a share, and
/// `--share` is warned about: the command line is readable by every local
/// user. (Nobody listens at the endpoint: exit 69 after the warning.)
#[test]
fn unseal_cli_hardens_itself_and_warns_about_share_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    vault::dev::prepare(dir.path()).unwrap();
    let d = dir.path().to_str().unwrap();
    let conn = ["--dev", d, "--endpoint", "https://127.0.0.1:1"];
    let mut args = vec!["unseal"];
    args.extend_from_slice(&conn);
    args.extend_from_slice(&["--share", "vs1-00"]);
    let (code, _, err) = cli(&args);
    assert_eq!(code, 69, "{err}");
    assert!(
        err.contains("--share puts the share on the command line")
            && err.contains("standard input"),
        "{err}"
    );
    assert!(!err.contains("vs1-00"), "{err}");
    // From standard input: no warning. While it waits for the share, its
    // core-file limit is already 0 (raised first, as a shell may leave it).
    let script = format!(
        "ulimit -c unlimited && exec {} unseal {}",
        vault_bin().display(),
        conn.join(" ")
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let core = || {
        std::fs::read_to_string(&limits)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while core() != "0 0" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = core();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"vs1-00\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        seen, "0 0",
        "core-file limit (soft hard) while waiting for the share"
    );
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(!err.contains("--share puts"), "{err}");
}

/// `master-key-env`: the server takes the root key out of its environment
/// before it starts a thread. The variable's bytes are zeroed where
/// `/proc/<pid>/environ` reads them and the name removed, and the vault
/// still serves with the key. (Without root, reading another process's
/// environment is refused outright once the vault is non-dumpable; as
/// root, the read succeeds and must not find the key.)
#[tokio::test]
async fn a_master_key_from_the_environment_is_taken_out_of_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let config = vault::dev::prepare(dir.path()).unwrap();
    let key = std::fs::read_to_string(dir.path().join("master.key")).unwrap();
    let key = key.trim().to_string();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "master-key-file = \"master.key\"",
            "master-key-env = \"VAULT_TEST_ROOT\"",
        )
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9464", "127.0.0.1:0");
    assert!(text.contains("master-key-env = \"VAULT_TEST_ROOT\""));
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(vault_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("VAULT_TEST_ROOT", &key)
        .env("VAULT_TEST_NEIGHBOUR", "still-here")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().next();
        let _ = tx.send(line.and_then(Result::ok).unwrap_or_default());
    });
    let ready = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_default();
    let environ = std::fs::read(format!("/proc/{}/environ", child.id()));
    let api = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("api="))
        .unwrap_or_default()
        .to_string();
    let served = if api.is_empty() {
        None
    } else {
        let tls = dir.path().join("tls");
        let c = vault_sdk::ClientBuilder::new(&api)
            .ca_file(tls.join("ca.pem"))
            .unwrap()
            .identity_files(tls.join("app.pem"), tls.join("app.key"))
            .unwrap()
            .build()
            .unwrap();
        Some(tokenize_one(&c, "acct-env", "notification", "phone", "13800138000").await)
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.contains("vault ready"), "{ready}");
    assert!(served.is_some_and(|t| !t.is_empty()));
    match environ {
        Ok(env) => {
            let env = String::from_utf8_lossy(&env);
            assert!(env.contains("VAULT_TEST_NEIGHBOUR=still-here"), "{env}");
            assert!(
                !env.contains(&key),
                "the root key is still in the environment"
            );
            assert!(
                !env.contains(&key[..16]),
                "part of the root key is still in the environment"
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
    }
}
