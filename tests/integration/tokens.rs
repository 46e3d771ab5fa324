//! Tokens: deterministic per class and normalized value, across subjects,
//! variants and restarts; values come back normalized; retention holds at
//! read time.

use crate::harness::*;
use vault_sdk::wire::{Reveal, Status};

#[tokio::test]
async fn tokens_are_stable_across_subjects_variants_and_restarts() {
    let mut v = TestVault::start().await;
    let c = v.client("app");
    let a = tokenize_one(
        &c,
        "acct-1",
        "identity_verification",
        "cn_resident_id",
        "350102199003071234",
    )
    .await;
    let b = tokenize_one(
        &c,
        "acct-2",
        "identity_verification",
        "cn_resident_id",
        "3501 0219 9003 0712 34",
    )
    .await;
    let w = tokenize_one(
        &c,
        "acct-3",
        "identity_verification",
        "cn_resident_id",
        "３５０１０２１９９００３０７１２３４",
    )
    .await;
    let legacy = tokenize_one(
        &c,
        "acct-4",
        "identity_verification",
        "cn_resident_id",
        "350102900307123",
    )
    .await;
    assert_eq!(a, b);
    assert_eq!(a, w);
    assert_eq!(a, legacy);
    assert!(
        a.len() <= 64
            && a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(!a.contains("350102"));
    let p1 = tokenize_one(&c, "acct-1", "notification", "phone", "+86 138 0013 8000").await;
    let p2 = tokenize_one(&c, "acct-1", "notification", "phone", "13800138000").await;
    assert_eq!(p1, p2);
    // Same digits, another class: another token.
    let t = tokenize_one(&c, "acct-1", "respond_to_request", "text", "13800138000").await;
    assert_ne!(t, p1);
    v.restart().await;
    let c = v.client("app");
    assert_eq!(
        tokenize_one(
            &c,
            "acct-9",
            "identity_verification",
            "cn_resident_id",
            "350102199003071234"
        )
        .await,
        a
    );
    let r = c
        .detokenize(&detok_req("identity_verification", &[&a]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Ok);
    assert_eq!(r.values[0].value.as_deref(), Some("350102199003071234"));
}

#[tokio::test]
async fn values_come_back_normalized_and_masked() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let id = tokenize_one(
        &c,
        "s",
        "identity_verification",
        "cn_resident_id",
        "11010519491231002x",
    )
    .await;
    let phone = tokenize_one(&c, "s", "notification", "phone", "+86 138-0013-8000").await;
    let email = tokenize_one(&c, "s", "notification", "email", "chen@Example.COM").await;
    let name = tokenize_one(&c, "s", "identity_verification", "name", "陈明").await;
    let compound = tokenize_one(&c, "s", "identity_verification", "name", "欧阳娜娜").await;
    let r = c
        .detokenize(&detok_req("respond_to_request", &[&phone, &email, &name]))
        .await
        .unwrap();
    assert_eq!(r.values[0].value.as_deref(), Some("+8613800138000"));
    assert_eq!(r.values[1].value.as_deref(), Some("chen@example.com"));
    assert_eq!(r.values[2].value.as_deref(), Some("陈明"));
    let r = c
        .detokenize(&detok_req("identity_verification", &[&id]))
        .await
        .unwrap();
    assert_eq!(r.values[0].value.as_deref(), Some("11010519491231002X"));
    let mut req = detok_req(
        "respond_to_request",
        &[&phone, &id, &name, &compound, &email],
    );
    req.reveal = Reveal::Masked;
    let r = c.detokenize(&req).await.unwrap();
    let got: Vec<_> = r
        .values
        .iter()
        .map(|x| (x.masked, x.value.clone().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (true, "138****8000".to_string()),
            (true, "110105********002X".to_string()),
            (true, "陈*".to_string()),
            (true, "欧阳**".to_string()),
            (true, "c***@example.com".to_string()),
        ]
    );
}

#[tokio::test]
async fn expiry_holds_at_read_time() {
    // The sweeper would delete the value; this is about reads before it.
    let v = TestVault::start_with(|cfg| cfg.retention.sweep_interval_ms = 600_000).await;
    let c = v.client("app");
    let mut req = tok_req("s-exp", "notification", vec![field("phone", "13900139000")]);
    // Three seconds: the first read must come inside them on a loaded
    // machine.
    req.retention = Some("PT3S".into());
    let t = c.tokenize(&req).await.unwrap().tokens[0].token.clone();
    let r = c
        .detokenize(&detok_req("notification", &[&t]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Ok);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let r = c
        .detokenize(&detok_req("notification", &[&t]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Gone);
    assert!(r.values[0].value.is_none());
    // A live copy under another subject makes the token live again.
    tokenize_one(&c, "s-other", "notification", "phone", "13900139000").await;
    let r = c
        .detokenize(&detok_req("notification", &[&t]))
        .await
        .unwrap();
    assert_eq!(r.values[0].status, Status::Ok);
}

#[tokio::test]
async fn flagged_values_are_accepted_and_say_so() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let r = c
        .tokenize(&tok_req(
            "s",
            "identity_verification",
            vec![
                field("uscc", "91350100M0001TGQXM"),
                field("uscc", "91350100M000100Y43"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(r.tokens[0].flag.as_deref(), Some("checksum_failed"));
    assert_eq!(r.tokens[1].flag, None);
}

#[tokio::test]
async fn unknown_tokens_and_garbage_are_unknown() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let never = "A".repeat(32);
    let r = c
        .detokenize(&detok_req(
            "notification",
            &[&never, "not-a-token", "", "../../etc/passwd"],
        ))
        .await
        .unwrap();
    assert!(r
        .values
        .iter()
        .all(|x| x.status == Status::Unknown && x.value.is_none()));
    assert_eq!(r.values[1].token, "not-a-token");
}
