//! Bad input gets a clear error and loses nothing: every error code of the
//! tokenize and detokenize endpoints, and proof that a failed request stored
//! nothing and echoed nothing.

use crate::harness::*;
use vault::store::{scan_prefix, Space};

const ID: &str = "350102199003071234";

async fn expect(
    c: &vault_sdk::Client,
    path: &str,
    body: Vec<u8>,
    status: u16,
    want: &str,
) -> serde_json::Value {
    let (s, v) = post_raw(c, path, body).await;
    assert_eq!((s, code(&v)), (status, want), "{v}");
    v
}

#[tokio::test]
async fn tokenize_errors() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let t = "/v1/tokenize";
    expect(&c, t, b"{not json".to_vec(), 400, "malformed_json").await;
    expect(&c, t, b"".to_vec(), 400, "malformed_json").await;
    expect(
        &c,
        t,
        br#"{"subject":1,"purpose":"notification","fields":[]}"#.to_vec(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        t,
        br#"{"subject":"s","purpose":"notification","fields":[],"extra":1}"#.to_vec(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        t,
        br#"{"subject":"s","subject":"t","purpose":"notification","fields":[]}"#.to_vec(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        t,
        br#"{"subject":"s","purpose":"notification"}"#.to_vec(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        t,
        br#"{"subject":"s","purpose":"notification","fields":[]}"#.to_vec(),
        400,
        "invalid_request",
    )
    .await;
    expect(&c, t, br#"{"subject":"s","purpose":"notification","fields":[{"class":"phone","value":13800138000}]}"#.to_vec(), 400, "invalid_request").await;
    let body = |subject: &str, purpose: &str, class: &str, value: &str| {
        serde_json::to_vec(&tok_req(subject, purpose, vec![field(class, value)])).unwrap()
    };
    expect(
        &c,
        t,
        body("a b", "notification", "phone", "13800138000"),
        400,
        "invalid_subject",
    )
    .await;
    expect(
        &c,
        t,
        body(&"x".repeat(129), "notification", "phone", "13800138000"),
        400,
        "invalid_subject",
    )
    .await;
    expect(
        &c,
        t,
        body("s", "marketing", "phone", "13800138000"),
        400,
        "unknown_purpose",
    )
    .await;
    expect(
        &c,
        t,
        body("s", "notification", "fax", "13800138000"),
        400,
        "unknown_class",
    )
    .await;
    expect(
        &c,
        t,
        body("s", "notification", "name", "陈明"),
        403,
        "purpose_not_allowed",
    )
    .await;
    let mut r = tok_req("s", "notification", vec![field("phone", "13800138000")]);
    r.retention = Some("three years".into());
    expect(
        &c,
        t,
        serde_json::to_vec(&r).unwrap(),
        400,
        "invalid_retention",
    )
    .await;
    // 1,001 fields.
    let many = tok_req(
        "s",
        "notification",
        (0..1001).map(|_| field("phone", "13800138000")).collect(),
    );
    expect(
        &c,
        t,
        serde_json::to_vec(&many).unwrap(),
        413,
        "too_many_items",
    )
    .await;
    // Over 1 MiB.
    let big = tok_req(
        "s",
        "respond_to_request",
        vec![field("text", &"字".repeat(400_000))],
    );
    expect(
        &c,
        t,
        serde_json::to_vec(&big).unwrap(),
        413,
        "body_too_large",
    )
    .await;
}

#[tokio::test]
async fn a_bad_field_fails_the_whole_request_and_stores_nothing() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let req = tok_req(
        "acct-atomic",
        "identity_verification",
        vec![
            field("phone", "13800138000"),
            field("name", "陈明"),
            field("cn_resident_id", "350102199003071235"),
        ],
    );
    let (s, body) = post_raw(&c, "/v1/tokenize", serde_json::to_vec(&req).unwrap()).await;
    assert_eq!((s, code(&body)), (422, "invalid_value"));
    assert_eq!(body["error"]["field"], 2);
    let text = body.to_string();
    assert!(
        !text.contains("350102199003071235")
            && !text.contains("13800138000")
            && !text.contains("陈明"),
        "{text}"
    );
    assert!(
        scan_prefix(v.store().as_ref(), Space::Subjects, b"acct-atomic", 10)
            .unwrap()
            .is_empty()
    );
    assert!(v
        .store()
        .scan(Space::Values, b"", None, 10)
        .unwrap()
        .is_empty());
    // Each invalid class answers 422 with the index of the field.
    for (i, (class, bad)) in [
        ("phone", "15412345678"),
        ("email", "no-at-sign"),
        ("cn_resident_id", "350102199002301234"),
        ("org_code", "12345678-9"),
        ("ip", "192.168.001.010"),
        ("uscc", "91350100M00010OY43"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut fields: Vec<_> = (0..i).map(|_| field("phone", "13800138000")).collect();
        fields.push(field(class, bad));
        let req = tok_req("acct-atomic", "respond_to_request", fields);
        let (s, body) = post_raw(&c, "/v1/tokenize", serde_json::to_vec(&req).unwrap()).await;
        assert_eq!(
            (s, code(&body), body["error"]["field"].as_u64()),
            (422, "invalid_value", Some(i as u64)),
            "{class}"
        );
        assert!(!body.to_string().contains(bad), "{class} echoed");
    }
    assert!(v
        .store()
        .scan(Space::Values, b"", None, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn detokenize_errors() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let tok = tokenize_one(&c, "s", "identity_verification", "cn_resident_id", ID).await;
    let d = "/v1/detokenize";
    expect(&c, d, b"[1,2".to_vec(), 400, "malformed_json").await;
    expect(
        &c,
        d,
        format!(r#"{{"tokens":["{tok}"]}}"#).into_bytes(),
        400,
        "purpose_required",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"","tokens":["{tok}"]}}"#).into_bytes(),
        400,
        "purpose_required",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"gossip","tokens":["{tok}"]}}"#).into_bytes(),
        400,
        "unknown_purpose",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"traffic_statistics","tokens":["{tok}"]}}"#).into_bytes(),
        403,
        "purpose_not_allowed",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"notification","tokens":["{tok}"],"reveal":"everything"}}"#)
            .into_bytes(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"notification","tokens":"{tok}"}}"#).into_bytes(),
        400,
        "invalid_request",
    )
    .await;
    expect(
        &c,
        d,
        format!(r#"{{"purpose":"notification","tokens":["{tok}"],"why":"x"}}"#).into_bytes(),
        400,
        "invalid_request",
    )
    .await;
    let many: Vec<String> = (0..1001).map(|_| tok.clone()).collect();
    let body = serde_json::json!({"purpose":"notification","tokens":many});
    expect(
        &c,
        d,
        serde_json::to_vec(&body).unwrap(),
        413,
        "too_many_items",
    )
    .await;
    let huge = serde_json::json!({"purpose":"notification","tokens":[ "x".repeat(2 << 20) ]});
    expect(
        &c,
        d,
        serde_json::to_vec(&huge).unwrap(),
        413,
        "body_too_large",
    )
    .await;
    // Nothing in any error names the token's value.
    let r = c
        .raw(http::Method::GET, "/v1/detokenize", None)
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    let r = c
        .raw(http::Method::POST, "/v1/admin/stats/anonymized", None)
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    let r = c.raw(http::Method::GET, "/v1/nothing", None).await.unwrap();
    assert_eq!(r.status, 404);
    let r = c.raw(http::Method::GET, "/v1/audit", None).await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(code(&serde_json::from_slice(&r.body).unwrap()), "forbidden");
}

#[tokio::test]
async fn an_audit_write_failure_releases_nothing() {
    use std::sync::atomic::Ordering;

    let (mut v, store) = start_hooked(|_| {}).await;
    let c = v.client("app");
    let tok = tokenize_one(&c, "s", "notification", "phone", "13800138000").await;
    store.fail_writes.store(true, Ordering::SeqCst);
    let err = c
        .detokenize(&detok_req("notification", &[&tok]))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(503), Some("unavailable")));
    assert!(!format!("{err:?}").contains("13800138000"));
    let err = c
        .tokenize(&tok_req(
            "s2",
            "notification",
            vec![field("phone", "13900139000")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unavailable"));
    assert_eq!(v.ops_get("/readyz").await.0, 503);
    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        c.detokenize(&detok_req("notification", &[&tok]))
            .await
            .unwrap()
            .values[0]
            .value
            .as_deref(),
        Some("+8613800138000")
    );
    assert_eq!(
        vault::audit::verify(store.as_ref()).unwrap(),
        vault::audit::Verdict::Intact { events: 2 }
    );
    v.stop().await;
}
