//! The default policy of SPEC.md, row by row, through the API.

use crate::harness::*;
use vault_sdk::wire::{Reveal, Status, ValueOut};
use vault_sdk::Client;

const SAMPLES: [(&str, &str); 11] = [
    ("name", "陈明"),
    ("cn_resident_id", "350102199003071234"),
    ("phone", "13800138000"),
    ("email", "chen@example.com"),
    ("uscc", "91350100M000100Y43"),
    ("org_code", "D2143569-X"),
    ("passport", "E12345678"),
    ("bank_card", "6222021234567890128"),
    ("ip", "192.168.1.10"),
    ("address", "福建省福州市鼓楼区五四路100号"),
    ("text", "我的投诉内容"),
];

/// Tokens of every sample, collected under `respond_to_request` (which may
/// collect every class).
async fn all_tokens(c: &Client) -> Vec<(String, String)> {
    let fields = SAMPLES.iter().map(|(k, v)| field(k, v)).collect();
    let r = c
        .tokenize(&tok_req("acct-policy", "respond_to_request", fields))
        .await
        .unwrap();
    r.tokens.into_iter().map(|t| (t.class, t.token)).collect()
}

fn outcome(v: &ValueOut) -> &'static str {
    match (v.status, v.masked) {
        (Status::Ok, false) => "full",
        (Status::Ok, true) => "masked",
        (Status::Denied, _) => "none",
        _ => "other",
    }
}

async fn release(
    c: &Client,
    purpose: &str,
    tokens: &[(String, String)],
) -> Vec<(String, &'static str)> {
    let list: Vec<&str> = tokens.iter().map(|(_, t)| t.as_str()).collect();
    let r = c.detokenize(&detok_req(purpose, &list)).await.unwrap();
    tokens
        .iter()
        .zip(r.values.iter())
        .map(|((class, _), v)| (class.clone(), outcome(v)))
        .collect()
}

fn expect(got: &[(String, &str)], full: &[&str], masked: &[&str]) {
    for (class, o) in got {
        let want = if full.contains(&class.as_str()) {
            "full"
        } else if masked.contains(&class.as_str()) {
            "masked"
        } else {
            "none"
        };
        assert_eq!(*o, want, "class {class}");
    }
}

#[tokio::test]
async fn release_table_row_by_row() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tokens = all_tokens(&c).await;
    let all: Vec<&str> = SAMPLES.iter().map(|(k, _)| *k).collect();
    let others: Vec<&str> = all
        .iter()
        .copied()
        .filter(|k| !["name", "phone", "email"].contains(k))
        .collect();
    expect(
        &release(&c, "identity_verification", &tokens).await,
        &["name", "cn_resident_id", "passport", "uscc", "org_code"],
        &["phone"],
    );
    expect(
        &release(&c, "respond_to_request", &tokens).await,
        &["name", "phone", "email"],
        &others,
    );
    expect(
        &release(&c, "notification", &tokens).await,
        &["phone", "email"],
        &[],
    );
    // Requires consent, and none has been given: nothing.
    let got = release(&c, "user_specified", &tokens).await;
    expect(&got, &[], &[]);
    let r = c
        .detokenize(&detok_req("user_specified", &[&tokens[0].1]))
        .await
        .unwrap();
    assert_eq!(r.values[0].reason.as_deref(), Some("consent_required"));
}

#[tokio::test]
async fn purposes_the_caller_may_never_use_are_403() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tokens = all_tokens(&c).await;
    for purpose in ["traffic_statistics", "data_subject_request"] {
        let err = c
            .detokenize(&detok_req(purpose, &[&tokens[0].1]))
            .await
            .unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (Some(403), Some("purpose_not_allowed")),
            "{purpose}"
        );
    }
    // Officers have no release grants in the default policy.
    let err = v
        .client("officer")
        .detokenize(&detok_req("respond_to_request", &[&tokens[0].1]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("purpose_not_allowed"));
    // Each refusal left its event (SPEC: denied outcomes are audited too),
    // and so does a legal basis refused whole, and an officer's export.
    let bad = vault_sdk::wire::DetokenizeRequest {
        legal_basis: Some(vault_sdk::wire::LegalBasis {
            reference: "case\u{7}".into(),
            approval: "apr-1".into(),
        }),
        ..detok_req("criminal_investigation", &[&tokens[0].1])
    };
    let err = c.detokenize(&bad).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));
    let officer = v.client("officer");
    let err = officer.export_subject("acct-1").await.unwrap_err();
    assert_eq!(err.code(), Some("purpose_not_allowed"));
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let refused: Vec<(String, String, Option<String>)> = events
        .iter()
        .filter(|e| e.outcome == "purpose_not_allowed" || e.outcome == "bad_legal_basis")
        .map(|e| (e.caller.clone(), e.outcome.clone(), e.purpose.clone()))
        .collect();
    let want = |caller: &str, outcome: &str, purpose: &str| {
        (
            caller.to_string(),
            outcome.to_string(),
            Some(purpose.to_string()),
        )
    };
    assert_eq!(
        refused,
        vec![
            want("app", "purpose_not_allowed", "traffic_statistics"),
            want("app", "purpose_not_allowed", "data_subject_request"),
            want("officer", "purpose_not_allowed", "respond_to_request"),
            want("app", "bad_legal_basis", "criminal_investigation"),
            want("officer", "purpose_not_allowed", "data_subject_request"),
        ]
    );
    // The refused reference itself is not written anywhere.
    assert!(!events
        .iter()
        .any(|e| e.reference.as_deref().is_some_and(|r| r.contains("case"))));
}

#[tokio::test]
async fn collection_table_row_by_row() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let rows: [(&str, &[&str]); 5] = [
        (
            "identity_verification",
            &[
                "name",
                "cn_resident_id",
                "phone",
                "passport",
                "uscc",
                "org_code",
            ],
        ),
        (
            "respond_to_request",
            &[
                "name",
                "cn_resident_id",
                "phone",
                "email",
                "uscc",
                "org_code",
                "passport",
                "bank_card",
                "ip",
                "address",
                "text",
            ],
        ),
        ("traffic_statistics", &["ip"]),
        ("notification", &["phone", "email"]),
        (
            "user_specified",
            &[
                "name",
                "cn_resident_id",
                "phone",
                "email",
                "uscc",
                "org_code",
                "passport",
                "bank_card",
                "ip",
                "address",
                "text",
            ],
        ),
    ];
    for (purpose, allowed) in rows {
        for (class, value) in SAMPLES {
            let r = c
                .tokenize(&tok_req("acct-c", purpose, vec![field(class, value)]))
                .await;
            if allowed.contains(&class) {
                assert!(r.is_ok(), "{purpose} {class}: {r:?}");
            } else {
                let e = r.unwrap_err();
                assert_eq!(
                    (e.status(), e.code()),
                    (Some(403), Some("purpose_not_allowed")),
                    "{purpose} {class}"
                );
            }
        }
    }
    let e = c
        .tokenize(&tok_req(
            "acct-c",
            "data_subject_request",
            vec![field("name", "陈明")],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("purpose_not_allowed"));
}

#[tokio::test]
async fn legal_exceptions_release_nothing_without_approval() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tokens = all_tokens(&c).await;
    let r = c
        .detokenize(&detok_req("criminal_investigation", &[&tokens[0].1]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Denied);
    assert_eq!(r.values[0].reason.as_deref(), Some("legal_basis_required"));
    let mut req = detok_req("public_safety_health", &[&tokens[0].1]);
    req.legal_basis = Some(vault_sdk::wire::LegalBasis {
        reference: "case-1".into(),
        approval: "nope".into(),
    });
    let r = c.detokenize(&req).await.unwrap();
    assert_eq!(r.values[0].status, Status::Denied);
    assert!(r.values[0].value.is_none());
}

#[tokio::test]
async fn masked_reveal_never_upgrades() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tokens = all_tokens(&c).await;
    let mut req = detok_req("notification", &[&tokens[2].1, &tokens[0].1]);
    req.reveal = Reveal::Masked;
    let r = c.detokenize(&req).await.unwrap();
    assert_eq!(
        (r.values[0].masked, r.values[0].value.as_deref()),
        (true, Some("138****8000"))
    );
    assert_eq!(r.values[1].status, Status::Denied);
}

/// One value held by several subjects has one token; restriction, consent
/// and approvals belong to subjects. The release is decided per holder,
/// the same whichever holder sorts first, and the audit event names the
/// holder it was made for.
#[tokio::test]
async fn a_shared_value_is_released_for_a_holder_the_policy_allows_and_audited_as_theirs() {
    let v = TestVault::start_with(|cfg| {
        cfg.retention
            .legal_minimum
            .insert("cn_resident_id".into(), "P3Y".into());
    })
    .await;
    let app = v.client("app");
    let officer = v.client("officer");
    // Consent: the first holder (by key order) has none, the second has.
    let t = tokenize_one(&app, "acct-c", "user_specified", "name", "李雷").await;
    assert_eq!(
        tokenize_one(&app, "acct-z", "user_specified", "name", "李雷").await,
        t
    );
    let out = app
        .detokenize(&detok_req("user_specified", &[&t]))
        .await
        .unwrap();
    assert_eq!(out.values[0].reason.as_deref(), Some("consent_required"));
    app.give_consent("acct-z", "user_specified", "2022-05-01")
        .await
        .unwrap();
    let out = app
        .detokenize(&detok_req("user_specified", &[&t]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some("李雷"));
    // Restriction: acct-r restricted (the law keeps its ID), acct-s holds
    // the same ID and is not.
    let id = "11010519491231002X";
    let tr = tokenize_one(
        &app,
        "acct-r",
        "identity_verification",
        "cn_resident_id",
        id,
    )
    .await;
    assert!(app
        .erase_subject("acct-r")
        .await
        .unwrap()
        .restricted_until
        .is_some());
    let out = app
        .detokenize(&detok_req("identity_verification", &[&tr]))
        .await
        .unwrap();
    assert_eq!(out.values[0].reason.as_deref(), Some("restricted"));
    tokenize_one(
        &app,
        "acct-s",
        "identity_verification",
        "cn_resident_id",
        id,
    )
    .await;
    let out = app
        .detokenize(&detok_req("identity_verification", &[&tr]))
        .await
        .unwrap();
    assert_eq!(out.values[0].value.as_deref(), Some(id));
    // A legal exception uses the holder its approval covers (acct-z sorts
    // after acct-c, which the approval does not name).
    let req = approved_detok_req(
        &officer,
        "criminal_investigation",
        "acct-z",
        "case-7",
        &[&t],
    )
    .await;
    assert_eq!(
        app.detokenize(&req).await.unwrap().values[0]
            .value
            .as_deref(),
        Some("李雷")
    );
    // Each release is audited under the holder it was made for.
    let events = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let released: Vec<(Option<&str>, Option<&str>)> = events
        .iter()
        .filter(|e| e.action == "detokenize" && e.outcome == "released")
        .map(|e| (e.subject.as_deref(), e.purpose.as_deref()))
        .collect();
    assert_eq!(
        released,
        [
            (Some("acct-z"), Some("user_specified")),
            (Some("acct-s"), Some("identity_verification")),
            (Some("acct-z"), Some("criminal_investigation")),
        ]
    );
}

/// The eight legal-exception purposes are open to every caller; without a
/// live approval for this caller and purpose, every token gets the same
/// answer, stored, erased or never issued, with no class.
#[tokio::test]
async fn a_legal_exception_without_approval_is_no_oracle() {
    let v = TestVault::start().await;
    let app = v.client("app");
    let live = tokenize_one(&app, "acct-1", "identity_verification", "name", "王五").await;
    let erased = tokenize_one(&app, "acct-2", "identity_verification", "name", "赵六").await;
    app.erase_subject("acct-2").await.unwrap();
    let bogus = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for basis in [
        None,
        Some(vault_sdk::wire::LegalBasis {
            reference: "case-1".into(),
            approval: "no-such-approval".into(),
        }),
    ] {
        let mut req = detok_req("national_security", &[&live, &erased, bogus]);
        req.legal_basis = basis.clone();
        let out = app.detokenize(&req).await.unwrap();
        let shapes: Vec<_> = out
            .values
            .iter()
            .map(|x| (x.status, x.class.clone(), x.value.clone()))
            .collect();
        assert!(
            shapes.iter().all(|s| *s == (Status::Denied, None, None)),
            "{basis:?}: {shapes:?}"
        );
        let reasons: Vec<_> = out.values.iter().map(|x| x.reason.clone()).collect();
        assert!(reasons.windows(2).all(|w| w[0] == w[1]), "{reasons:?}");
    }
}
