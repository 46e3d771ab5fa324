//! When a failed attempt may be sent again. The invariant: a retry never makes
//! the server do a write twice that the caller asked for once, unless that
//! write is idempotent by design.
//!
//! The rule, as pure functions so it can be tested without a server:
//!
//! - A connection that could not be set up (TCP connect failure or timeout,
//!   I/O failure during the handshake) is retried for every request: the
//!   request never left. A TLS refusal (bad certificate, no common ALPN
//!   protocol) is not retried: another try would be refused the same way.
//! - A `503` answer with code `overloaded` is retried for safe requests
//!   (`GET`, `HEAD`, `OPTIONS`) and for the `POST`s that are idempotent by
//!   design: `/v1/detokenize` and `/v1/reidentify` are reads, `/v1/tokenize`,
//!   `/v1/deidentify` and `/v1/records` give the same token for the same value, and
//!   `/v1/admin/seal` seals a sealed vault to no further effect. A retried read
//!   may leave one more audit event; that is the truth about what was asked.
//! - A timeout, or a connection broken after the request may have been sent,
//!   is retried only for safe requests: the server may have done the work.
//! - Nothing else is retried: not other statuses, not `sealed`, not a TLS
//!   alert after the handshake (the server refused the certificate), not an
//!   answer over the size limit.
//!
//! Back-off doubles from 50 ms, capped at 2 s.

use std::time::Duration;

/// How safe it is to send a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// No effect on the server beyond an audit event.
    Safe,
    /// Sending it twice has the effect of sending it once, but it is not a
    /// safe method: retried on `overloaded`, not on timeouts.
    Idempotent,
    /// Anything else.
    Unsafe,
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome<'a> {
    /// The connection could not be set up; `tls` when the TLS layer refused.
    ConnectFailed { tls: bool },
    /// No answer in time: the request may have been processed.
    TimedOut,
    /// The connection failed after the request may have been sent.
    Broken,
    /// A failure another try would meet again: a request that cannot be
    /// built, a TLS refusal after the handshake, an oversized answer.
    Final,
    /// An answer, with the error code when it carried one.
    Answered { status: u16, code: Option<&'a str> },
}

/// The paths whose `POST` is idempotent by design (see the module doc).
const IDEMPOTENT_POSTS: [&str; 6] = [
    "/v1/admin/seal",
    "/v1/tokenize",
    "/v1/detokenize",
    "/v1/deidentify",
    "/v1/reidentify",
    "/v1/records",
];

pub(crate) fn idempotency(method: &http::Method, path_and_query: &str) -> Idempotency {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    if matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        Idempotency::Safe
    } else if *method == http::Method::POST && IDEMPOTENT_POSTS.contains(&path) {
        Idempotency::Idempotent
    } else {
        Idempotency::Unsafe
    }
}

pub(crate) fn should_retry(kind: Idempotency, outcome: Outcome<'_>) -> bool {
    match outcome {
        Outcome::ConnectFailed { tls } => !tls,
        Outcome::TimedOut | Outcome::Broken => kind == Idempotency::Safe,
        Outcome::Final => false,
        Outcome::Answered {
            status: 503,
            code: Some("overloaded"),
        } => kind != Idempotency::Unsafe,
        Outcome::Answered { .. } => false,
    }
}

/// The pause before retry number `attempt` (0 for the first retry).
pub(crate) fn backoff(attempt: u32) -> Duration {
    const BASE_MS: u64 = 50;
    const CAP_MS: u64 = 2_000;
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    Duration::from_millis(BASE_MS.saturating_mul(factor).min(CAP_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn idempotency_by_method_and_path() {
        assert_eq!(
            idempotency(&Method::GET, "/v1/audit?limit=5"),
            Idempotency::Safe
        );
        assert_eq!(idempotency(&Method::HEAD, "/x"), Idempotency::Safe);
        for p in [
            "/v1/tokenize",
            "/v1/detokenize",
            "/v1/reidentify",
            "/v1/deidentify?x=1",
        ] {
            assert_eq!(
                idempotency(&Method::POST, p),
                Idempotency::Idempotent,
                "{p}"
            );
        }
        assert_eq!(
            idempotency(&Method::POST, "/v1/admin/seal"),
            Idempotency::Idempotent
        );
        assert_eq!(
            idempotency(&Method::POST, "/v1/admin/keys/rotate"),
            Idempotency::Unsafe
        );
        assert_eq!(
            idempotency(&Method::POST, "/v1/tokenize/x"),
            Idempotency::Unsafe
        );
        assert_eq!(
            idempotency(&Method::PUT, "/v1/tokenize"),
            Idempotency::Unsafe
        );
        assert_eq!(
            idempotency(&Method::DELETE, "/v1/subjects/a"),
            Idempotency::Unsafe
        );
    }

    #[test]
    fn connect_failures_are_retried_for_everything_but_tls_refusals() {
        for k in [
            Idempotency::Safe,
            Idempotency::Idempotent,
            Idempotency::Unsafe,
        ] {
            assert!(should_retry(k, Outcome::ConnectFailed { tls: false }));
            assert!(!should_retry(k, Outcome::ConnectFailed { tls: true }));
            assert!(!should_retry(k, Outcome::Final));
        }
    }

    #[test]
    fn timeouts_and_broken_connections_only_for_safe_requests() {
        for o in [Outcome::TimedOut, Outcome::Broken] {
            assert!(should_retry(Idempotency::Safe, o));
            assert!(!should_retry(Idempotency::Idempotent, o));
            assert!(!should_retry(Idempotency::Unsafe, o));
        }
    }

    #[test]
    fn only_overloaded_503_is_retried_and_only_when_idempotent() {
        let overloaded = Outcome::Answered {
            status: 503,
            code: Some("overloaded"),
        };
        assert!(should_retry(Idempotency::Safe, overloaded));
        assert!(should_retry(Idempotency::Idempotent, overloaded));
        assert!(!should_retry(Idempotency::Unsafe, overloaded));
        for o in [
            Outcome::Answered {
                status: 503,
                code: Some("sealed"),
            },
            Outcome::Answered {
                status: 503,
                code: None,
            },
            Outcome::Answered {
                status: 429,
                code: Some("overloaded"),
            },
            Outcome::Answered {
                status: 500,
                code: None,
            },
            Outcome::Answered {
                status: 200,
                code: None,
            },
        ] {
            assert!(!should_retry(Idempotency::Safe, o), "{o:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(50));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1_600));
        assert_eq!(backoff(6), Duration::from_secs(2));
        assert_eq!(backoff(200), Duration::from_secs(2));
    }
}
