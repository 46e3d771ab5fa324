//! TLS and identity at the door: no certificate, a foreign CA, an unknown
//! caller, HTTP/2 by ALPN, and the ops listener.

use crate::harness::*;
use vault_sdk::ClientBuilder;

#[tokio::test]
async fn a_client_without_certificate_is_refused_in_the_handshake() {
    let v = TestVault::start().await;
    let c = ClientBuilder::new(format!("https://127.0.0.1:{}", v.api.port()))
        .ca_file(v.tls().join("ca.pem"))
        .unwrap()
        .no_identity()
        .retries(0)
        .build()
        .unwrap();
    assert_transport_refused(&c).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let v = TestVault::start().await;
    let other = tempfile::tempdir().unwrap();
    vault::dev::prepare(other.path()).unwrap();
    assert_identity_refused(&v, &other.path().join("tls")).await;
}

#[tokio::test]
async fn a_server_from_another_ca_is_not_trusted_by_the_sdk() {
    let v = TestVault::start().await;
    let other = tempfile::tempdir().unwrap();
    vault::dev::prepare(other.path()).unwrap();
    let c = ClientBuilder::new(format!("https://127.0.0.1:{}", v.api.port()))
        .ca_file(other.path().join("tls/ca.pem"))
        .unwrap()
        .identity_files(v.tls().join("app.pem"), v.tls().join("app.key"))
        .unwrap()
        .retries(0)
        .build()
        .unwrap();
    assert!(c
        .tokenize(&tok_req(
            "s1",
            "notification",
            vec![field("phone", "13800138000")]
        ))
        .await
        .is_err());
}

#[tokio::test]
async fn a_valid_certificate_of_an_unconfigured_caller_gets_403() {
    let v = TestVault::start_with(|cfg| cfg.callers.retain(|c| c.name != "officer2")).await;
    let c = v.client("officer2");
    let err = c
        .tokenize(&tok_req(
            "s1",
            "notification",
            vec![field("phone", "13800138000")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert_eq!(err.code(), Some("unknown_caller"));
}

#[tokio::test]
async fn http2_and_http1_both_work() {
    let v = TestVault::start().await;
    for h2 in [true, false] {
        let c = v.builder("app").http2(h2).build().unwrap();
        let r = c
            .raw(
                http::Method::POST,
                "/v1/tokenize",
                Some(
                    serde_json::to_vec(&tok_req(
                        "s1",
                        "notification",
                        vec![field("phone", "13800138000")],
                    ))
                    .unwrap(),
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let expected = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        if h2 {
            assert_eq!(r.version, expected);
        }
    }
}

#[tokio::test]
async fn ops_endpoints() {
    let v = TestVault::start().await;
    assert_eq!(v.ops_get("/healthz").await.0, 200);
    assert_eq!(v.ops_get("/readyz").await.0, 200);
    assert_eq!(v.ops_get("/nope").await.0, 404);
    let (status, body) = v.ops_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("vault_audit_appends_total"), "{body}");
    // The Prometheus text format by default; OpenMetrics when asked for.
    let head = |accept: &'static str| {
        let addr = v.ops;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!(
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf).to_lowercase()
        }
    };
    let plain = head("").await;
    assert!(
        plain.contains("content-type: text/plain; version=0.0.4"),
        "{plain}"
    );
    assert!(plain.contains("# type vault_audit_appends_total counter"));
    assert!(!plain.contains("# eof"));
    let open =
        head("Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n").await;
    assert!(
        open.contains("content-type: application/openmetrics-text"),
        "{open}"
    );
    assert!(open.contains("# eof"));
    v.running().vault.keys.seal();
    assert_eq!(v.ops_get("/readyz").await.0, 503);
    assert_eq!(v.ops_get("/healthz").await.0, 200);
    let err = v
        .client("app")
        .tokenize(&tok_req(
            "s1",
            "notification",
            vec![field("phone", "13800138000")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("sealed"));
    assert_eq!(err.status(), Some(503));
}

#[tokio::test]
async fn metrics_count_what_was_sent_and_hold_no_values() {
    let v = TestVault::start().await;
    let c = v.client("app");
    let t = tokenize_one(&c, "acct-m", "notification", "phone", "13800138000").await;
    tokenize_one(&c, "acct-m", "notification", "email", "chen@example.com").await;
    c.detokenize(&detok_req("notification", &[&t, &t]))
        .await
        .unwrap();
    let (_, body) = v.ops_get("/metrics").await;
    assert!(
        body.contains("vault_tokenize_fields_total{class=\"phone\"} 1"),
        "{body}"
    );
    assert!(body.contains("vault_tokenize_fields_total{class=\"email\"} 1"));
    assert!(body
        .contains("vault_release_outcomes_total{purpose=\"notification\",outcome=\"released\"} 2"));
    assert!(body.contains("vault_http_requests_total{route=\"tokenize\",status=\"2xx\"} 2"));
    assert!(body.contains("vault_http_requests_total{route=\"detokenize\",status=\"2xx\"} 1"));
    assert!(body.contains("vault_audit_appends_total 4"), "{body}");
    for secret in ["13800138000", "chen@example.com", "acct-m", t.as_str()] {
        assert!(!body.contains(secret), "metrics leak {secret}");
    }
}
