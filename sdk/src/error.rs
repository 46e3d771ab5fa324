//! The SDK's one error type. Its invariant: no variant's `Display` or `Debug`
//! ever holds a request body, a response body or anything else that may be PII.
//! Server messages are passed on because the server promises never to echo a
//! submitted value; everything else is built here from error kinds and
//! positions, never from payload text.

use crate::wire::ErrorBody;

/// Everything a call through [`Client`](crate::Client) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error: its HTTP status, its `code`
    /// (e.g. `invalid_value`, `purpose_required`, `sealed`) and message, and for
    /// `invalid_value` the index of the offending field. When the body was not
    /// the error shape, `code` is `http_<status>`.
    #[error("vault answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<usize>,
    },
    /// Connection, TLS or protocol failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// No complete answer within the configured timeout.
    #[error("request timed out")]
    Timeout,
    /// A success answer whose body is not what the endpoint promises.
    #[error("unexpected response body: {0}")]
    Decode(String),
    /// Bad builder input or request: unreadable PEM, missing key, bad endpoint.
    #[error("configuration error: {0}")]
    Config(String),
}

impl Error {
    /// The server's error code, for [`Error::Api`] only.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, for [`Error::Api`] only.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error an error answer stands for. A body that is not
    /// `{"error":{...}}` becomes `http_<status>` with the status's reason
    /// phrase: the body itself is never copied, it may echo anything.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => Error::Api {
                status,
                code: b.error.code,
                message: b.error.message,
                field: b.error.field,
            },
            Err(_) => Error::Api {
                status,
                code: format!("http_{status}"),
                message: http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("unexpected error answer")
                    .to_owned(),
                field: None,
            },
        }
    }

    /// A JSON decoding failure, described by kind and position only:
    /// serde_json's own message can quote the offending value.
    pub(crate) fn decode(e: &serde_json::Error) -> Error {
        let kind = match e.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "shape",
            serde_json::error::Category::Eof => "truncated",
        };
        Error::Decode(format!(
            "JSON {kind} error at line {} column {}",
            e.line(),
            e.column()
        ))
    }

    /// A transport failure, described by its whole source chain (hyper's
    /// top-level message alone, "client error (Connect)", says too little).
    pub(crate) fn transport(e: &(dyn std::error::Error + 'static)) -> Error {
        let mut parts: Vec<String> = Vec::new();
        for_each_cause(e, &mut |cause| {
            let s = cause.to_string();
            if parts.last() != Some(&s) {
                parts.push(s);
            }
            false
        });
        Error::Transport(parts.join(": "))
    }
}

/// Whether a rustls error (a certificate or handshake refusal, which no retry
/// will fix) is anywhere in the chain.
pub(crate) fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    for_each_cause(e, &mut |cause| cause.is::<rustls::Error>())
}

/// Visits `e` and its causes until `f` says stop; returns whether it did.
/// `io::Error::source` skips the error it wraps, so that one is visited by hand.
fn for_each_cause(
    e: &(dyn std::error::Error + 'static),
    f: &mut dyn FnMut(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut next = Some(e);
    // Bounded: a cyclic chain must not hang the caller.
    for _ in 0..32 {
        let Some(cur) = next else { return false };
        if f(cur) {
            return true;
        }
        next = match cur
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn code_and_status_only_for_api_errors() {
        let e = Error::from_answer(
            422,
            br#"{"error":{"code":"invalid_value","message":"field 1 is not a valid phone","field":1}}"#,
        );
        assert_eq!(e.code(), Some("invalid_value"));
        assert_eq!(e.status(), Some(422));
        assert!(matches!(e, Error::Api { field: Some(1), .. }));
        for e in [
            Error::Transport("x".into()),
            Error::Timeout,
            Error::Decode("x".into()),
            Error::Config("x".into()),
        ] {
            assert_eq!(e.code(), None);
            assert_eq!(e.status(), None);
        }
    }

    #[test]
    fn unknown_error_shape_becomes_http_status_code_without_the_body() {
        let e = Error::from_answer(502, b"<html>350102199003071234</html>");
        assert_eq!(e.code(), Some("http_502"));
        assert_eq!(e.status(), Some(502));
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("Bad Gateway"), "{shown}");
        assert!(!shown.contains("350102199003071234"), "{shown}");
    }

    #[test]
    fn decode_error_never_quotes_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Want {
            n: u64,
        }
        let err = serde_json::from_slice::<Want>(br#"{"n":"13800138000"}"#).unwrap_err();
        assert!(err.to_string().contains("13800138000"), "serde quotes it");
        let e = Error::decode(&err);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("13800138000"), "{shown}");
        assert!(shown.contains("shape"), "{shown}");
    }

    #[test]
    fn transport_message_walks_io_wrappers_and_spots_tls() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert!(is_tls_failure(&outer));
        let msg = Error::transport(&outer).to_string();
        assert!(msg.contains("UnknownIssuer"), "{msg}");

        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_tls_failure(&refused));
        assert_eq!(
            Error::transport(&refused).to_string(),
            "transport error: refused"
        );
    }
}
