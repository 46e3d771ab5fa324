//! Query strings, encoded by hand so no value can break out of its parameter:
//! everything outside the URI unreserved set `[A-Za-z0-9._~-]` is
//! percent-encoded, byte by byte of its UTF-8.

use std::fmt::Write as _;

/// Percent-encodes everything outside `[A-Za-z0-9._~-]`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `path` followed by the given parameters, skipping absent ones.
pub fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let mut out = path.to_owned();
    let mut sep = '?';
    for (name, value) in params {
        if let Some(v) = value {
            out.push(sep);
            out.push_str(&percent_encode(name));
            out.push('=');
            out.push_str(&percent_encode(v));
            sep = '&';
        }
    }
    out
}

/// `GET /v1/audit?subject=&since=&limit=`.
pub(crate) fn audit_path(
    subject: Option<&str>,
    since_seq: Option<u64>,
    limit: Option<u32>,
) -> String {
    with_query(
        "/v1/audit",
        &[
            ("subject", subject.map(str::to_owned)),
            ("since", since_seq.map(|n| n.to_string())),
            ("limit", limit.map(|n| n.to_string())),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_everything_else_is_encoded() {
        assert_eq!(percent_encode("acct-1001._~Az09"), "acct-1001._~Az09");
        assert_eq!(
            percent_encode("a b&c=d?e/f#g+h%"),
            "a%20b%26c%3Dd%3Fe%2Ff%23g%2Bh%25"
        );
        assert_eq!(percent_encode("acct:1"), "acct%3A1");
        assert_eq!(percent_encode("陈"), "%E9%99%88");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn audit_path_skips_absent_parameters() {
        assert_eq!(audit_path(None, None, None), "/v1/audit");
        assert_eq!(audit_path(None, None, Some(10)), "/v1/audit?limit=10");
        assert_eq!(
            audit_path(Some("acct 1&x=y"), Some(42), Some(7)),
            "/v1/audit?subject=acct%201%26x%3Dy&since=42&limit=7"
        );
        assert_eq!(
            audit_path(Some("a"), Some(0), None),
            "/v1/audit?subject=a&since=0"
        );
    }
}
