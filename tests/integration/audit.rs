//! The audit trail through the API and the offline verifier.

use crate::harness::*;
use vault::store::{Batch, Space};

#[tokio::test]
async fn every_outcome_is_audited_and_officers_can_read_it() {
    let mut v = TestVault::start().await;
    let c = v.client("app");
    let phone = tokenize_one(
        &c,
        "acct-a",
        "identity_verification",
        "phone",
        "13800138000",
    )
    .await;
    let name = tokenize_one(&c, "acct-b", "identity_verification", "name", "陈明").await;
    let ghost = "B".repeat(32);
    c.detokenize(&detok_req("notification", &[&phone, &name, &ghost]))
        .await
        .unwrap();
    let officer = v.client("officer");
    let all = officer.audit(None, None, None).await.unwrap().events;
    let outcomes: Vec<_> = all
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("tokenize", "stored"),
            ("tokenize", "stored"),
            ("detokenize", "released"),
            ("detokenize", "denied"),
            ("detokenize", "unknown")
        ]
    );
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    let a = officer
        .audit(Some("acct-a"), None, None)
        .await
        .unwrap()
        .events;
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|e| e.subject.as_deref() == Some("acct-a")));
    assert_eq!(a[1].caller, "app");
    assert_eq!(a[1].purpose.as_deref(), Some("notification"));
    assert_eq!(a[1].class.as_deref(), Some("phone"));
    assert_eq!(a[1].token.as_deref(), Some(phone.as_str()));
    let later = officer.audit(None, Some(3), Some(1)).await.unwrap().events;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].seq, 4);
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains("13800138000") && !text.contains("陈明"));
    // Bad queries.
    for q in [
        "/v1/audit?limit=0",
        "/v1/audit?limit=abc",
        "/v1/audit?since=-1",
        "/v1/audit?who=x",
        "/v1/audit?subject=a%20b",
    ] {
        let r = officer.raw(http::Method::GET, q, None).await.unwrap();
        assert_eq!(r.status, 400, "{q}");
    }
    assert_eq!(
        c.audit(None, None, None).await.unwrap_err().code(),
        Some("forbidden")
    );
    // The app's try at the officers' endpoint is in the log.
    let all = officer.audit(None, None, None).await.unwrap().events;
    let tried = all.last().unwrap();
    assert_eq!(
        (
            tried.caller.as_str(),
            tried.action.as_str(),
            tried.outcome.as_str()
        ),
        ("app", "audit_query", "forbidden")
    );

    // Offline verification: intact, then broken by a changed event.
    v.stop().await;
    let data = v.dir.path();
    let verify = || audit_verify(data);
    let (code, out, err) = verify();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("intact: 6 events"), "{out}");
    // Without an anchor, it says what that leaves unchecked.
    assert!(err.contains("no --anchor given"), "{err}");
    {
        let store = vault::store::RocksStore::open(data).unwrap();
        use vault::store::Store;
        let key = vault::audit::seq_key(4);
        let mut ev: serde_json::Value =
            serde_json::from_slice(&store.get(Space::Audit, &key).unwrap().unwrap()).unwrap();
        ev["outcome"] = "released".into();
        let mut b = Batch::default();
        b.put(Space::Audit, key, serde_json::to_vec(&ev).unwrap());
        store.write(b).unwrap();
    }
    let (code, out, _) = verify();
    assert_eq!(code, 1);
    assert!(out.contains("broken at event 4"), "{out}");
}

/// Tampering that leaves rows the verifier cannot read as events (a key
/// that is not a sequence number, a head that does not decode) is still
/// "broken at event N", exit 1, not a runtime failure (70).
#[tokio::test]
async fn structural_tampering_exits_1_naming_the_event() {
    let mut v = TestVault::start().await;
    let c = v.client("app");
    for i in 0..3 {
        tokenize_one(
            &c,
            &format!("acct-{i}"),
            "identity_verification",
            "phone",
            "13800138000",
        )
        .await;
    }
    v.stop().await;
    let data = v.dir.path();
    let (code, out, err) = audit_verify(data);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("intact: 3 events"), "{out}");
    use vault::store::Store;
    let put = |space: Space, key: Vec<u8>, value: Vec<u8>| {
        let store = vault::store::RocksStore::open(data).unwrap();
        let mut b = Batch::default();
        b.put(space, key, value);
        store.write(b).unwrap();
    };
    // A head row that does not decode.
    let head = {
        let store = vault::store::RocksStore::open(data).unwrap();
        store
            .get(Space::Meta, vault::audit::HEAD_KEY)
            .unwrap()
            .unwrap()
    };
    put(
        Space::Meta,
        vault::audit::HEAD_KEY.to_vec(),
        head[..39].to_vec(),
    );
    let (code, out, err) = audit_verify(data);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("broken at event 4"), "{out}");
    put(Space::Meta, vault::audit::HEAD_KEY.to_vec(), head);
    // A row after the last event under a 9-byte key.
    let mut key = vault::audit::seq_key(3);
    key.push(0);
    put(Space::Audit, key, b"{}".to_vec());
    let (code, out, err) = audit_verify(data);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("broken at event 4: missing or inserted event"),
        "{out}"
    );
}

/// `vault check-config --config PATH`: (exit code, stdout, stderr).
fn check_config(path: &std::path::Path) -> (i32, String, String) {
    run_vault(&[
        std::ffi::OsStr::new("check-config"),
        "--config".as_ref(),
        path.as_os_str(),
    ])
}

#[tokio::test]
async fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = vault::dev::prepare(dir.path()).unwrap();
    let check = || check_config(&path);
    let (code, _, err) = check();
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("collect = [\"ip\"]", "collect = [\"ipv4\"]")
        .replace("purpose = \"notification\"", "purpose = \"spam\"");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64);
    assert!(
        err.contains("unknown class ipv4") && err.contains("unknown purpose spam"),
        "{err}"
    );
    // A file with problems of its own is still looked into: the TLS files
    // it names are tried as `serve` would, and each problem is listed once.
    let tls = dir.path().join("tls");
    std::fs::copy(tls.join("server.key"), tls.join("server.pem")).unwrap();
    std::fs::remove_file(dir.path().join("master.key")).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64);
    for want in [
        "unknown class ipv4",
        "holds no PEM certificate",
        "keys.master-key-file: no such file",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.contains("master")).count(),
        1,
        "{err}"
    );
}

/// A command line `vault` cannot parse exits 64 (bad usage), as the
/// command line table promises; help is not an error.
/// Verifying a directory that holds no database fails (70) and leaves no
/// directory behind (RocksDB would create it even to read it).
#[test]
fn verify_of_a_missing_database_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-vault");
    let (code, _, err) = audit_verify(&missing);
    assert_eq!(code, 70, "{err}");
    assert!(err.contains("no database"), "{err}");
    assert!(!missing.exists(), "verify created {}", missing.display());
}

#[test]
fn bad_usage_exits_64() {
    for args in [
        &["bogus"][..],
        &["keys", "--dev", "./nowhere", "status", "--json"],
        &["approve", "--dev", "./nowhere"],
        &["check-config"],
    ] {
        let (code, out, err) = run_vault(args);
        assert_eq!(code, 64, "{args:?}: {out}{err}");
        assert!(err.contains("Usage"), "{args:?}: {err}");
    }
    let (code, out, _) = run_vault(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage"), "{out}");
}

/// `check-config` also finds what `serve` would stop on at start: a
/// master key that is not one, TLS files that hold the wrong thing, a key
/// that is not the certificate's, a variable that is not set; and it
/// prints none of what the files hold.
#[tokio::test]
async fn check_config_finds_what_serve_would_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = vault::dev::prepare(dir.path()).unwrap();
    let check = || check_config(&path);
    let tls = dir.path().join("tls");
    let garbage = "not-a-key-but-a-secret-looking-string";
    std::fs::write(dir.path().join("master.key"), garbage).unwrap();
    // The server's certificate file holds a key, and its key file holds
    // the application's key, not the server's.
    std::fs::copy(tls.join("server.key"), tls.join("server.pem")).unwrap();
    // And the CA file and the key file hold nothing of use: every TLS
    // problem is listed, not the first.
    let ca = std::fs::read(tls.join("ca.pem")).unwrap();
    let key = std::fs::read(tls.join("server.key")).unwrap();
    std::fs::write(tls.join("ca.pem"), "no certificate here").unwrap();
    std::fs::write(tls.join("server.key"), "no key here").unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64, "{err}");
    assert_eq!(err.matches("holds no PEM certificate").count(), 2, "{err}");
    assert!(err.contains("server.key holds no PEM private key"), "{err}");
    assert!(err.contains("is not 64 hex characters"), "{err}");
    assert!(!err.contains(garbage), "{err}");
    std::fs::write(tls.join("ca.pem"), ca).unwrap();
    std::fs::write(tls.join("server.key"), key).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64, "{err}");
    assert_eq!(err.matches("holds no PEM certificate").count(), 1, "{err}");
    std::fs::copy(tls.join("app.pem"), tls.join("server.pem")).unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64);
    assert!(
        err.contains("is not the private key of the certificate in"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    // A variable that is not set.
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("master-key-file"))
        .unwrap()
        .to_string();
    std::fs::write(
        &path,
        text.replace(&line, "master-key-env = \"VAULT_TEST_NO_SUCH_VARIABLE\""),
    )
    .unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 64);
    assert!(
        err.contains("environment variable VAULT_TEST_NO_SUCH_VARIABLE is not set"),
        "{err}"
    );
}

/// The audit anchor "at stop" comes after the API has drained: a request
/// whose commit is still held when shutdown begins has its event covered
/// by it. (The anchor logger sets `vault_audit_head_seq` with each anchor
/// it logs, so the gauge after shutdown is the last anchor's sequence.)
#[tokio::test]
async fn the_anchor_at_stop_covers_events_written_while_draining() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let (mut v, store) = start_hooked(|_| {}).await;
    // The metrics only: a shutdown waits for holders of the vault itself.
    let metrics = v.running().vault.metrics.clone();
    let c = v.client("app");
    tokenize_one(&c, "s1", "notification", "phone", "13800138000").await;
    // A second tokenize, held in its commit.
    store.hold_writes.store(true, Ordering::SeqCst);
    let held = tokio::spawn(async move {
        c.tokenize(&tok_req(
            "s2",
            "notification",
            vec![field("phone", "13900139000")],
        ))
        .await
    });
    while !store.held.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let running = v.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());
    // Time for an anchor logger stopped with the listeners to log the head
    // it reads now, before the held event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.hold_writes.store(false, Ordering::SeqCst);
    held.await.unwrap().unwrap();
    shutdown.await.unwrap();
    let head = vault::audit::Head::load(store.as_ref()).unwrap();
    assert_eq!(head.seq, 2);
    assert_eq!(
        metrics.audit_head_seq.get(),
        2,
        "the last anchor does not cover the event written while draining"
    );
}
