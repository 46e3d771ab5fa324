//! De-identification over HTTPS: `deidentify` in its three modes,
//! `reidentify` under each row of the default policy, `records` with nested
//! arrays and objects, format-preserving tokens, and the bad inputs of each,
//! after which nothing is stored.

use serde_json::json;
use vault::store::Space;
use vault_sdk::wire::{
    DeidentifyMode, DeidentifyRequest, LegalBasis, RecordsRequest, Reveal, Status,
};

use crate::harness::{code, detok_req, field, post_raw, reid, tok_req, TestVault};

const TEXT: &str = "我叫陈明,身份证350102199003071234,电话13800138000";

fn deid(
    subject: Option<&str>,
    purpose: &str,
    mode: DeidentifyMode,
    text: &str,
) -> DeidentifyRequest {
    DeidentifyRequest {
        subject: subject.map(str::to_string),
        purpose: purpose.into(),
        mode,
        retention: None,
        text: text.into(),
    }
}

fn stored(tv: &TestVault) -> usize {
    tv.store()
        .scan(Space::Values, b"", None, 100_000)
        .unwrap()
        .len()
}

/// The characters `start..end` of `text`.
fn chars(text: &str, start: usize, end: usize) -> String {
    text.chars().skip(start).take(end - start).collect()
}

#[tokio::test]
async fn tokenize_mode_stores_and_marks_every_finding() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let r = app
        .deidentify(&deid(
            Some("acct-1"),
            "respond_to_request",
            DeidentifyMode::Tokenize,
            TEXT,
        ))
        .await
        .unwrap();
    let classes: Vec<&str> = r.findings.iter().map(|f| f.class.as_str()).collect();
    assert_eq!(classes, ["name", "cn_resident_id", "phone"]);
    let expect = ["陈明", "350102199003071234", "13800138000"];
    for (f, want) in r.findings.iter().zip(expect) {
        assert_eq!(chars(TEXT, f.start, f.end), want);
        assert_eq!(f.action, "tokenized");
        let t = f.token.as_deref().unwrap();
        assert!(
            r.text.contains(&format!("[[{}:{t}]]", f.class)),
            "{}",
            r.text
        );
    }
    assert!(
        r.findings[1].validated,
        "the resident ID's check validated it"
    );
    assert!(r.text.starts_with("我叫[[name:"));
    for pii in expect {
        assert!(!r.text.contains(pii));
    }
    assert_eq!(stored(&tv), 3);
    // The same values through tokenize give the same tokens.
    let t = app
        .tokenize(&tok_req(
            "acct-1",
            "respond_to_request",
            vec![field("phone", "+86 138 0013 8000")],
        ))
        .await
        .unwrap();
    assert_eq!(
        Some(t.tokens[0].token.as_str()),
        r.findings[2].token.as_deref()
    );
    // And they detokenize like any token.
    let d = app
        .detokenize(&detok_req(
            "respond_to_request",
            &[r.findings[0].token.as_deref().unwrap()],
        ))
        .await
        .unwrap();
    assert_eq!(d.values[0].value.as_deref(), Some("陈明"));
}

#[tokio::test]
async fn mask_and_redact_store_nothing() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let m = app
        .deidentify(&deid(
            None,
            "respond_to_request",
            DeidentifyMode::Mask,
            TEXT,
        ))
        .await
        .unwrap();
    assert_eq!(m.text, "我叫陈*,身份证350102********1234,电话138****8000");
    assert!(m
        .findings
        .iter()
        .all(|f| f.token.is_none() && f.action == "masked"));
    let r = app
        .deidentify(&deid(
            None,
            "respond_to_request",
            DeidentifyMode::Redact,
            TEXT,
        ))
        .await
        .unwrap();
    assert_eq!(
        r.text,
        "我叫[[name]],身份证[[cn_resident_id]],电话[[phone]]"
    );
    assert_eq!(stored(&tv), 0);
    assert!(tv
        .store()
        .scan(Space::SubjectKeys, b"", None, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_class_the_caller_may_not_collect_is_redacted_not_stored() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    // identity_verification may collect names, IDs and phones, not emails.
    let text = "联系人：王芳，邮箱wang.fang@fj.gov.cn";
    let r = app
        .deidentify(&deid(
            Some("acct-2"),
            "identity_verification",
            DeidentifyMode::Tokenize,
            text,
        ))
        .await
        .unwrap();
    let email = r.findings.iter().find(|f| f.class == "email").unwrap();
    assert_eq!(email.action, "redacted");
    assert!(email.token.is_none());
    assert!(r.text.ends_with("邮箱[[email]]"), "{}", r.text);
    assert_eq!(stored(&tv), 1, "only the name");
}

#[tokio::test]
async fn offsets_count_characters_outside_the_bmp() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let text = "𠀀😀 电话：13800138000";
    let r = app
        .deidentify(&deid(
            None,
            "respond_to_request",
            DeidentifyMode::Redact,
            text,
        ))
        .await
        .unwrap();
    assert_eq!(r.findings.len(), 1);
    let f = &r.findings[0];
    assert_eq!((f.start, f.end), (6, 17));
    assert_eq!(r.text, "𠀀😀 电话：[[phone]]");
}

#[tokio::test]
async fn reidentify_follows_each_policy_row_and_is_audited() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let text = "申请人陈明，电话13800138000，身份证350102199003071234";
    let d = app
        .deidentify(&deid(
            Some("acct-3"),
            "respond_to_request",
            DeidentifyMode::Tokenize,
            text,
        ))
        .await
        .unwrap();
    // respond_to_request: name and phone in full, resident ID masked.
    let r = app
        .reidentify(&reid("respond_to_request", &d.text))
        .await
        .unwrap();
    assert_eq!(
        r.text,
        "申请人陈明，电话+8613800138000，身份证350102********1234"
    );
    assert_eq!(r.markers.len(), 3);
    assert!(r.markers[2].masked);
    // notification: phone in full; name and ID stay markers, denied.
    let r = app
        .reidentify(&reid("notification", &d.text))
        .await
        .unwrap();
    assert!(r.text.contains("+8613800138000"));
    assert!(r.text.contains("[[name:") && r.text.contains("[[cn_resident_id:"));
    let statuses: Vec<Status> = r.markers.iter().map(|m| m.status).collect();
    assert_eq!(statuses, [Status::Denied, Status::Ok, Status::Denied]);
    // reveal masked lowers everything to masks.
    let mut masked = reid("respond_to_request", &d.text);
    masked.reveal = Reveal::Masked;
    let r = app.reidentify(&masked).await.unwrap();
    assert_eq!(
        r.text,
        "申请人陈*，电话138****8000，身份证350102********1234"
    );
    // user_specified needs consent: nothing comes back without it.
    let r = app
        .reidentify(&reid("user_specified", &d.text))
        .await
        .unwrap();
    assert_eq!(r.text, d.text);
    assert!(r
        .markers
        .iter()
        .all(|m| m.reason.as_deref() == Some("consent_required")));
    // A legal exception without an approval releases nothing.
    let mut legal = reid("criminal_investigation", &d.text);
    legal.legal_basis = Some(LegalBasis {
        reference: "case-1".into(),
        approval: "nope".into(),
    });
    let r = app.reidentify(&legal).await.unwrap();
    assert_eq!(r.text, d.text);
    // traffic_statistics releases nothing at all: refused outright.
    let e = app
        .reidentify(&reid("traffic_statistics", &d.text))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("purpose_not_allowed"));
    let mut no_purpose = reid("x", &d.text);
    no_purpose.purpose = None;
    let e = app.reidentify(&no_purpose).await.unwrap_err();
    assert_eq!(e.code(), Some("purpose_required"));
    // Every marker of every request is in the audit log as a reidentify.
    let officer = tv.client("officer");
    let events = officer
        .audit(Some("acct-3"), None, Some(1000))
        .await
        .unwrap();
    let reids = events
        .events
        .iter()
        .filter(|e| e.action == "reidentify")
        .count();
    // Four requests of three markers name the subject; the legal exception
    // without an approval looked nothing up, so its three refusals are
    // audited without a subject or token.
    assert_eq!(reids, 4 * 3);
    let all = officer.audit(None, None, Some(1000)).await.unwrap().events;
    let refused = all
        .iter()
        .filter(|e| {
            e.action == "reidentify"
                && e.purpose.as_deref() == Some("criminal_investigation")
                && e.outcome == "denied"
                && e.subject.is_none()
                && e.token.is_none()
        })
        .count();
    assert_eq!(refused, 3);
    // Unknown and foreign markers stay as they are.
    let r = app
        .reidentify(&reid(
            "respond_to_request",
            "[[phone:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA]] [[nope:x]] [[phone]]",
        ))
        .await
        .unwrap();
    assert_eq!(
        r.text,
        "[[phone:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA]] [[nope:x]] [[phone]]"
    );
    assert_eq!(r.markers.len(), 1);
    assert_eq!(r.markers[0].status, Status::Unknown);
}

#[tokio::test]
async fn deidentify_and_reidentify_refuse_bad_requests() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> =
        vec![
        ("/v1/deidentify", b"{".to_vec(), 400, "malformed_json"),
        ("/v1/deidentify", b"[1,2".to_vec(), 400, "malformed_json"),
        (
            "/v1/deidentify",
            br#"{"purpose":"respond_to_request","mode":"redact","text":5}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/deidentify",
            br#"{"purpose":"respond_to_request","mode":"shout","text":"x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/deidentify",
            br#"{"purpose":"respond_to_request","mode":"redact","text":"x","extra":1}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/deidentify",
            br#"{"purpose":"respond_to_request","text":"x"}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            "/v1/deidentify",
            br#"{"subject":"bad subject!","purpose":"respond_to_request","text":"x"}"#.to_vec(),
            400,
            "invalid_subject",
        ),
        (
            "/v1/deidentify",
            br#"{"subject":"a","purpose":"gossip","text":"x"}"#.to_vec(),
            400,
            "unknown_purpose",
        ),
        (
            "/v1/deidentify",
            br#"{"subject":"a","purpose":"respond_to_request","retention":"3 years","text":"x"}"#
                .to_vec(),
            400,
            "invalid_retention",
        ),
        ("/v1/reidentify", br#"{"text":"x","purpose":7}"#.to_vec(), 400, "invalid_request"),
        (
            "/v1/reidentify",
            br#"{"text":"x","purpose":"gossip"}"#.to_vec(),
            400,
            "unknown_purpose",
        ),
    ];
    for (path, body, status, want) in cases {
        let (s, v) = post_raw(&app, path, body.clone()).await;
        assert_eq!(
            (s, code(&v)),
            (status, want),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    // Over the body limit.
    let big = format!(
        r#"{{"purpose":"respond_to_request","mode":"redact","text":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    let (s, v) = post_raw(&app, "/v1/deidentify", big.into_bytes()).await;
    assert_eq!((s, code(&v)), (413, "body_too_large"));
    // More findings than a request may hold.
    let many = "13800138000 ".repeat(1001);
    let e = app
        .deidentify(&deid(
            Some("acct-4"),
            "respond_to_request",
            DeidentifyMode::Tokenize,
            &many,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("too_many_items"));
    let e = app
        .reidentify(&reid("respond_to_request", &"[[phone:AAAA]]".repeat(1001)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("too_many_items"));
    assert_eq!(stored(&tv), 0);
    // No error message repeats the text.
    let (_, v) = post_raw(
        &app,
        "/v1/deidentify",
        br#"{"subject":"a","purpose":"gossip","text":"13800138000"}"#.to_vec(),
    )
    .await;
    assert!(!v.to_string().contains("13800138000"));
}

fn form() -> serde_json::Value {
    json!({
        "applicant": {
            "name": "陈明",
            "id_number": "350102199003071234",
            "phone": "138 0013 8000",
            "age": 34
        },
        "co_applicants": [
            {"name": "林小红", "phone": "13900139000", "note": "备用电话13700137000"},
            {"name": "王芳", "phone": null}
        ],
        "company": {"uscc": "91350100M000100Y43"},
        "comments": ["请联系我 15900159000", {"deep": ["邮箱 chen.ming@fj.gov.cn"]}]
    })
}

fn records_req(
    mapping: Option<&[(&str, &str)]>,
    schema: Option<&str>,
    scan: bool,
) -> RecordsRequest {
    RecordsRequest {
        subject: "acct-9".into(),
        purpose: "respond_to_request".into(),
        retention: None,
        mapping: mapping.map(|m| {
            m.iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect()
        }),
        schema: schema.map(str::to_string),
        scan,
        mode: DeidentifyMode::Tokenize,
        document: form(),
    }
}

#[tokio::test]
async fn records_tokenize_mapped_leaves_and_scan_the_rest() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let r = app
        .records(&records_req(None, Some("application_form"), true))
        .await
        .unwrap();
    let doc = &r.document;
    // Mapped leaves hold bare tokens; structure and other types untouched.
    for p in [
        "/applicant/name",
        "/applicant/id_number",
        "/applicant/phone",
        "/co_applicants/0/name",
        "/co_applicants/0/phone",
        "/co_applicants/1/name",
        "/company/uscc",
    ] {
        let leaf = doc.pointer(p).unwrap().as_str().unwrap();
        let f = r.fields.iter().find(|f| f.pointer == p).unwrap();
        assert_eq!(Some(leaf), f.token.as_deref(), "{p}");
        assert_eq!(leaf.len(), 32, "{p}");
    }
    assert_eq!(doc["applicant"]["age"], 34);
    assert!(doc["co_applicants"][1]["phone"].is_null());
    // Scanned leaves carry markers.
    let note = doc["co_applicants"][0]["note"].as_str().unwrap();
    assert!(note.starts_with("备用电话[[phone:"), "{note}");
    assert!(doc["comments"][0].as_str().unwrap().contains("[[phone:"));
    assert!(doc["comments"][1]["deep"][0]
        .as_str()
        .unwrap()
        .contains("[[email:"));
    let text = doc.to_string();
    for pii in [
        "陈明",
        "350102199003071234",
        "13900139000",
        "13700137000",
        "chen.ming",
    ] {
        assert!(!text.contains(pii), "{pii} left in {text}");
    }
    // 7 mapped + 3 scanned values, in one write.
    assert_eq!(stored(&tv), 10);
    // The same document again gives the same tokens (idempotent).
    let again = app
        .records(&records_req(None, Some("application_form"), true))
        .await
        .unwrap();
    assert_eq!(again.document, r.document);
    assert_eq!(stored(&tv), 10);
    // Reidentify puts a scanned leaf back.
    let back = app
        .reidentify(&reid("respond_to_request", note))
        .await
        .unwrap();
    assert_eq!(back.text, "备用电话+8613700137000");
}

#[tokio::test]
async fn records_with_an_inline_mapping_without_scan() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let r = app
        .records(&records_req(
            Some(&[
                ("/co_applicants/*/name", "name"),
                ("/applicant/phone", "phone"),
            ]),
            None,
            false,
        ))
        .await
        .unwrap();
    assert_eq!(r.fields.len(), 3);
    assert_eq!(
        r.document["applicant"]["name"], "陈明",
        "unmapped, not scanned"
    );
    assert_eq!(stored(&tv), 3);
}

#[tokio::test]
async fn records_refuse_bad_documents_and_store_nothing() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let cases: Vec<(RecordsRequest, u16, &str, Option<&str>)> = vec![
        // A number where a string class is mapped.
        (
            records_req(Some(&[("/applicant/age", "phone")]), None, false),
            422,
            "invalid_value",
            Some("/applicant/age"),
        ),
        // An object where a string class is mapped.
        (
            records_req(Some(&[("/applicant", "name")]), None, false),
            422,
            "invalid_value",
            Some("/applicant"),
        ),
        // A value that fails its class, after good ones.
        (
            records_req(
                Some(&[
                    ("/applicant/phone", "phone"),
                    ("/co_applicants/*/name", "email"),
                ]),
                None,
                false,
            ),
            422,
            "invalid_value",
            Some("/co_applicants/0/name"),
        ),
        (
            records_req(Some(&[("applicant/name", "name")]), None, false),
            400,
            "invalid_mapping",
            None,
        ),
        (
            records_req(Some(&[("/applicant/name", "shoe_size")]), None, false),
            400,
            "invalid_mapping",
            None,
        ),
        (
            records_req(
                Some(&[("/applicant/name", "name"), ("/*/name", "name")]),
                None,
                false,
            ),
            400,
            "invalid_mapping",
            Some("/applicant/name"),
        ),
        (
            records_req(None, Some("nope"), false),
            400,
            "unknown_schema",
            None,
        ),
        (records_req(None, None, false), 400, "invalid_request", None),
        (
            records_req(Some(&[("/a", "name")]), Some("application_form"), false),
            400,
            "invalid_request",
            None,
        ),
    ];
    for (req, status, want, pointer) in cases {
        let e = app.records(&req).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(status), Some(want)),
            "{:?}",
            req.mapping
        );
        if let Some(p) = pointer {
            let (_, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
            assert_eq!(v["error"]["pointer"], p);
            assert!(!v.to_string().contains("陈明"));
        }
    }
    // A document keyed by phone number: the error names the member by its
    // position, never by its name.
    let mut req = records_req(Some(&[("/contacts/*", "phone")]), None, false);
    req.document = serde_json::json!({"contacts": {"13800138000": 5}});
    let (status, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("invalid_value"))
    );
    assert_eq!(v["error"]["pointer"], "/contacts/[member 0]");
    assert!(!v.to_string().contains("13800138000"), "{v}");
    // A class the caller may not collect for the purpose.
    let mut req = records_req(Some(&[("/applicant/phone", "phone")]), None, false);
    req.purpose = "traffic_statistics".into();
    let e = app.records(&req).await.unwrap_err();
    assert_eq!(e.code(), Some("purpose_not_allowed"));
    // Nesting past serde_json's limit, and bodies past the size limit.
    let deep = format!(
        r#"{{"subject":"a","purpose":"respond_to_request","scan":true,"document":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let (s, v) = post_raw(&app, "/v1/records", deep.into_bytes()).await;
    assert_eq!((s, code(&v)), (400, "too_deep"));
    let (s, v) = post_raw(&app, "/v1/records", b"{\"subject\":".to_vec()).await;
    assert_eq!((s, code(&v)), (400, "malformed_json"));
    let (s, v) = post_raw(
        &app,
        "/v1/records",
        br#"{"subject":"a","purpose":"respond_to_request","scan":true,"document":{},"x":1}"#
            .to_vec(),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "invalid_request"));
    let big = json!({"subject":"a","purpose":"respond_to_request","scan":true,
        "document": {"t": "a".repeat(2 << 20)}});
    let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!((s, code(&v)), (413, "body_too_large"));
    assert_eq!(stored(&tv), 0);
}

#[tokio::test]
async fn records_mask_and_redact_store_nothing() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let mut req = records_req(None, Some("application_form"), true);
    req.mode = DeidentifyMode::Mask;
    let r = app.records(&req).await.unwrap();
    assert_eq!(r.document["applicant"]["phone"], "138****8000");
    assert_eq!(r.document["applicant"]["name"], "陈*");
    req.mode = DeidentifyMode::Redact;
    let r = app.records(&req).await.unwrap();
    assert_eq!(r.document["applicant"]["id_number"], "[[cn_resident_id]]");
    assert_eq!(r.document["comments"][0], "请联系我 [[phone]]");
    assert_eq!(stored(&tv), 0);
}

#[tokio::test]
async fn format_preserving_tokens_keep_the_shape_and_resolve() {
    let tv = TestVault::start_with(|cfg| {
        for class in ["phone", "cn_resident_id", "bank_card", "uscc"] {
            cfg.tokens
                .insert(class.into(), vault::tokens::TokenStyle::Preserving);
        }
    })
    .await;
    let app = tv.client("app");
    let values = [
        ("phone", "13800138000"),
        ("cn_resident_id", "350102199003071234"),
        ("bank_card", "6222021234567890128"),
        ("uscc", "91350100M000100Y43"),
        ("email", "chen@fj.gov.cn"),
    ];
    let t = app
        .tokenize(&tok_req(
            "acct-p",
            "respond_to_request",
            values.iter().map(|(c, v)| field(c, v)).collect(),
        ))
        .await
        .unwrap();
    let tok: Vec<&str> = t.tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tok[0].len(), 11);
    assert!(tok[0].starts_with("138") && tok[0] != "13800138000");
    assert_eq!(tok[1].len(), 18);
    assert!(tok[1].starts_with("00"));
    assert_eq!(tok[2].len(), 19);
    assert!(tok[2].starts_with("622202"));
    assert_eq!(tok[3].len(), 18);
    assert_eq!(tok[4].len(), 32, "email has no preserving form");
    // Phone and card tokens are valid values of their class; resident-ID
    // and USCC tokens have the shape and a valid check character, but an
    // address code or registering authority that does not exist, so they
    // never pass for a real value.
    for (i, class) in [(0, "phone"), (2, "bank_card")] {
        let c = vault::classes::Class::parse(class).unwrap();
        let n = vault::classes::normalize(c, tok[i]).unwrap();
        assert!(n.flag().is_none(), "{class} token passes its checksum");
    }
    for (i, class) in [(1, "cn_resident_id"), (3, "uscc")] {
        let c = vault::classes::Class::parse(class).unwrap();
        assert_eq!(
            vault::classes::normalize(c, tok[i]).err(),
            Some(vault::classes::Invalid::Format),
            "{class}"
        );
    }
    // They detokenize, in full where the policy says so.
    let d = app
        .detokenize(&detok_req("respond_to_request", &tok))
        .await
        .unwrap();
    assert_eq!(d.values[0].value.as_deref(), Some("+8613800138000"));
    assert_eq!(d.values[1].value.as_deref(), Some("350102********1234"));
    assert!(d.values.iter().all(|v| v.status == Status::Ok));
    // The subject's export names each value by the token tokenize gave,
    // so an app finds its own tokens there.
    let export = app.export_subject("acct-p").await.unwrap();
    let mut exported: Vec<&str> = export.values.iter().map(|v| v.token.as_str()).collect();
    let mut given = tok.clone();
    exported.sort_unstable();
    given.sort_unstable();
    assert_eq!(exported, given);
    // Stable: the same value again, and through deidentify.
    let again = app
        .deidentify(&deid(
            Some("acct-p"),
            "respond_to_request",
            DeidentifyMode::Tokenize,
            "电话 138-0013-8000",
        ))
        .await
        .unwrap();
    assert_eq!(again.text, format!("电话 [[phone:{}]]", tok[0]));
    let back = app
        .reidentify(&reid("respond_to_request", &again.text))
        .await
        .unwrap();
    assert_eq!(back.text, "电话 +8613800138000");
    // A mobile-shaped string that is no stored value's token is unknown.
    let d = app
        .detokenize(&detok_req("respond_to_request", &["13912345678"]))
        .await
        .unwrap();
    assert_eq!(d.values[0].status, Status::Unknown);
    // Its event records the outcome, not the number: a real phone number
    // sent as a token must not land in the permanent audit log.
    let events = tv.audit_events().await;
    let unknown: Vec<_> = events.iter().filter(|e| e.outcome == "unknown").collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].token, None);
    assert!(!serde_json::to_string(&events)
        .unwrap()
        .contains("13912345678"));
    // A token it did issue is recorded.
    assert!(events
        .iter()
        .any(|e| e.outcome == "released" && e.token.as_deref() == Some(tok[0])));
}

#[tokio::test]
async fn preserving_tokens_are_refused_for_opaque_classes() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    app.tokenize(&tok_req(
        "acct-o",
        "respond_to_request",
        vec![field("phone", "13800138000")],
    ))
    .await
    .unwrap();
    // With phone opaque, no mobile-shaped string resolves, whatever it is.
    let d = app
        .detokenize(&detok_req("respond_to_request", &["13800138000"]))
        .await
        .unwrap();
    assert_eq!(d.values[0].status, Status::Unknown);
}

#[tokio::test]
async fn a_sealed_vault_processes_no_text_at_all() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    tv.client("officer").seal().await.unwrap();
    for mode in [
        DeidentifyMode::Tokenize,
        DeidentifyMode::Mask,
        DeidentifyMode::Redact,
    ] {
        let e = app
            .deidentify(&deid(Some("acct-s"), "respond_to_request", mode, TEXT))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(503), Some("sealed")),
            "{mode:?}"
        );
    }
    let e = app
        .reidentify(&reid("respond_to_request", "[[phone:AAAA]]"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("sealed"));
    let mut req = records_req(None, Some("application_form"), true);
    req.mode = DeidentifyMode::Redact;
    let e = app.records(&req).await.unwrap_err();
    assert_eq!(e.code(), Some("sealed"));
}

/// A member name costs its bytes once in the body but is copied into every
/// pointer beneath it: a 35 KB body (a 10 KB name over 1,000 phones) built
/// 30 MB of pointers, 900 times its size, outside the body budget, and a
/// caller's 512 places held 10 GiB that way. The pointers a request may
/// build are now 32 times its body (at least 1 MiB): this one is refused
/// 413 and stores nothing, and the same document under a short name goes
/// through. And what a request keeps is held from the body budget.
#[tokio::test]
async fn a_small_records_body_cannot_build_pointers_many_times_its_size() {
    let phones: Vec<String> = (0..1_000).map(|i| format!("1380013{i:04}")).collect();
    let req = |name: &str| {
        json!({"subject":"acct-9","purpose":"identity_verification",
            "mapping": {format!("/{name}/*"): "phone"}, "document": {name: phones}})
    };
    let short = serde_json::to_vec(&req("phones")).unwrap();
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let body = serde_json::to_vec(&req(&"k".repeat(10_000))).unwrap();
    assert!(body.len() < 40_000);
    let (s, v) = post_raw(&app, "/v1/records", body).await;
    assert_eq!((s, code(&v)), (413, "too_many_items"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bytes of pointers"));
    assert_eq!(stored(&tv), 0);
    let (s, v) = post_raw(&app, "/v1/records", short.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored(&tv), 1_000);
    drop(tv);
    // A caller's share of 2 MiB (two places of 1 MiB bodies): the
    // pointers a request keeps while it waits for its write are held from
    // it, beside its body. A 720 KB body whose 1,000 pointers hold 2 MB
    // (within its walk's budget) finds no room: 503, nothing stored. The
    // short-named one goes through.
    let tv = TestVault::start_with(|c| c.server.max_concurrent_requests = 2).await;
    let app = tv.client("app");
    let mut big = req(&"k".repeat(2_000));
    big["document"]["pad"] = json!("x".repeat(700_000));
    let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&big).unwrap()).await;
    assert_eq!((s, code(&v)), (503, "overloaded"), "{v}");
    assert_eq!(stored(&tv), 0);
    let (s, v) = post_raw(&app, "/v1/records", short.clone()).await;
    assert_eq!(s, 200, "{v}");
}

/// Many patterns over a long list: each `*` pattern walks the whole list, so
/// the work is patterns times elements. One request must not hold a worker
/// for minutes: the walks share a budget and the patterns are counted.
#[tokio::test]
async fn records_cannot_buy_unbounded_work_with_a_wide_mapping() {
    let tv = TestVault::start().await;
    let app = tv.client("app");
    let send = |mapping: serde_json::Map<String, serde_json::Value>, len: usize, mode: &str| {
        json!({"subject":"acct-9","purpose":"respond_to_request","mode":mode,
            "mapping": mapping, "document": vec![0; len]})
    };
    // More patterns than items a request may change: refused before any walk.
    let many: serde_json::Map<_, _> = (0..1_001)
        .map(|i| (format!("/*/k{i}"), json!("ip")))
        .collect();
    let started = std::time::Instant::now();
    let (s, v) = post_raw(
        &app,
        "/v1/records",
        serde_json::to_vec(&send(many, 10, "redact")).unwrap(),
    )
    .await;
    assert_eq!((s, code(&v)), (413, "too_many_items"), "{v}");
    // Within the pattern count, but 1,000 walks of 200,000 elements (2e8
    // nodes, minutes of a core before the budget): refused, at once.
    let wide: serde_json::Map<_, _> = (0..1_000)
        .map(|i| (format!("/*/k{i}"), json!("ip")))
        .collect();
    let (s, v) = post_raw(
        &app,
        "/v1/records",
        serde_json::to_vec(&send(wide, 200_000, "redact")).unwrap(),
    )
    .await;
    assert_eq!((s, code(&v)), (413, "too_many_items"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bytes of pointers"),
        "{v}"
    );
    // One long member name copied into every pointer under it: few nodes,
    // but each child's pointer is 600 KB (120 GB in all), through a mapping
    // and through the scan alike.
    let long = "a".repeat(600_000);
    let doc = json!({ long.clone(): vec![0; 200_000] });
    for req in [
        json!({"subject":"acct-9","purpose":"respond_to_request","mode":"redact",
            "mapping": {"/*/*": "ip"}, "document": doc}),
        json!({"subject":"acct-9","purpose":"respond_to_request","mode":"redact",
            "scan": true, "document": doc}),
    ] {
        let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
        assert_eq!((s, code(&v)), (413, "too_many_items"), "{v}");
    }
    // Pointers named once per finding in the answer: a 2 MB one (a name of
    // slashes, each escaped to two bytes) with 900 findings would be 2 GB,
    // and a name of control characters is six bytes a character as the
    // answer writes it.
    for (name, findings) in [("/".repeat(1_020_000), 900), ("\u{1}".repeat(100_000), 166)] {
        let text: String = (0..findings).map(|i| format!("u{i}@ex.cn ")).collect();
        let req = json!({"subject":"acct-9","purpose":"respond_to_request","mode":"redact",
            "scan": true, "document": { name: text }});
        let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
        assert_eq!((s, code(&v)), (413, "too_many_items"), "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("bytes of pointers"), "{v}");
    }
    // Generous: the walks stop at the budget, well before the 10 s deadline.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    // The item limit counts replacements in every mode, not only stored ones
    // (SPEC: more than 1,000 fields in one request get 413).
    for mode in ["mask", "redact"] {
        let ips: Vec<String> = (0..1_001)
            .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
            .collect();
        let req = json!({"subject":"acct-9","purpose":"respond_to_request","mode":mode,
            "mapping": {"/*": "ip"}, "document": ips});
        let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
        assert_eq!((s, code(&v)), (413, "too_many_items"), "{mode}: {v}");
        let text = (0..1_001)
            .map(|i| format!("电话1380013{:04} ", i))
            .collect::<String>();
        let req =
            json!({"subject":"acct-9","purpose":"respond_to_request","mode":mode,"text":text});
        let (s, v) = post_raw(&app, "/v1/deidentify", serde_json::to_vec(&req).unwrap()).await;
        assert_eq!((s, code(&v)), (413, "too_many_items"), "{mode}: {v}");
    }
    // At the limit it still works.
    let ips: Vec<String> = (0..1_000)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
        .collect();
    let req = json!({"subject":"acct-9","purpose":"respond_to_request","mode":"mask",
        "mapping": {"/*": "ip"}, "document": ips});
    let (s, v) = post_raw(&app, "/v1/records", serde_json::to_vec(&req).unwrap()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored(&tv), 0);
}
