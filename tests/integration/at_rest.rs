//! Someone who can write the database files (or a backup restored into
//! them) but lacks the root key: rows written straight into the store, as
//! editing the RocksDB files amounts to, must not change what the vault
//! releases.

use crate::harness::*;
use vault::store::{Batch, Space};
use vault_sdk::wire::{ApprovalRequest, LegalBasis, Status};

const ID: &str = "350102199003071234";

fn legal_for(approval: &str, token: &str) -> vault_sdk::wire::DetokenizeRequest {
    let mut req = detok_req("criminal_investigation", &[token]);
    req.legal_basis = Some(LegalBasis {
        reference: "case-1".into(),
        approval: approval.into(),
    });
    req
}

/// An approval no officer granted, written as a row: refused like a
/// missing one, while a granted one still releases.
#[tokio::test]
async fn an_approval_written_into_the_database_releases_nothing() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = tokenize_one(
        &app,
        "victim",
        "identity_verification",
        "cn_resident_id",
        ID,
    )
    .await;
    let forged = serde_json::json!({
        "id": "apr-forged", "approver": "officer", "requester": "app",
        "purpose": "criminal_investigation", "subjects": ["victim"],
        "reference": "case-1", "created_ms": 0u64, "expires_ms": u64::MAX,
    });
    let mut b = Batch::default();
    b.put(
        Space::Approvals,
        b"apr-forged".to_vec(),
        serde_json::to_vec(&forged).unwrap(),
    );
    v.store().write(b).unwrap();
    let out = app
        .detokenize(&legal_for("apr-forged", &tok))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Denied);
    assert_eq!(out.values[0].value, None);

    // A granted approval's row copied under another id is no better.
    let granted = officer
        .approve(&ApprovalRequest {
            requester: "app".into(),
            purpose: "criminal_investigation".into(),
            subjects: vec!["victim".into()],
            reference: "case-1".into(),
            valid_for: "PT1H".into(),
        })
        .await
        .unwrap();
    let row = v
        .store()
        .get(Space::Approvals, granted.id.as_bytes())
        .unwrap()
        .unwrap();
    assert!(!String::from_utf8_lossy(&row).contains("victim"));
    let mut b = Batch::default();
    b.put(Space::Approvals, b"apr-copied".to_vec(), row);
    v.store().write(b).unwrap();
    let out = app
        .detokenize(&legal_for("apr-copied", &tok))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Denied);

    let out = app.detokenize(&legal_for(&granted.id, &tok)).await.unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    assert_eq!(out.values[0].value.as_deref(), Some(ID));
}

/// A consent written as a ledger row releases nothing for a purpose that
/// requires consent, and shows in the history as a failed row; one the
/// vault records does release.
#[tokio::test]
async fn a_consent_written_into_the_database_releases_nothing() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "acct-c", "user_specified", "name", "张伟").await;
    let req = detok_req("user_specified", &[&tok]);
    let ask = || app.detokenize(&req);
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );
    let mut key = b"acct-c\0user_specified\0".to_vec();
    key.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
    let forged = serde_json::json!({
        "given": true, "policy_version": "2022-05-01", "time_ms": 1u64, "caller": "app",
    });
    let mut b = Batch::default();
    b.put(Space::Consents, key, serde_json::to_vec(&forged).unwrap());
    v.store().write(b).unwrap();
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );
    let state = app.consent("acct-c", "user_specified").await.unwrap();
    assert!(!state.live);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].caller, "(failed its integrity check)");
    app.give_consent("acct-c", "user_specified", "2022-05-01")
        .await
        .unwrap();
    let out = ask().await.unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("张伟"));
}

/// A stored value's header (its clock, purpose, restriction) changed in
/// the database: the value no longer opens, and the officers see an
/// integrity failure. Dropping the tag (the older format) does not help.
#[tokio::test]
async fn a_value_whose_header_was_changed_does_not_open() {
    use vault::schema::{value_key, Record};
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "acct-h", "notification", "phone", "13800138000").await;
    let raw = vault::crypto::decode_token(&tok).unwrap();
    let key = value_key(&raw, "acct-h");
    let stored = v.store().get(Space::Values, &key).unwrap().unwrap();
    let rec = Record::decode(&stored).unwrap();
    assert!(rec.tag.is_some());
    let put = |bytes: Vec<u8>| {
        let mut b = Batch::default();
        b.put(Space::Values, key.clone(), bytes);
        v.store().write(b).unwrap();
    };
    let req = detok_req("notification", &[&tok]);
    let ask = || app.detokenize(&req);
    assert_eq!(ask().await.unwrap().values[0].status, Status::Ok);
    for changed in [
        Record {
            expires_ms: Some(u64::MAX - 1),
            ..rec.clone()
        },
        Record {
            collected_ms: rec.collected_ms + 1,
            ..rec.clone()
        },
        Record {
            purpose: "identity_verification".into(),
            ..rec.clone()
        },
        // The older format: no tag, no flags.
        Record {
            tag: None,
            ..rec.clone()
        },
    ] {
        put(changed.encode());
        let out = ask().await.unwrap();
        assert_eq!(out.values[0].status, Status::Unknown, "{changed:?}");
        assert_eq!(out.values[0].value, None);
    }
    put(stored);
    assert_eq!(ask().await.unwrap().values[0].status, Status::Ok);
    let events = v.audit_events().await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.outcome == "integrity_failure")
            .count(),
        4
    );
}

/// After an erasure request that the law makes a restriction (PIPL Art.
/// 47), the kept values carry the restriction in their own tagged header:
/// deleting the subject's standing record releases nothing.
#[tokio::test]
async fn a_restriction_holds_without_its_standing_record() {
    let v = keeping_resident_ids_for("P1D").await;
    let app = v.client("app");
    let tok = tokenize_one(
        &app,
        "acct-r",
        "identity_verification",
        "cn_resident_id",
        ID,
    )
    .await;
    let receipt = app.erase_subject("acct-r").await.unwrap();
    assert!(receipt.restricted_until.is_some());
    let req = detok_req("identity_verification", &[&tok]);
    let ask = || app.detokenize(&req);
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("restricted")
    );
    let mut b = Batch::default();
    b.delete(Space::Meta, b"standing/acct-r".to_vec());
    v.store().write(b).unwrap();
    let out = ask().await.unwrap();
    assert_eq!(out.values[0].reason.as_deref(), Some("restricted"));
    assert_eq!(out.values[0].value, None);
    assert_eq!(
        app.export_subject("acct-r").await.unwrap_err().code(),
        Some("subject_restricted")
    );
}

/// The stored row of `token` for `subject`, decoded.
fn row(v: &TestVault, token: &str, subject: &str) -> (Vec<u8>, vault::schema::Record) {
    let key = vault::schema::value_key(&vault::crypto::decode_token(token).unwrap(), subject);
    let bytes = v.store().get(Space::Values, &key).unwrap().unwrap();
    let rec = vault::schema::Record::decode(&bytes).unwrap();
    (key, rec)
}

fn put_row(v: &TestVault, key: Vec<u8>, bytes: Vec<u8>) {
    let mut b = Batch::default();
    b.put(Space::Values, key, bytes);
    v.store().write(b).unwrap();
}

/// Rewrites a value as a vault before tagged headers stored it (format 2:
/// the token in the AAD, no tag, no flags).
fn as_format_2(v: &TestVault, token: &str, subject: &str) {
    let (key, rec) = row(v, token, subject);
    let keys = v.running().vault.keys.get().unwrap();
    let raw = vault::crypto::decode_token(token).unwrap();
    let sk = vault::subject_keys::load(v.store().as_ref(), &keys, subject)
        .unwrap()
        .unwrap();
    let dk = keys.version(rec.key_version).unwrap().for_subject(&sk);
    let plain = dk.open(&rec.aad(subject, &raw), &rec.ciphertext).unwrap();
    let old = vault::schema::Record {
        ciphertext: dk
            .seal(
                &vault::crypto::value_aad(subject, rec.class, rec.key_version, Some(&raw)),
                &plain,
            )
            .unwrap(),
        restricted: false,
        tag: None,
        ..rec
    };
    put_row(v, key, old.encode());
}

/// A value whose clock was changed in the database is deleted by the
/// sweeper when its index entry comes due, and an erasure deletes it too
/// (counted in the receipt), whatever its header says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_with_changed_headers_are_swept_and_erased() {
    let v = TestVault::start_with(|cfg| cfg.retention.sweep_interval_ms = 100).await;
    let app = v.client("app");
    let mut req = tok_req(
        "acct-t",
        "notification",
        vec![field("phone", "13800138000"), field("phone", "13700137000")],
    );
    req.retention = Some("PT1S".into());
    let tokens = app.tokenize(&req).await.unwrap().tokens;
    let (swept, stripped) = (tokens[0].token.clone(), tokens[1].token.clone());
    let erased = tokenize_one(&app, "acct-t", "notification", "phone", "13900139000").await;
    for t in [&swept, &erased, &stripped] {
        let (key, rec) = row(&v, t, "acct-t");
        // One stripped of its tag too, posing as a record of format 2 under
        // a key version that does not exist.
        let (tag, key_version) = if t == &stripped {
            (None, 999)
        } else {
            (rec.tag, rec.key_version)
        };
        let forever = vault::schema::Record {
            expires_ms: None,
            tag,
            key_version,
            ..rec
        };
        put_row(&v, key, forever.encode());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for t in [&swept, &stripped] {
        let key = vault::schema::value_key(&vault::crypto::decode_token(t).unwrap(), "acct-t");
        loop {
            let bytes = v.store().get(Space::Values, &key).unwrap().unwrap();
            if vault::schema::Tombstone::decode(&bytes).is_some() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never swept");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let receipt = app.erase_subject("acct-t").await.unwrap();
    assert_eq!(receipt.values_erased, 1);
    let out = app
        .detokenize(&detok_req("notification", &[&erased]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Gone);
}

/// A value stored before tagged headers, restricted by an erasure now,
/// becomes format 3 with the restriction in its header; and one restricted
/// before (its subject's standing says so, its header cannot) gets the
/// restriction when a rewrap moves it to format 3. Either way deleting the
/// standing record releases nothing, and closing the account does not
/// shorten its legal period.
#[tokio::test]
async fn restrictions_reach_the_headers_of_older_records() {
    let v = keeping_resident_ids_for("P400D").await;
    let app = v.client("app");
    let officer = v.client("officer");
    let ask = |tok: &str| {
        let req = detok_req("identity_verification", &[tok]);
        let app = &app;
        async move { app.detokenize(&req).await.unwrap().values.remove(0) }
    };
    // Stored before, restricted now.
    let a = tokenize_one(
        &app,
        "acct-a",
        "identity_verification",
        "cn_resident_id",
        ID,
    )
    .await;
    as_format_2(&v, &a, "acct-a");
    assert!(row(&v, &a, "acct-a").1.tag.is_none());
    app.erase_subject("acct-a").await.unwrap();
    let (_, rec) = row(&v, &a, "acct-a");
    assert!(rec.tag.is_some() && rec.restricted, "{rec:?}");
    // Restricted before, moved by a rewrap.
    let other = "11010519491231002X";
    let b = tokenize_one(
        &app,
        "acct-b",
        "identity_verification",
        "cn_resident_id",
        other,
    )
    .await;
    app.erase_subject("acct-b").await.unwrap();
    as_format_2(&v, &b, "acct-b");
    officer.rotate_keys().await.unwrap();
    rewrap_until_done(&officer).await;
    let (_, rec) = row(&v, &b, "acct-b");
    assert!(
        rec.tag.is_some() && rec.restricted && rec.key_version == 2,
        "{rec:?}"
    );
    for (tok, subject) in [(&a, "acct-a"), (&b, "acct-b")] {
        let ends = row(&v, tok, subject).1.expires_ms;
        let mut batch = Batch::default();
        batch.delete(Space::Meta, format!("standing/{subject}").into_bytes());
        v.store().write(batch).unwrap();
        let out = ask(tok).await;
        assert_eq!(out.reason.as_deref(), Some("restricted"), "{subject}");
        assert_eq!(out.value, None);
        app.account_closed(subject).await.unwrap();
        assert_eq!(row(&v, tok, subject).1.expires_ms, ends, "{subject}");
    }
}

/// `operator init` never creates keys over a database that holds data but
/// lost its key records: every value would be orphaned.
#[tokio::test]
async fn init_refuses_a_database_with_data_but_no_keys() {
    let mut v = TestVault::start().await;
    let app = v.client("app");
    tokenize_one(&app, "acct-1", "notification", "phone", "13800138000").await;
    let mut b = Batch::default();
    b.delete(Space::Meta, b"keys/token".to_vec());
    v.store().write(b).unwrap();
    v.stop().await;
    let path = v.dir.path().join("vault.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("master-key-file"))
        .unwrap()
        .to_string();
    text = text.replace(&line, "unseal-with-shares = true");
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = run_vault(&[
        std::ffi::OsStr::new("operator"),
        "init".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds data but no keys"), "{err}");
}

/// A value whose header was changed is no holder: whatever its header
/// says (a class the purpose does not release, say), the answer is that of
/// a token never issued, audited as an integrity failure.
#[tokio::test]
async fn a_changed_header_decides_nothing_in_detokenize() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    // A class `notification` does not release, written over the phone's:
    // with the tag kept, and with the tag stripped (posing as format 2).
    for (subject, strip, phone) in [
        ("acct-d", false, "13800138000"),
        ("acct-e", true, "13900139000"),
    ] {
        let tok = tokenize_one(&app, subject, "notification", "phone", phone).await;
        let (key, rec) = row(&v, &tok, subject);
        let tag = if strip { None } else { rec.tag };
        let changed = vault::schema::Record {
            class: vault::classes::Class::Passport,
            tag,
            ..rec
        };
        put_row(&v, key, changed.encode());
        let out = app
            .detokenize(&detok_req("notification", &[&tok]))
            .await
            .unwrap();
        assert_eq!(out.values[0].status, Status::Unknown, "{subject}");
        assert_eq!(out.values[0].class, None, "{subject}");
        assert_eq!(out.values[0].reason, None, "{subject}");
        let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
        assert!(
            events
                .iter()
                .any(|e| e.outcome == "integrity_failure" && e.subject.as_deref() == Some(subject)),
            "{subject}"
        );
    }
}

/// A record stripped of its tag (posing as an older format) with its
/// collection time moved forward cannot turn an erasure into a long
/// restriction: it does not open as an older record would, so it is
/// deleted with the rest.
#[tokio::test]
async fn a_stripped_tag_cannot_stretch_an_erasure() {
    let v = keeping_resident_ids_for("P400D").await;
    let app = v.client("app");
    // Its legal period moved past any horizon and its tag dropped; the
    // second also names a key version that does not exist, which no
    // record the vault keeps can.
    for (subject, version) in [("acct-s", None), ("acct-v", Some(999))] {
        tokenize_one(&app, subject, "notification", "phone", "13800138000").await;
        let id = tokenize_one(&app, subject, "identity_verification", "cn_resident_id", ID).await;
        let (key, rec) = row(&v, &id, subject);
        let forged = vault::schema::Record {
            collected_ms: u64::MAX / 2,
            key_version: version.unwrap_or(rec.key_version),
            tag: None,
            restricted: false,
            ..rec
        };
        put_row(&v, key, forged.encode());
        // Without the forgery the ID would be kept (restricted); as forged
        // it is deleted, and nothing else needs keeping.
        let receipt = app.erase_subject(subject).await.unwrap();
        assert_eq!(receipt.restricted_until, None, "{receipt:?}");
        assert_eq!(receipt.values_erased, 2);
    }
}

/// A vault where the law keeps resident IDs for `period` after collection.
async fn keeping_resident_ids_for(period: &str) -> TestVault {
    TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("cn_resident_id".into(), period.into());
    })
    .await
}

/// While sealed, index entries whose record has another clock wait for the
/// keys; a pile of them ahead of a due value does not hold its deletion up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_sweep_passes_over_entries_it_cannot_check() {
    let v = TestVault::start_with(|cfg| cfg.retention.sweep_interval_ms = 100).await;
    let app = v.client("app");
    let kept = tokenize_one(&app, "acct-k", "notification", "phone", "13800138000").await;
    let raw = vault::crypto::decode_token(&kept).unwrap();
    let mut req = tok_req(
        "acct-due",
        "notification",
        vec![field("phone", "13900139000")],
    );
    req.retention = Some("PT2S".into());
    let due = app.tokenize(&req).await.unwrap().tokens[0].token.clone();
    // Sealed first, so no sweep unsealed drops the entries planted next.
    v.client("officer").seal().await.unwrap();
    // More stale entries than a sweep batch (1,000), all older than the
    // value that comes due.
    let mut b = Batch::default();
    for exp in 1u64..=1200 {
        b.put(
            Space::Expiry,
            vault::schema::expiry_key(exp, &raw, "acct-k"),
            Vec::new(),
        );
    }
    v.store().write(b).unwrap();
    let key = vault::schema::value_key(&vault::crypto::decode_token(&due).unwrap(), "acct-due");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let bytes = v.store().get(Space::Values, &key).unwrap().unwrap();
        if vault::schema::Tombstone::decode(&bytes).is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stalled behind the waiting entries"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The waiting entries are all still there.
    let left = v
        .store()
        .scan(
            Space::Expiry,
            &0u64.to_be_bytes(),
            Some(&1201u64.to_be_bytes()),
            2000,
        )
        .unwrap();
    assert_eq!(left.len(), 1200);
}

/// A record planted under a subject that has no key (stripped of any tag,
/// and sorting before the real holder) does not hide the real holder's
/// value.
#[tokio::test]
async fn a_record_planted_under_a_keyless_subject_hides_no_holder() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "zz-real", "notification", "phone", "13800138000").await;
    let (_, rec) = row(&v, &tok, "zz-real");
    let planted = vault::schema::Record { tag: None, ..rec };
    let raw = vault::crypto::decode_token(&tok).unwrap();
    put_row(
        &v,
        vault::schema::value_key(&raw, "aa-none"),
        planted.encode(),
    );
    let out = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    assert_eq!(out.values[0].value.as_deref(), Some("+8613800138000"));
}
