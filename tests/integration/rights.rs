//! The consent ledger and legal-exception approvals, end to end: consent
//! gates `requires_consent` purposes, withdrawal and policy-version changes
//! end it, and a legal exception releases only under a live approval by
//! another officer that covers the caller, case, subject and time.

use crate::harness::*;
use vault_sdk::wire::{ApprovalRequest, LegalBasis, Status};

const NAME: &str = "陈明";

#[tokio::test]
async fn consent_gates_a_requires_consent_purpose() {
    let v = TestVault::start_with(|cfg| {
        if let Some(p) = cfg.purposes.get_mut("user_specified") {
            p.consent_since = Some("2024-01-01".into());
        }
    })
    .await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "acct-1", "user_specified", "name", NAME).await;
    let req = detok_req("user_specified", &[&tok]);
    let ask = || app.detokenize(&req);
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );

    // Consent to a policy version older than the purpose's current one
    // does not count (the purpose changed: PIPL Art. 14).
    let st = app
        .give_consent("acct-1", "user_specified", "2022-05-01")
        .await
        .unwrap();
    assert!(!st.live);
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );
    // A version of another form could never count: refused, not kept
    // (as text, `v1` would sort after any date).
    for version in ["v1", "draft", "2024/01/01"] {
        let e = app
            .give_consent("acct-1", "user_specified", version)
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(400), Some("invalid_request")),
            "{version}"
        );
    }
    // An officer cannot give a subject's consent (it would turn on
    // releases no subject agreed to); the try is audited.
    let officer = v.client("officer");
    let e = officer
        .give_consent("acct-1", "user_specified", "2024-01-01")
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")));
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );
    let events = officer
        .audit(Some("acct-1"), None, None)
        .await
        .unwrap()
        .events;
    assert!(events
        .iter()
        .any(|e| e.action == "consent" && e.outcome == "forbidden" && e.caller == "officer"));
    // Why each release was denied is on record, for the officers and in
    // the subject's access log.
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.action == "detokenize" && e.outcome == "denied")
        .collect();
    assert_eq!(denied.len(), 3);
    assert!(denied
        .iter()
        .all(|e| e.reason.as_deref() == Some("consent_required")));
    let log = app.access_log("acct-1").await.unwrap();
    assert!(log
        .entries
        .iter()
        .filter(|e| e.outcome == "denied")
        .all(|e| e.reason.as_deref() == Some("consent_required")));
    assert_eq!(
        log.entries.iter().filter(|e| e.outcome == "denied").count(),
        3
    );
    let st = app
        .give_consent("acct-1", "user_specified", "2024-01-01")
        .await
        .unwrap();
    assert!(st.live);
    let out = ask().await.unwrap();
    assert_eq!(
        (out.values[0].status, out.values[0].value.as_deref()),
        (Status::Ok, Some(NAME))
    );

    // Another subject's consent is not this one's.
    let other = tokenize_one(&app, "acct-2", "user_specified", "name", "欧阳娜娜").await;
    let out = app
        .detokenize(&detok_req("user_specified", &[&other]))
        .await
        .unwrap();
    assert_eq!(out.values[0].reason.as_deref(), Some("consent_required"));

    // Withdrawal ends it at once; the ledger keeps the whole history.
    // A subject id that would reach another resource stays one path
    // segment: refused as a subject, the consent untouched.
    let e = app
        .erase_subject("acct-1/consents/user_specified")
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_subject")));
    assert!(app.consent("acct-1", "user_specified").await.unwrap().live);
    let st = app
        .withdraw_consent("acct-1", "user_specified")
        .await
        .unwrap();
    assert!(!st.live);
    assert_eq!(
        st.history.iter().map(|e| e.given).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(st.history[2].policy_version, "2024-01-01");
    assert_eq!(
        ask().await.unwrap().values[0].reason.as_deref(),
        Some("consent_required")
    );
    assert_eq!(app.consent("acct-1", "user_specified").await.unwrap(), st);

    // Bad input.
    let put = |path: &str, body: &str| {
        let c = &app;
        let (path, body) = (path.to_string(), body.as_bytes().to_vec());
        async move {
            let r = c.raw(http::Method::PUT, &path, Some(body)).await.unwrap();
            (
                r.status,
                code(&serde_json::from_slice(&r.body).unwrap_or_default()).to_string(),
            )
        }
    };
    let p = "/v1/subjects/acct-1/consents/user_specified";
    assert_eq!(put(p, "{").await, (400, "malformed_json".into()));
    assert_eq!(
        put(p, r#"{"policy_version":5}"#).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        put(p, r#"{"policy_version":"v1","x":1}"#).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        put(p, r#"{"policy_version":"a b"}"#).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        put(p, r#"{"policy_version":""}"#).await,
        (400, "invalid_request".into())
    );
    let ok = r#"{"policy_version":"2024-01-01"}"#;
    assert_eq!(
        put("/v1/subjects/acct%201/consents/user_specified", ok).await,
        (400, "invalid_subject".into())
    );
    assert_eq!(
        put("/v1/subjects/acct-1/consents/gossip", ok).await,
        (400, "unknown_purpose".into())
    );
    assert_eq!(
        put("/v1/subjects/acct-1/consents/criminal_investigation", ok).await,
        (400, "invalid_request".into())
    );
    let r = app
        .raw(http::Method::POST, p, Some(ok.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    // None of the failures wrote an entry.
    assert_eq!(
        app.consent("acct-1", "user_specified")
            .await
            .unwrap()
            .history
            .len(),
        3
    );
    let events = v
        .client("officer")
        .audit(Some("acct-1"), None, None)
        .await
        .unwrap()
        .events;
    // Three entries, and the officer's refused try.
    assert_eq!(events.iter().filter(|e| e.action == "consent").count(), 4);
}

fn approval(requester: &str, subjects: &[&str], valid_for: &str) -> ApprovalRequest {
    ApprovalRequest {
        requester: requester.into(),
        purpose: "criminal_investigation".into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        reference: "case-2026-17".into(),
        valid_for: valid_for.into(),
    }
}

#[tokio::test]
async fn legal_exceptions_need_a_live_approval_by_someone_else() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let tok = tokenize_one(
        &app,
        "acct-1",
        "identity_verification",
        "cn_resident_id",
        "350102199003071234",
    )
    .await;
    let other = tokenize_one(
        &app,
        "acct-2",
        "identity_verification",
        "cn_resident_id",
        "11010519491231002X",
    )
    .await;
    let ask = |basis: Option<LegalBasis>, tokens: Vec<String>| {
        let app = &app;
        async move {
            let refs: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
            let mut req = detok_req("criminal_investigation", &refs);
            req.legal_basis = basis;
            app.detokenize(&req).await.unwrap().values
        }
    };
    let basis = |approval: &str, reference: &str| {
        Some(LegalBasis {
            reference: reference.into(),
            approval: approval.into(),
        })
    };

    // The requester approving itself is refused (and audited).
    let e = officer
        .approve(&approval("officer", &["acct-1"], "PT1H"))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("self_approval")));
    // Apps cannot approve at all.
    assert_eq!(
        app.approve(&approval("app", &["acct-1"], "PT1H"))
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    // Bad requests.
    let mut bad = approval("app", &["acct-1"], "PT1H");
    bad.purpose = "notification".into();
    assert_eq!(
        officer.approve(&bad).await.unwrap_err().code(),
        Some("invalid_request")
    );
    for (subjects, valid_for, reference) in [
        (vec![], "PT1H", "r"),
        (vec!["a b"], "PT1H", "r"),
        (vec!["s"], "P31D", "r"),
        (vec!["s"], "soon", "r"),
        (vec!["s"], "PT1H", " "),
    ] {
        let mut bad = approval("app", &subjects, valid_for);
        bad.reference = reference.into();
        assert_eq!(
            officer.approve(&bad).await.unwrap_err().code(),
            Some("invalid_request"),
            "{subjects:?} {valid_for}"
        );
    }
    assert_eq!(
        officer
            .approve(&approval("mallory", &["acct-1"], "PT1H"))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_request")
    );

    let granted = officer
        .approve(&approval("app", &["acct-1"], "PT1H"))
        .await
        .unwrap();
    assert_eq!(
        (granted.approver.as_str(), granted.requester.as_str()),
        ("officer", "app")
    );

    // Missing legal basis, missing reference, wrong reference, unknown id.
    assert_eq!(
        ask(None, vec![tok.clone()]).await[0].reason.as_deref(),
        Some("legal_basis_required")
    );
    assert_eq!(
        ask(basis(&granted.id, ""), vec![tok.clone()]).await[0]
            .reason
            .as_deref(),
        Some("legal_basis_required")
    );
    assert_eq!(
        ask(basis(&granted.id, "case-9"), vec![tok.clone()]).await[0]
            .reason
            .as_deref(),
        Some("reference_mismatch")
    );
    assert_eq!(
        ask(basis("apr-nope", "case-2026-17"), vec![tok.clone()]).await[0]
            .reason
            .as_deref(),
        Some("approval_not_found")
    );

    // The reference goes into the audit log: it is bounded and printable.
    for bad in ["x".repeat(129), "case\n17".to_string()] {
        let mut req = detok_req("criminal_investigation", &[&tok]);
        req.legal_basis = basis(&granted.id, &bad);
        let e = app.detokenize(&req).await.unwrap_err();
        assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_request")));
    }
    // A purpose that is no legal exception ignores a legal basis and does
    // not record its reference.
    let mut req = detok_req("identity_verification", &[&tok]);
    req.legal_basis = basis(&granted.id, "not-a-case");
    assert_eq!(
        app.detokenize(&req).await.unwrap().values[0].status,
        Status::Ok
    );

    // The covered subject is released in full; the other is not.
    let out = ask(
        basis(&granted.id, "case-2026-17"),
        vec![tok.clone(), other.clone()],
    )
    .await;
    assert_eq!(
        (out[0].status, out[0].value.as_deref()),
        (Status::Ok, Some("350102199003071234"))
    );
    assert_eq!(out[1].reason.as_deref(), Some("subject_not_covered"));

    // An approval is of one disclosure (SPEC): the request that released
    // under it used it up.
    let again = ask(basis(&granted.id, "case-2026-17"), vec![tok.clone()]).await;
    assert_eq!(
        (again[0].status, again[0].reason.as_deref()),
        (Status::Denied, Some("approval_used"))
    );
    // Of requests racing on one fresh approval, exactly one releases.
    let fresh = officer
        .approve(&approval("app", &["acct-1"], "PT1H"))
        .await
        .unwrap();
    let mut racing = Vec::new();
    for _ in 0..6 {
        let app = v.client("app");
        let mut req = detok_req("criminal_investigation", &[&tok]);
        req.legal_basis = basis(&fresh.id, "case-2026-17");
        racing.push(tokio::spawn(async move { app.detokenize(&req).await }));
    }
    // The others are refused as under a used approval, and audited so.
    let mut released = 0;
    for r in racing {
        let out = r.await.unwrap().unwrap();
        match out.values[0].status {
            Status::Ok => released += 1,
            _ => assert_eq!(out.values[0].reason.as_deref(), Some("approval_used")),
        }
    }
    assert_eq!(released, 1);
    // (A legal-exception refusal names no subject: counted by its case.)
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let used = events
        .iter()
        .filter(|e| {
            e.action == "detokenize"
                && e.outcome == "denied"
                && e.reference.as_deref() == Some("case-2026-17")
        })
        .count();
    assert!(used >= 6, "the refused racers are audited: {used}");

    // Another caller cannot use the app's approval.
    let mut req = detok_req("criminal_investigation", &[&tok]);
    req.legal_basis = basis(&granted.id, "case-2026-17");
    let out = v.client("officer2").detokenize(&req).await.unwrap();
    assert_eq!(out.values[0].reason.as_deref(), Some("approval_not_found"));

    // An approval revoked before it is used releases nothing; a used or
    // revoked one cannot be revoked (409), an unknown one is 404, and apps
    // may not revoke.
    let revoked = officer
        .approve(&approval("app", &["acct-1"], "PT1H"))
        .await
        .unwrap();
    let e = app.revoke_approval(&revoked.id).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")));
    assert_eq!(
        v.client("officer2")
            .revoke_approval(&revoked.id)
            .await
            .unwrap()
            .id,
        revoked.id
    );
    assert_eq!(
        ask(basis(&revoked.id, "case-2026-17"), vec![tok.clone()]).await[0]
            .reason
            .as_deref(),
        Some("approval_used")
    );
    for id in [revoked.id.as_str(), fresh.id.as_str()] {
        let e = officer.revoke_approval(id).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(409), Some("conflict")),
            "{id}"
        );
    }
    let e = officer.revoke_approval("apr-nope").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(404), Some("not_found")));
    // Odd paths: no id, a path under an id, an id past the length of one;
    // and a method the route does not take.
    let long = format!("/v1/admin/approvals/{}", "a".repeat(5000));
    for path in [
        "/v1/admin/approvals/",
        "/v1/admin/approvals/x/y",
        long.as_str(),
    ] {
        let r = officer.raw(http::Method::DELETE, path, None).await.unwrap();
        assert_eq!(r.status, 404, "{path}");
    }
    let path = format!("/v1/admin/approvals/{}", revoked.id);
    let r = officer.raw(http::Method::GET, &path, None).await.unwrap();
    assert_eq!(r.status, 405);
    let events = officer
        .audit(Some("acct-1"), None, Some(1000))
        .await
        .unwrap()
        .events;
    assert!(events.iter().any(|e| e.action == "approval"
        && e.outcome == "revoked"
        && e.caller == "officer2"
        && e.reference.as_deref() == Some("case-2026-17")));
    assert!(events
        .iter()
        .any(|e| e.action == "approval" && e.outcome == "revoke_refused_used"));

    // An approval past its time releases nothing.
    let short = officer
        .approve(&approval("app", &["acct-1"], "PT1S"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        ask(basis(&short.id, "case-2026-17"), vec![tok.clone()]).await[0]
            .reason
            .as_deref(),
        Some("approval_expired")
    );

    // The audit log names the reference on each release and the refusals,
    // and the approval: its grant and the release under it carry its id.
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    assert!(events.iter().any(|e| e.action == "detokenize"
        && e.outcome == "released"
        && e.reference.as_deref() == Some("case-2026-17")
        && e.approval.as_deref() == Some(granted.id.as_str())));
    assert!(events.iter().any(|e| e.action == "approval"
        && e.outcome == "granted"
        && e.approval.as_deref() == Some(granted.id.as_str())
        && e.requester.as_deref() == Some("app")));
    assert!(events
        .iter()
        .all(|e| e.reference.as_deref() != Some("not-a-case")));
    // A reference no approval names is not recorded: what an app sends
    // there could be anything (a phone number), and the log is for good.
    let mut req = detok_req("criminal_investigation", &[&tok]);
    req.legal_basis = basis("apr-nope", "13800138000");
    assert_eq!(
        app.detokenize(&req).await.unwrap().values[0]
            .reason
            .as_deref(),
        Some("approval_not_found")
    );
    req.legal_basis = basis(&granted.id, "13800138000");
    assert_eq!(
        app.detokenize(&req).await.unwrap().values[0]
            .reason
            .as_deref(),
        Some("reference_mismatch")
    );
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let refused: Vec<_> = events
        .iter()
        .filter(|e| e.action == "detokenize" && e.outcome == "denied")
        .collect();
    assert!(refused.len() >= 2);
    assert!(refused
        .iter()
        .all(|e| e.reference.as_deref() != Some("13800138000")));
    // Nor may a reference hide its text behind bidirectional overrides.
    let mut req = detok_req("criminal_investigation", &[&tok]);
    req.legal_basis = basis(&granted.id, "case-\u{202E}71-6202");
    let e = app.detokenize(&req).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("invalid_request")));
    assert!(events
        .iter()
        .any(|e| e.action == "approval" && e.outcome == "refused_self_approval"));
    assert!(events.iter().any(|e| e.action == "approval"
        && e.outcome == "granted"
        && e.subject.as_deref() == Some("acct-1")));
}

#[tokio::test]
async fn subjects_see_their_data_and_who_saw_it() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let fields = vec![
        field("name", NAME),
        field("phone", "13800138000"),
        field("cn_resident_id", "350102199003071234"),
    ];
    let toks = app
        .tokenize(&tok_req("acct-1", "identity_verification", fields))
        .await
        .unwrap()
        .tokens;
    tokenize_one(&app, "acct-2", "notification", "phone", "13900000000").await;
    app.detokenize(&detok_req("identity_verification", &[&toks[1].token]))
        .await
        .unwrap();
    app.detokenize(&detok_req("notification", &[&toks[0].token]))
        .await
        .unwrap();

    // A release through reidentify is a release too.
    let marked = format!("电话 [[phone:{}]]", toks[1].token);
    let back = app
        .reidentify(&reid("identity_verification", &marked))
        .await
        .unwrap();
    assert_eq!(back.text, "电话 138****8000");

    let export = app.export_subject("acct-1").await.unwrap();
    assert_eq!(export.values.len(), 3);
    let mut got: Vec<(&str, &str)> = export
        .values
        .iter()
        .map(|x| (x.class.as_str(), x.value.as_str()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("cn_resident_id", "350102199003071234"),
            ("name", NAME),
            ("phone", "+8613800138000")
        ]
    );
    assert!(export
        .values
        .iter()
        .all(|x| x.purpose == "identity_verification" && x.collected_ms > 0));
    assert!(export.values.iter().any(|x| x.token == toks[0].token));

    let log = app.access_log("acct-1").await.unwrap();
    let outcomes: Vec<(&str, &str)> = log
        .entries
        .iter()
        .map(|e| (e.purpose.as_deref().unwrap_or(""), e.outcome.as_str()))
        .collect();
    assert!(
        outcomes.contains(&("identity_verification", "released_masked")),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("notification", "denied")),
        "{outcomes:?}"
    );
    assert_eq!(
        log.entries
            .iter()
            .filter(|e| e.purpose.as_deref() == Some("identity_verification"))
            .count(),
        2,
        "the detokenize and the reidentify: {outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|(p, _)| *p == "data_subject_request")
            .count(),
        3
    );
    assert!(app.access_log("acct-2").await.unwrap().entries.is_empty());
    // An officer exports nobody's data: plaintext reaches an officer only
    // under a legal exception approved by another officer.
    for who in ["officer", "officer2"] {
        let e = v.client(who).export_subject("acct-1").await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(403), Some("purpose_not_allowed"))
        );
    }
    // A refused export is no release, but the subject sees the attempt.
    let after = app.access_log("acct-1").await.unwrap().entries;
    assert_eq!(after.len(), log.entries.len() + 2);
    for e in &after[log.entries.len()..] {
        assert_eq!(e.outcome, "purpose_not_allowed", "{e:?}");
        assert!(e.caller.starts_with("officer"), "{e:?}");
    }
    assert!(app
        .export_subject("nobody")
        .await
        .unwrap()
        .values
        .is_empty());

    // Bad requests.
    let get = |path: &str| {
        let (c, path) = (&app, path.to_string());
        async move {
            let r = c.raw(http::Method::GET, &path, None).await.unwrap();
            (
                r.status,
                code(&serde_json::from_slice(&r.body).unwrap_or_default()).to_string(),
            )
        }
    };
    assert_eq!(
        get("/v1/subjects/acct-1").await,
        (400, "purpose_required".into())
    );
    assert_eq!(
        get("/v1/subjects/acct-1?purpose=notification").await,
        (403, "purpose_not_allowed".into())
    );
    assert_eq!(
        get("/v1/subjects/acct-1?purpose=gossip").await,
        (400, "unknown_purpose".into())
    );
    assert_eq!(
        get("/v1/subjects/acct-1?purpose=data_subject_request&x=1").await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        get("/v1/subjects/a%20b?purpose=data_subject_request").await,
        (400, "invalid_subject".into())
    );
    assert_eq!(
        get("/v1/subjects/acct-1/other").await,
        (404, "not_found".into())
    );
    let r = app
        .raw(http::Method::DELETE, "/v1/subjects/acct-1/access-log", None)
        .await
        .unwrap();
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn exposure_lists_the_subjects_released_in_a_window() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let before = vault::api::now_ms();
    let a = tokenize_one(&app, "acct-1", "notification", "phone", "13800138000").await;
    let b = tokenize_one(&app, "acct-2", "notification", "email", "chen@example.com").await;
    let c = tokenize_one(&app, "acct-3", "identity_verification", "name", NAME).await;
    app.detokenize(&detok_req("notification", &[&a, &b]))
        .await
        .unwrap();
    // Denied, so not exposed.
    app.detokenize(&detok_req("notification", &[&c]))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mid = vault::api::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    app.export_subject("acct-3").await.unwrap();
    let after = vault::api::now_ms() + 1;

    let all = officer.exposure(before, after, None).await.unwrap();
    let names: Vec<&str> = all.subjects.iter().map(|s| s.subject.as_str()).collect();
    assert_eq!(names, ["acct-1", "acct-2", "acct-3"]);
    assert_eq!(all.subjects[0].classes, ["phone"]);
    assert_eq!(all.subjects[0].callers, ["app"]);
    let early = officer.exposure(before, mid, None).await.unwrap();
    assert_eq!(early.subjects.len(), 2);
    assert!(early.events_read < all.events_read);
    assert!(officer
        .exposure(before, after, Some("officer2"))
        .await
        .unwrap()
        .subjects
        .is_empty());
    assert!(officer
        .exposure(1, before.saturating_sub(1_000_000), None)
        .await
        .unwrap()
        .subjects
        .is_empty());
    assert_eq!(
        app.exposure(before, after, None).await.unwrap_err().code(),
        Some("forbidden")
    );
    for q in [
        "",
        "?from=5",
        "?from=9&to=3",
        "?from=x&to=9",
        "?from=1&to=9&who=x",
    ] {
        let r = officer
            .raw(
                http::Method::GET,
                &format!("/v1/admin/incidents/exposure{q}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{q}");
    }
}

const EXPORT_ID: &str = "350102199003071234";

/// A vault whose resident IDs the law keeps for three years, after `edit`,
/// with subject `acct-x` holding an ID and a name.
async fn vault_with_acct_x(edit: impl FnOnce(&mut vault::config::Config)) -> TestVault {
    let v = TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("cn_resident_id".into(), "P3Y".into());
        edit(cfg);
    })
    .await;
    v.client("app")
        .tokenize(&tok_req(
            "acct-x",
            "identity_verification",
            vec![field("cn_resident_id", EXPORT_ID), field("name", "陈明")],
        ))
        .await
        .unwrap();
    v
}

/// (class, value) of an export, sorted.
async fn exported(c: &vault_sdk::Client) -> Vec<(String, String)> {
    let mut got: Vec<_> = c
        .export_subject("acct-x")
        .await
        .unwrap()
        .values
        .iter()
        .map(|x| (x.class.clone(), x.value.clone()))
        .collect();
    got.sort();
    got
}

/// Whether acct-x's audit trail has a subject export with `outcome`.
async fn export_audited(v: &TestVault, outcome: &str) -> bool {
    v.client("officer")
        .audit(Some("acct-x"), None, None)
        .await
        .unwrap()
        .events
        .iter()
        .any(|e| e.action == "subject_export" && e.outcome == outcome)
}

/// Export follows the caller's grant for `data_subject_request`: an app
/// without one gets 403, one with a narrower grant gets only its classes
/// (masked ones masked); and a subject restricted by a pending erasure is
/// not exported at all.
#[tokio::test]
async fn export_follows_the_grant_and_stops_under_restriction() {
    let v = vault_with_acct_x(|cfg| {
        for c in cfg.callers.iter_mut() {
            if c.name == "officer2" {
                c.role = vault::policy::Role::App;
            }
        }
    })
    .await;
    // An app-role caller with no grant for the purpose.
    let e = v
        .client("officer2")
        .export_subject("acct-x")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(403), Some("purpose_not_allowed"))
    );
    assert_eq!(
        exported(&v.client("app")).await,
        [
            ("cn_resident_id".to_string(), EXPORT_ID.to_string()),
            ("name".into(), "陈明".into())
        ]
    );
    drop(v);

    // A narrower grant: the ID masked, the name not at all.
    let v = vault_with_acct_x(|cfg| {
        for g in cfg.grants.iter_mut() {
            if g.purpose == "data_subject_request" {
                g.full.clear();
                g.masked = vec!["cn_resident_id".into()];
            }
        }
    })
    .await;
    let app = v.client("app");
    assert_eq!(
        exported(&app).await,
        [(
            "cn_resident_id".to_string(),
            "350102********1234".to_string()
        )]
    );
    assert!(export_audited(&v, "released_masked").await);
    // Restricted: kept for the law, exported to nobody.
    assert!(app
        .erase_subject("acct-x")
        .await
        .unwrap()
        .restricted_until
        .is_some());
    let e = app.export_subject("acct-x").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(409), Some("subject_restricted"))
    );
    assert!(export_audited(&v, "refused_restricted").await);
}

/// Refusals cost nothing to make: however many of them name a subject
/// after its data was released, the access log still shows the release
/// (they share a cap of their own), and says it left some out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cannot_push_a_release_out_of_the_access_log() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "acct-7", "notification", "phone", "13800138000").await;
    let out = app
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    // 1,010 refused exports naming the subject, afterwards.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let officer = v.client("officer");
        tasks.push(tokio::spawn(async move {
            for _ in 0..101 {
                let e = officer.export_subject("acct-7").await.unwrap_err();
                assert_eq!(e.code(), Some("purpose_not_allowed"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = app.access_log("acct-7").await.unwrap();
    assert!(log.truncated);
    assert_eq!(log.entries.len(), 1_001);
    assert_eq!(log.entries[0].outcome, "released");
    assert!(log.entries[1..]
        .iter()
        .all(|e| e.outcome == "purpose_not_allowed"));
}

/// Walks of the audit log hold places: one caller at most half of its
/// pool, so an app walking the log cannot keep the other apps out (and
/// officers have a pool apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_every_audit_walk() {
    use std::sync::atomic::Ordering::SeqCst;
    let (v, store) = start_hooked(|_| {}).await;
    let app = v.client("app");
    tokenize_one(&app, "acct-w", "notification", "phone", "13800138000").await;
    let _holding = store.holding_scans();
    let mut walking = Vec::new();
    for _ in 0..2 {
        let app = v.client("app");
        walking.push(tokio::spawn(async move { app.access_log("acct-w").await }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.scans_held.load(SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the walks never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let e = app.access_log("acct-w").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(503), Some("overloaded")));
    // An officer's walk has places of its own.
    let officer = v.client("officer");
    let asked = tokio::spawn(async move { officer.audit(Some("acct-w"), None, Some(10)).await });
    store.hold_scans.store(false, SeqCst);
    assert!(!asked.await.unwrap().unwrap().events.is_empty());
    for w in walking {
        w.await.unwrap().unwrap();
    }
}

/// The access log pages back: a subject with more releases than one answer
/// holds gets the newest 10,000 and `next_before`, and `?before=` gives
/// the rest, so every release can be listed. A bad `before` is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_pages_back_to_every_release() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let tok = tokenize_one(&app, "acct-p", "notification", "phone", "13800138000").await;
    for n in [
        1000usize, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 5,
    ] {
        let tokens = vec![tok.as_str(); n];
        let out = app
            .detokenize(&detok_req("notification", &tokens))
            .await
            .unwrap();
        assert!(out.values.iter().all(|o| o.status == Status::Ok));
    }
    let first = app.access_log("acct-p").await.unwrap();
    assert!(first.truncated);
    assert_eq!(first.entries.len(), 10_000);
    let before = first.next_before.expect("a page back");
    let rest = app.access_log_before("acct-p", before).await.unwrap();
    assert!(!rest.truncated);
    assert_eq!(rest.next_before, None);
    assert_eq!(rest.entries.len() + first.entries.len(), 10_005);
    assert!(rest
        .entries
        .iter()
        .chain(&first.entries)
        .all(|e| e.outcome == "released"));
    assert!(rest.entries.last().unwrap().time_ms <= first.entries[0].time_ms);
    let r = app
        .raw(
            http::Method::GET,
            "/v1/subjects/acct-p/access-log?before=x",
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400);
}

/// A reidentify marker naming another class than its token's value
/// (`[[name:<a phone's token>]]`) puts nothing back: it is answered as a
/// token never issued, so nothing is released, audited as released, or
/// charged to the legal-exception approval it came under, which then
/// still serves the disclosure it was granted for.
#[tokio::test]
async fn a_marker_of_another_class_releases_nothing_and_spends_no_approval() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let officer = v.client("officer");
    let phone = tokenize_one(&app, "acct-1", "notification", "phone", "13800138000").await;
    let granted = officer
        .approve(&approval("app", &["acct-1"], "PT1H"))
        .await
        .unwrap();
    let basis = Some(LegalBasis {
        reference: "case-2026-17".into(),
        approval: granted.id.clone(),
    });
    let text = format!("联系人 [[name:{phone}]]");
    let mut req = reid("criminal_investigation", &text);
    req.legal_basis = basis.clone();
    let r = app.reidentify(&req).await.unwrap();
    assert_eq!(r.text, text);
    assert_eq!(r.markers[0].status, Status::Unknown);
    assert_eq!(r.markers[0].class, None);
    // Without a legal exception the same.
    let r = app
        .reidentify(&reid("respond_to_request", &text))
        .await
        .unwrap();
    assert_eq!(
        (r.markers[0].status, r.text.as_str()),
        (Status::Unknown, text.as_str())
    );
    let events = v.audit_events().await;
    assert!(
        !events
            .iter()
            .any(|e| e.action == "reidentify" && e.outcome.starts_with("released")),
        "{events:?}"
    );
    // The approval still serves its one disclosure.
    let mut req = detok_req("criminal_investigation", &[&phone]);
    req.legal_basis = basis;
    let out = app.detokenize(&req).await.unwrap();
    assert_eq!(out.values[0].status, Status::Ok, "{:?}", out.values[0]);
    // And the right marker is put back.
    let r = app
        .reidentify(&reid("respond_to_request", &format!("[[phone:{phone}]]")))
        .await
        .unwrap();
    assert_eq!(r.text, "+8613800138000");
}
