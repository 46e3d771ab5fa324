//! The mTLS HTTP client: one pooled keep-alive connection pool shared by every
//! clone, each request bounded by a timeout and retried only where the
//! [`retry`] rule says it is safe. Building it, TLS and ALPN included, is
//! [`ClientBuilder`]'s (in `client/builder.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::is_tls_failure;
use crate::retry::{self, Outcome};
use crate::wire::{
    Approval, ApprovalRequest, AuditResponse, ConsentState, DeidentifyRequest, DeidentifyResponse,
    DetokenizeRequest, DetokenizeResponse, ErrorBody, KeysConfigRequest, KeysStatus,
    RecordsRequest, RecordsResponse, ReidentifyRequest, ReidentifyResponse, RewrapStatus,
    TokenizeRequest, TokenizeResponse, UnsealRequest,
};
use crate::Error;

mod builder;
pub use builder::ClientBuilder;

/// Answers larger than this are refused rather than buffered.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

const USER_AGENT_VALUE: &str = concat!("vault-sdk/", env!("CARGO_PKG_VERSION"));

type HyperClient = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of the vault API. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HyperClient,
    base: String,
    timeout: Duration,
    retries: u32,
    http2: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.base)
            .field("timeout", &self.inner.timeout)
            .field("retries", &self.inner.retries)
            .field("http2", &self.inner.http2)
            .finish_non_exhaustive()
    }
}

/// An answer as it came, whatever its status.
pub struct RawResponse {
    pub status: u16,
    pub body: Bytes,
    pub version: http::Version,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body may hold released values.
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("version", &self.version)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// The body may carry released plaintext (a detokenize, an export): it is
/// zeroed when the answer is dropped, if no copy of the handle lives on.
impl Drop for RawResponse {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.body));
    }
}

/// Zeroes `bytes` in place when this is the only handle to them.
fn wipe(bytes: Bytes) {
    if let Ok(mut b) = bytes.try_into_mut() {
        zeroize::Zeroize::zeroize(&mut b[..]);
    }
}

impl RawResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body parsed as JSON, whatever the status.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::decode(&e))
    }

    /// The body parsed as `T` on a 2xx answer, else the [`Error::Api`] it carries.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, Error> {
        if self.is_success() {
            self.json()
        } else {
            Err(Error::from_answer(self.status, &self.body))
        }
    }

    /// The error code of an error answer, when it has the error shape.
    fn error_code(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|b| b.error.code)
    }
}

impl Client {
    /// `POST /v1/tokenize`.
    pub async fn tokenize(&self, req: &TokenizeRequest) -> Result<TokenizeResponse, Error> {
        self.post_json("/v1/tokenize", req).await
    }

    /// `POST /v1/detokenize`.
    pub async fn detokenize(&self, req: &DetokenizeRequest) -> Result<DetokenizeResponse, Error> {
        self.post_json("/v1/detokenize", req).await
    }

    /// `POST /v1/deidentify`: find the PII in a text and tokenize, mask or
    /// redact it.
    pub async fn deidentify(&self, req: &DeidentifyRequest) -> Result<DeidentifyResponse, Error> {
        self.post_json("/v1/deidentify", req).await
    }

    /// `POST /v1/reidentify`: put back what the policy releases.
    pub async fn reidentify(&self, req: &ReidentifyRequest) -> Result<ReidentifyResponse, Error> {
        self.post_json("/v1/reidentify", req).await
    }

    /// `POST /v1/records`: tokenize the PII leaves of a JSON document.
    pub async fn records(&self, req: &RecordsRequest) -> Result<RecordsResponse, Error> {
        self.post_json("/v1/records", req).await
    }

    /// `GET /v1/audit?subject=&since=&limit=`, absent parameters left out.
    pub async fn audit(
        &self,
        subject: Option<&str>,
        since_seq: Option<u64>,
        limit: Option<u32>,
    ) -> Result<AuditResponse, Error> {
        self.get_json(&crate::query::audit_path(subject, since_seq, limit))
            .await
    }

    /// `PUT /v1/subjects/{subject}/consents/{purpose}`: the subject consented
    /// to `purpose` under privacy-policy version `policy_version`.
    pub async fn give_consent(
        &self,
        subject: &str,
        purpose: &str,
        policy_version: &str,
    ) -> Result<ConsentState, Error> {
        let req = crate::wire::ConsentRequest {
            policy_version: policy_version.to_string(),
        };
        self.put_json(
            &subject_path(subject, &format!("/consents/{}", seg(purpose))),
            &req,
        )
        .await
    }

    /// `DELETE /v1/subjects/{subject}/consents/{purpose}`: consent withdrawn.
    pub async fn withdraw_consent(
        &self,
        subject: &str,
        purpose: &str,
    ) -> Result<ConsentState, Error> {
        self.delete_json(&subject_path(
            subject,
            &format!("/consents/{}", seg(purpose)),
        ))
        .await
    }

    /// `GET /v1/subjects/{subject}/consents/{purpose}`: state and history.
    pub async fn consent(&self, subject: &str, purpose: &str) -> Result<ConsentState, Error> {
        self.get_json(&subject_path(
            subject,
            &format!("/consents/{}", seg(purpose)),
        ))
        .await
    }

    /// `GET /v1/subjects/{subject}?purpose=data_subject_request`: every live
    /// value of the subject, in full (the right to view and copy).
    pub async fn export_subject(&self, subject: &str) -> Result<crate::wire::SubjectExport, Error> {
        self.get_json(&subject_path(subject, "?purpose=data_subject_request"))
            .await
    }

    /// `GET /v1/subjects/{subject}/access-log`: every release of the
    /// subject's data.
    pub async fn access_log(&self, subject: &str) -> Result<crate::wire::AccessLog, Error> {
        self.get_json(&subject_path(subject, "/access-log")).await
    }

    /// The access log's entries older than event `before` (an answer's
    /// `next_before`): the next page back.
    pub async fn access_log_before(
        &self,
        subject: &str,
        before: u64,
    ) -> Result<crate::wire::AccessLog, Error> {
        let path = format!("{}?before={before}", subject_path(subject, "/access-log"));
        self.get_json(&path).await
    }

    /// `DELETE /v1/subjects/{subject}`: erasure, with its receipt.
    pub async fn erase_subject(&self, subject: &str) -> Result<crate::wire::ErasureReceipt, Error> {
        self.delete_json(&subject_path(subject, "")).await
    }

    /// `PUT` (on) or `DELETE` (off) `/v1/subjects/{subject}/hold` (officers).
    pub async fn legal_hold(
        &self,
        subject: &str,
        on: bool,
    ) -> Result<crate::wire::SubjectStatus, Error> {
        let path = subject_path(subject, "/hold");
        if on {
            self.put_json(&path, &serde_json::json!({})).await
        } else {
            self.delete_json(&path).await
        }
    }

    /// `POST /v1/subjects/{subject}/events` `{"event":"account_closed"}`.
    pub async fn account_closed(&self, subject: &str) -> Result<crate::wire::SubjectStatus, Error> {
        let ev = crate::wire::SubjectEvent {
            event: "account_closed".into(),
        };
        self.post_json(&subject_path(subject, "/events"), &ev).await
    }

    /// `PUT /v1/subjects/{subject}/tokens/{token}`: correction; the answer
    /// carries the new value's token.
    pub async fn correct(
        &self,
        subject: &str,
        token: &str,
        value: &str,
    ) -> Result<crate::wire::TokenOut, Error> {
        let req = crate::wire::CorrectionRequest {
            value: value.to_string(),
        };
        self.put_json(
            &subject_path(subject, &format!("/tokens/{}", seg(token))),
            &req,
        )
        .await
    }

    /// `GET /v1/admin/incidents/exposure` (officers): subjects whose data
    /// was released in `[from_ms, to_ms)`, optionally by one caller.
    pub async fn exposure(
        &self,
        from_ms: u64,
        to_ms: u64,
        caller: Option<&str>,
    ) -> Result<crate::wire::ExposureReport, Error> {
        let mut path = format!("/v1/admin/incidents/exposure?from={from_ms}&to={to_ms}");
        if let Some(c) = caller {
            path.push_str(&format!("&caller={}", seg(c)));
        }
        self.get_json(&path).await
    }

    /// `GET /v1/admin/stats/anonymized` (officers): the counters
    /// anonymization kept.
    pub async fn anonymized_stats(&self) -> Result<crate::wire::AnonymizedStats, Error> {
        self.get_json("/v1/admin/stats/anonymized").await
    }

    /// `POST /v1/admin/approvals` (officers): approve one legal-exception
    /// disclosure by another caller.
    pub async fn approve(&self, req: &ApprovalRequest) -> Result<Approval, Error> {
        self.post_json("/v1/admin/approvals", req).await
    }

    /// `DELETE /v1/admin/approvals/{id}` (officers): revokes an approval
    /// not used yet; 409 `conflict` once it was used or revoked.
    pub async fn revoke_approval(&self, id: &str) -> Result<Approval, Error> {
        self.delete_json(&format!("/v1/admin/approvals/{}", seg(id)))
            .await
    }

    /// `GET /v1/admin/keys` (officers): versions, states, values per version,
    /// or the unseal progress while sealed.
    pub async fn keys_status(&self) -> Result<KeysStatus, Error> {
        self.get_json("/v1/admin/keys").await
    }

    /// `POST /v1/admin/keys/rotate` (officers). Not retried after it may
    /// have been sent: a second rotation is a real one.
    pub async fn rotate_keys(&self) -> Result<KeysStatus, Error> {
        self.post_json("/v1/admin/keys/rotate", &serde_json::json!({}))
            .await
    }

    /// `POST /v1/admin/keys/config` (officers): the oldest key version that
    /// may still decrypt.
    pub async fn set_min_decryption_version(&self, version: u32) -> Result<KeysStatus, Error> {
        let req = KeysConfigRequest {
            min_decryption_version: version,
        };
        self.post_json("/v1/admin/keys/config", &req).await
    }

    /// `POST /v1/admin/keys/retire` (officers): deletes a key version no
    /// stored value uses (409 `key_in_use` otherwise).
    pub async fn retire_key_version(&self, version: u32) -> Result<KeysStatus, Error> {
        let req = crate::wire::RetireRequest { version };
        self.post_json("/v1/admin/keys/retire", &req).await
    }

    /// `POST /v1/admin/keys/rewrap` (officers): starts re-encryption under
    /// the active version.
    pub async fn start_rewrap(&self) -> Result<RewrapStatus, Error> {
        self.post_json("/v1/admin/keys/rewrap", &serde_json::json!({}))
            .await
    }

    /// `GET /v1/admin/keys/rewrap` (officers).
    pub async fn rewrap_status(&self) -> Result<RewrapStatus, Error> {
        self.get_json("/v1/admin/keys/rewrap").await
    }

    /// `POST /v1/admin/seal` (officers).
    pub async fn seal(&self) -> Result<KeysStatus, Error> {
        self.post_json("/v1/admin/seal", &serde_json::json!({}))
            .await
    }

    /// `POST /v1/admin/unseal` (officers) with one key share.
    pub async fn unseal(&self, share: &str) -> Result<KeysStatus, Error> {
        let req = UnsealRequest {
            share: share.to_string(),
            resume: false,
        };
        self.post_json("/v1/admin/unseal", &req).await
    }

    /// Asks to unseal a vault an officer sealed whose root key comes from a
    /// file or a command: once two officers have asked, the vault reads
    /// its root key again and unseals (officers).
    pub async fn resume_unseal(&self) -> Result<KeysStatus, Error> {
        let req = UnsealRequest {
            share: String::new(),
            resume: true,
        };
        self.post_json("/v1/admin/unseal", &req).await
    }

    /// Sends any method to any path (with its query) and returns the answer as
    /// it came: a non-2xx status is not an error here. `body`, when given, is
    /// sent as `application/json`. Retries follow [`crate::retry`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, Error> {
        self.execute(method, path, body.map(Bytes::from)).await
    }

    /// `POST` a JSON body, parse a JSON answer; non-2xx becomes [`Error::Api`].
    pub async fn post_json<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Error> {
        self.send_json(Method::POST, path, Some(encode(req)?)).await
    }

    /// `PUT` a JSON body, parse a JSON answer; non-2xx becomes [`Error::Api`].
    pub async fn put_json<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Error> {
        self.send_json(Method::PUT, path, Some(encode(req)?)).await
    }

    /// `GET`, parse a JSON answer; non-2xx becomes [`Error::Api`].
    pub async fn get_json<Resp: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<Resp, Error> {
        self.send_json(Method::GET, path_and_query, None).await
    }

    /// `DELETE`, parse a JSON answer; non-2xx becomes [`Error::Api`].
    pub async fn delete_json<Resp: DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<Resp, Error> {
        self.send_json(Method::DELETE, path_and_query, None).await
    }

    async fn send_json<Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Resp, Error> {
        self.execute(method, path, body).await?.into_result()
    }

    async fn execute(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<RawResponse, Error> {
        let uri = self.uri(path)?;
        let kind = retry::idempotency(&method, path);
        let mut attempt: u32 = 0;
        loop {
            let result = self
                .attempt(method.clone(), uri.clone(), body.clone())
                .await;
            let retry = attempt < self.inner.retries
                && match &result {
                    Ok(resp) => {
                        let code = resp.error_code();
                        retry::should_retry(
                            kind,
                            Outcome::Answered {
                                status: resp.status,
                                code: code.as_deref(),
                            },
                        )
                    }
                    Err((outcome, _)) => retry::should_retry(kind, *outcome),
                };
            if !retry {
                // The request body (values to tokenize, a share) is not
                // needed any more.
                if let Some(b) = body {
                    wipe(b);
                }
                return result.map_err(|(_, e)| e);
            }
            tokio::time::sleep(retry::backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One try, bounded by the timeout; a failure says how far it got.
    async fn attempt(
        &self,
        method: Method,
        uri: Uri,
        body: Option<Bytes>,
    ) -> Result<RawResponse, (Outcome<'static>, Error)> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default())).map_err(|e| {
            (
                Outcome::Final,
                Error::Config(format!("invalid request: {e}")),
            )
        })?;
        let exchange = async {
            let resp = self.inner.http.request(req).await.map_err(|e| {
                let tls = is_tls_failure(&e);
                let outcome = if e.is_connect() {
                    Outcome::ConnectFailed { tls }
                } else if tls {
                    // A TLS alert after the handshake (e.g. the server
                    // refused our certificate): another try fares the same.
                    Outcome::Final
                } else {
                    Outcome::Broken
                };
                (outcome, Error::transport(&e))
            })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        (
                            Outcome::Final,
                            Error::Decode(format!("answer larger than {MAX_RESPONSE_BYTES} bytes")),
                        )
                    } else {
                        (Outcome::Broken, Error::transport(&*e))
                    }
                })?
                .to_bytes();
            Ok(RawResponse {
                status: parts.status.as_u16(),
                body,
                version: parts.version,
            })
        };
        match tokio::time::timeout(self.inner.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err((Outcome::TimedOut, Error::Timeout)),
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, Error> {
        // The path is not quoted in the error: it may carry a subject id.
        if !path_and_query.starts_with('/') {
            return Err(Error::Config("request path must start with '/'".into()));
        }
        format!("{}{path_and_query}", self.inner.base)
            .parse()
            .map_err(|_| Error::Config("invalid request path".into()))
    }
}

/// The JSON of a request body. serde_json's message is not kept: it could
/// name a value.
fn encode<T: Serialize + ?Sized>(req: &T) -> Result<Bytes, Error> {
    serde_json::to_vec(req)
        .map(Bytes::from)
        .map_err(|_| Error::Config("request body could not be encoded as JSON".into()))
}

#[cfg(test)]
mod tests;

/// One path segment or query value, percent-encoded: a subject, purpose,
/// token or caller is data, and must not become a `/`, `?`, `#` or `&` of
/// the request (`erase_subject("a/consents/p")` would otherwise withdraw a
/// consent instead of erasing anything).
fn seg(s: &str) -> String {
    crate::query::percent_encode(s)
}

/// `/v1/subjects/{subject}` then `tail` (already encoded).
fn subject_path(subject: &str, tail: &str) -> String {
    format!("/v1/subjects/{}{tail}", seg(subject))
}
