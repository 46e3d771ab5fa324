//! Builder checks, and the client against a scripted HTTP/1.1 server behind a
//! real rustls handshake (plain threads, so no extra dependency): mTLS, ALPN in
//! both modes, error mapping, retries, timeouts and connection reuse.
//! The fixtures in `src/testdata/` are a throw-away test CA (100-year validity)
//! with a server certificate for `localhost`/`127.0.0.1` and a client `app`
//! whose key is SEC1; they protect nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::*;
use crate::wire::{Field, Reveal, Status};

const CA: &str = include_str!("../testdata/ca.pem");
const SERVER_PEM: &str = include_str!("../testdata/server.pem");
const SERVER_KEY: &str = include_str!("../testdata/server.key");
const APP_PEM: &str = include_str!("../testdata/app.pem");
const APP_KEY: &str = include_str!("../testdata/app.key");

fn builder(endpoint: &str) -> ClientBuilder {
    ClientBuilder::new(endpoint)
        .ca_pem(CA)
        .identity_pem(APP_PEM, APP_KEY)
}

fn config_err(r: Result<Client, Error>) -> String {
    match r {
        Err(Error::Config(m)) => m,
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(_) => panic!("expected a config error, got a client"),
    }
}

// ---- builder -------------------------------------------------------------

#[test]
fn builds_without_a_runtime_for_names_and_ips() {
    for ep in [
        "https://127.0.0.1:8443",
        "https://localhost:8443/",
        "https://[::1]:8443",
    ] {
        builder(ep).build().unwrap();
    }
    builder("https://localhost:8443")
        .http2(true)
        .retries(0)
        .timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap();
    ClientBuilder::new("https://localhost:8443")
        .ca_pem(CA)
        .no_identity()
        .build()
        .unwrap();
}

#[test]
fn endpoint_must_be_a_bare_https_url() {
    for ep in [
        "http://127.0.0.1:8443",
        "127.0.0.1:8443",
        "https://127.0.0.1:8443/v1",
        "https://127.0.0.1:8443/?a=b",
        "https://user:pw@127.0.0.1:8443",
        "not a url",
    ] {
        config_err(builder(ep).build());
    }
}

#[test]
fn ca_and_identity_are_required() {
    let m = config_err(
        ClientBuilder::new("https://localhost:1")
            .identity_pem(APP_PEM, APP_KEY)
            .build(),
    );
    assert!(m.contains("no CA"), "{m}");
    let m = config_err(ClientBuilder::new("https://localhost:1").ca_pem(CA).build());
    assert!(m.contains("no client identity"), "{m}");
}

#[test]
fn bad_pem_is_a_config_error() {
    let ep = "https://localhost:1";
    let m = config_err(
        ClientBuilder::new(ep)
            .ca_pem("not a pem")
            .no_identity()
            .build(),
    );
    assert!(m.contains("no certificate found in CA"), "{m}");

    let m = config_err(
        ClientBuilder::new(ep)
            .ca_pem(CA)
            .identity_pem("", APP_KEY)
            .build(),
    );
    assert!(
        m.contains("no certificate found in client certificate"),
        "{m}"
    );

    let m = config_err(
        ClientBuilder::new(ep)
            .ca_pem(CA)
            .identity_pem(APP_PEM, APP_PEM)
            .build(),
    );
    assert!(m.contains("no private key"), "{m}");

    // A certificate with someone else's key.
    let m = config_err(
        ClientBuilder::new(ep)
            .ca_pem(CA)
            .identity_pem(APP_PEM, SERVER_KEY)
            .build(),
    );
    assert!(m.contains("client identity rejected"), "{m}");

    // A truncated key: its bytes must not come back in the message.
    let broken = APP_KEY.replace("-----END EC PRIVATE KEY-----", "");
    let m = config_err(
        ClientBuilder::new(ep)
            .ca_pem(CA)
            .identity_pem(APP_PEM, broken.clone())
            .build(),
    );
    let body_line = APP_KEY.lines().nth(1).unwrap();
    assert!(!m.contains(body_line), "{m}");
}

#[test]
fn several_cas_can_be_added() {
    // The second CA lacks a trailing newline in between: still parsed.
    builder("https://localhost:1")
        .ca_pem(CA.trim_end())
        .ca_pem(CA.trim_end())
        .build()
        .unwrap();
}

#[test]
fn missing_files_name_the_path() {
    let missing = std::env::temp_dir().join("vault-sdk-test-does-not-exist.pem");
    let m = match ClientBuilder::new("https://localhost:1").ca_file(&missing) {
        Err(Error::Config(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(m.contains("vault-sdk-test-does-not-exist.pem"), "{m}");
    let m = match ClientBuilder::new("https://localhost:1").identity_files(&missing, &missing) {
        Err(Error::Config(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(m.contains("client certificate file"), "{m}");
}

#[test]
fn files_are_read() {
    let dir = std::env::temp_dir().join(format!("vault-sdk-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("app.pem"), dir.join("app.key"));
    std::fs::write(&ca, CA).unwrap();
    std::fs::write(&cert, APP_PEM).unwrap();
    std::fs::write(&key, APP_KEY).unwrap();
    let built = ClientBuilder::new("https://localhost:1")
        .ca_file(&ca)
        .and_then(|b| b.identity_files(&cert, &key))
        .and_then(ClientBuilder::build);
    std::fs::remove_dir_all(&dir).unwrap();
    built.unwrap();
}

#[test]
fn debug_never_shows_the_key() {
    let b = builder("https://localhost:1");
    let shown = format!("{b:?} {b:#?}");
    assert!(shown.contains("[REDACTED]"), "{shown}");
    for line in APP_KEY.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!shown.contains(line), "{shown}");
    }
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let c = b.build().unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("https://localhost:1"), "{shown}");
    assert!(!shown.contains("PRIVATE"), "{shown}");
}

#[test]
fn raw_response_debug_hides_the_body() {
    let r = RawResponse {
        status: 200,
        body: Bytes::from_static(b"{\"value\":\"13800138000\"}"),
        version: http::Version::HTTP_11,
    };
    let shown = format!("{r:?}");
    assert!(!shown.contains("13800138000"), "{shown}");
    assert!(shown.contains("body_bytes"), "{shown}");
}

// ---- a scripted TLS server -------------------------------------------------

#[derive(Clone)]
enum Reply {
    Json(u16, &'static str),
    /// Read the request, then say nothing for a long time.
    Hang,
}

#[derive(Default)]
struct Log {
    connections: usize,
    alpn: Vec<Option<Vec<u8>>>,
    client_cert: Vec<bool>,
    handshake_failures: usize,
    /// Request head (request line and headers) and body.
    requests: Vec<(String, Vec<u8>)>,
}

struct TestServer {
    port: u16,
    log: Arc<Mutex<Log>>,
}

impl TestServer {
    /// Requires a client certificate from the test CA; offers `alpn`; answers
    /// the n-th request with `replies[n]`, the last reply repeating.
    fn start(alpn: &[&[u8]], replies: Vec<Reply>) -> TestServer {
        let cfg = server_config(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let next = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(replies);
        let shared = log.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                shared.lock().unwrap().connections += 1;
                let (cfg, log, next, replies) =
                    (cfg.clone(), shared.clone(), next.clone(), replies.clone());
                std::thread::spawn(move || serve(tcp, cfg, &log, &next, &replies));
            }
        });
        TestServer { port, log }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// The log once `done` holds: the server thread may still be catching up
    /// with what the client already saw.
    fn log_when(&self, done: impl Fn(&Log) -> bool) -> std::sync::MutexGuard<'_, Log> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = self.log();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            drop(log);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn server_config(alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(crate::tls::roots(CA.as_bytes()).unwrap());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .unwrap();
    let certs = rustls_pemfile::certs(&mut SERVER_PEM.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut SERVER_KEY.as_bytes())
        .unwrap()
        .unwrap();
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn serve(
    tcp: TcpStream,
    cfg: Arc<ServerConfig>,
    log: &Mutex<Log>,
    next: &AtomicUsize,
    replies: &[Reply],
) {
    let conn = ServerConnection::new(cfg).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            log.lock().unwrap().handshake_failures += 1;
            return;
        }
    }
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    {
        let mut l = log.lock().unwrap();
        l.alpn.push(alpn.clone());
        l.client_cert
            .push(tls.conn.peer_certificates().is_some_and(|c| !c.is_empty()));
    }
    if alpn.as_deref() == Some(b"h2") {
        return; // This server only speaks HTTP/1.1.
    }
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut tls, &mut buf) {
        log.lock().unwrap().requests.push((head, body));
        let n = next.fetch_add(1, Ordering::SeqCst);
        match replies.get(n).or(replies.last()).cloned() {
            Some(Reply::Json(status, body)) => {
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if tls
                    .write_all(answer.as_bytes())
                    .and_then(|()| tls.flush())
                    .is_err()
                {
                    return;
                }
            }
            Some(Reply::Hang) | None => {
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
        }
    }
}

fn read_request(tls: &mut impl Read, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).into_owned();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            if buf.len() >= p + 4 + len {
                let body = buf[p + 4..p + 4 + len].to_vec();
                buf.drain(..p + 4 + len);
                return Some((head, body));
            }
        }
        let mut chunk = [0u8; 4096];
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const HTTP1: &[&[u8]] = &[b"http/1.1"];

fn tokenize_request() -> TokenizeRequest {
    TokenizeRequest {
        subject: "acct-1001".into(),
        purpose: "identity_verification".into(),
        retention: None,
        fields: vec![Field {
            class: "phone".into(),
            value: "+86 138 0013 8000".into(),
        }],
    }
}

// ---- against the server -----------------------------------------------------

#[tokio::test]
async fn tokenize_over_mtls_http1() {
    let srv = TestServer::start(
        HTTP1,
        vec![Reply::Json(
            200,
            r#"{"tokens":[{"class":"phone","token":"tok_1"}]}"#,
        )],
    );
    let client = builder(&srv.endpoint()).build().unwrap();
    let out = client.tokenize(&tokenize_request()).await.unwrap();
    assert_eq!(out.tokens.len(), 1);
    assert_eq!(out.tokens[0].token, "tok_1");

    let log = srv.log();
    assert_eq!(log.client_cert, [true]);
    assert_eq!(log.alpn, [Some(b"http/1.1".to_vec())]);
    let (head, body) = &log.requests[0];
    assert!(head.starts_with("POST /v1/tokenize HTTP/1.1\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: application/json"), "{head}");
    assert!(lower.contains("user-agent: vault-sdk/"), "{head}");
    let sent: TokenizeRequest = serde_json::from_slice(body).unwrap();
    assert_eq!(sent, tokenize_request());
}

#[tokio::test]
async fn verifies_the_server_by_dns_name_too() {
    let srv = TestServer::start(HTTP1, vec![Reply::Json(200, r#"{"events":[]}"#)]);
    let client = builder(&format!("https://localhost:{}", srv.port))
        .build()
        .unwrap();
    let out = client.audit(None, None, None).await.unwrap();
    assert!(out.events.is_empty());
}

#[tokio::test]
async fn clones_share_one_keep_alive_connection() {
    let srv = TestServer::start(HTTP1, vec![Reply::Json(200, r#"{"events":[]}"#)]);
    let a = builder(&srv.endpoint()).build().unwrap();
    let b = a.clone();
    a.audit(Some("acct 1"), Some(3), None).await.unwrap();
    b.audit(None, None, Some(5)).await.unwrap();
    let log = srv.log();
    assert_eq!(log.connections, 1);
    assert!(log.requests[0]
        .0
        .starts_with("GET /v1/audit?subject=acct%201&since=3 HTTP/1.1"));
    assert!(log.requests[1]
        .0
        .starts_with("GET /v1/audit?limit=5 HTTP/1.1"));
}

#[tokio::test]
async fn error_answers_become_api_errors_and_raw_passes_them_through() {
    let srv = TestServer::start(
        HTTP1,
        vec![
            Reply::Json(
                422,
                r#"{"error":{"code":"invalid_value","message":"field 0 is not a valid phone","field":0}}"#,
            ),
            Reply::Json(
                400,
                r#"{"error":{"code":"purpose_required","message":"purpose is required"}}"#,
            ),
            Reply::Json(500, "oops"),
        ],
    );
    let client = builder(&srv.endpoint()).build().unwrap();
    let e = client.tokenize(&tokenize_request()).await.unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Api {
                status: 422,
                field: Some(0),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), Some("invalid_value"));
    assert!(!e.to_string().contains("138"), "{e}");

    let raw = client
        .raw(
            Method::POST,
            "/v1/detokenize",
            Some(br#"{"tokens":[]}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(raw.status, 400);
    assert_eq!(raw.version, http::Version::HTTP_11);
    assert_eq!(
        raw.into_result::<DetokenizeResponse>().unwrap_err().code(),
        Some("purpose_required")
    );

    let e = client
        .detokenize(&DetokenizeRequest {
            purpose: Some("notification".into()),
            tokens: vec!["t".into()],
            reveal: Reveal::Full,
            legal_basis: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("http_500"));
    assert_eq!(e.status(), Some(500));
}

#[tokio::test]
async fn success_with_the_wrong_shape_is_a_decode_error() {
    let srv = TestServer::start(HTTP1, vec![Reply::Json(200, r#"{"values":[{"token":1}]}"#)]);
    let client = builder(&srv.endpoint()).build().unwrap();
    let e = client
        .detokenize(&DetokenizeRequest {
            purpose: Some("notification".into()),
            tokens: vec!["t".into()],
            reveal: Reveal::Masked,
            legal_basis: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Decode(_)), "{e:?}");
}

const OVERLOADED: Reply = Reply::Json(
    503,
    r#"{"error":{"code":"overloaded","message":"try again"}}"#,
);

#[tokio::test]
async fn overloaded_is_retried_for_idempotent_requests() {
    let ok = Reply::Json(
        200,
        r#"{"values":[{"token":"t","status":"ok","value":"+8613800138000"}]}"#,
    );
    let srv = TestServer::start(HTTP1, vec![OVERLOADED, OVERLOADED, ok]);
    let client = builder(&srv.endpoint()).build().unwrap();
    let out = client
        .detokenize(&DetokenizeRequest {
            purpose: Some("notification".into()),
            tokens: vec!["t".into()],
            reveal: Reveal::Full,
            legal_basis: None,
        })
        .await
        .unwrap();
    assert_eq!(out.values[0].status, Status::Ok);
    assert_eq!(srv.log().requests.len(), 3);
}

#[tokio::test]
async fn retries_stop_at_the_limit() {
    let srv = TestServer::start(HTTP1, vec![OVERLOADED]);
    let client = builder(&srv.endpoint()).retries(1).build().unwrap();
    let e = client.tokenize(&tokenize_request()).await.unwrap_err();
    assert_eq!(e.code(), Some("overloaded"));
    assert_eq!(e.status(), Some(503));
    assert_eq!(srv.log().requests.len(), 2);
}

#[tokio::test]
async fn overloaded_is_not_retried_for_other_writes() {
    let srv = TestServer::start(HTTP1, vec![OVERLOADED]);
    let client = builder(&srv.endpoint()).build().unwrap();
    let raw = client
        .raw(Method::POST, "/v1/admin/keys/rotate", None)
        .await
        .unwrap();
    assert_eq!(raw.status, 503);
    assert_eq!(srv.log().requests.len(), 1);
}

#[tokio::test]
async fn timeouts_are_retried_only_for_get() {
    let srv = TestServer::start(HTTP1, vec![Reply::Hang]);
    let client = builder(&srv.endpoint())
        .timeout(Duration::from_millis(300))
        .retries(1)
        .build()
        .unwrap();
    let e = client.tokenize(&tokenize_request()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert_eq!(srv.log().requests.len(), 1);

    let e = client.audit(None, None, None).await.unwrap_err();
    assert!(matches!(e, Error::Timeout), "{e:?}");
    assert_eq!(srv.log().requests.len(), 3);
}

#[tokio::test]
async fn refused_connections_are_retried_with_backoff() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = builder(&format!("https://127.0.0.1:{port}"))
        .build()
        .unwrap();
    let start = Instant::now();
    let e = client
        .raw(Method::POST, "/v1/admin/seal", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    // Two retries: 50 ms + 100 ms of back-off.
    assert!(
        start.elapsed() >= Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert!(
        e.to_string().to_ascii_lowercase().contains("refused"),
        "{e}"
    );
}

#[tokio::test]
async fn default_alpn_offers_h2_first() {
    let srv = TestServer::start(&[b"h2"], vec![]);
    let client = builder(&srv.endpoint()).retries(0).build().unwrap();
    // The test server hangs up on h2: only the negotiation matters here.
    let _ = client.audit(None, None, None).await;
    assert_eq!(
        srv.log_when(|l| !l.alpn.is_empty()).alpn,
        [Some(b"h2".to_vec())]
    );
}

#[tokio::test]
async fn http1_mode_offers_no_h2_and_speaks_http1() {
    let srv = TestServer::start(
        &[b"h2", b"http/1.1"],
        vec![Reply::Json(200, r#"{"events":[]}"#)],
    );
    let client = builder(&srv.endpoint()).http1(true).build().unwrap();
    client.audit(None, None, None).await.unwrap();
    let log = srv.log();
    // No ALPN at all: a TLS client without it speaks HTTP/1.1, so a server
    // that prefers h2 cannot pick it.
    assert_eq!(log.alpn, [None]);
    assert!(
        log.requests[0].0.starts_with("GET /v1/audit HTTP/1.1\r\n"),
        "{}",
        log.requests[0].0
    );
}

#[test]
fn http1_and_http2_together_are_refused() {
    let e = builder("https://127.0.0.1:1")
        .http1(true)
        .http2(true)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[tokio::test]
async fn http2_mode_offers_only_h2() {
    let srv = TestServer::start(HTTP1, vec![Reply::Json(200, r#"{"events":[]}"#)]);
    let client = builder(&srv.endpoint()).http2(true).build().unwrap();
    let e = client.audit(None, None, None).await.unwrap_err();
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
    let log = srv.log_when(|l| l.handshake_failures > 0);
    assert!(log.requests.is_empty());
    // A TLS refusal is not retried.
    assert_eq!(log.connections, 1);
    assert_eq!(log.handshake_failures, 1);
}

#[tokio::test]
async fn server_refuses_a_client_without_certificate() {
    let srv = TestServer::start(HTTP1, vec![Reply::Json(200, r#"{"events":[]}"#)]);
    let client = ClientBuilder::new(srv.endpoint())
        .ca_pem(CA)
        .no_identity()
        .build()
        .unwrap();
    let e = client.audit(None, None, None).await.unwrap_err();
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    let log = srv.log_when(|l| l.handshake_failures > 0);
    assert!(log.requests.is_empty());
    assert_eq!(log.handshake_failures, 1);
    // The alert arrives after the client's side of the handshake: still not retried.
    assert_eq!(log.connections, 1);
}

#[tokio::test]
async fn paths_must_be_absolute() {
    let client = builder("https://127.0.0.1:1").build().unwrap();
    let e = client.raw(Method::GET, "v1/audit", None).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let e = client.raw(Method::GET, "/v1/a b", None).await.unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}

#[test]
fn subjects_tokens_and_purposes_stay_inside_their_path_segment() {
    assert_eq!(
        subject_path("acct-1001", "/hold"),
        "/v1/subjects/acct-1001/hold"
    );
    // A subject that would reach another resource, or cut the path, is one
    // encoded segment; the server refuses it as a subject.
    for (subject, want) in [
        ("a/consents/p", "/v1/subjects/a%2Fconsents%2Fp"),
        ("a#x", "/v1/subjects/a%23x"),
        ("a?purpose=x", "/v1/subjects/a%3Fpurpose%3Dx"),
        ("../admin", "/v1/subjects/..%2Fadmin"),
        ("a:b", "/v1/subjects/a%3Ab"),
    ] {
        assert_eq!(subject_path(subject, ""), want);
    }
    assert_eq!(seg("x&caller=y"), "x%26caller%3Dy");
    assert_eq!(seg("13812345678"), "13812345678");
}
