//! `GET /v1/audit?subject=&since=&limit=`: the audit trail, for officers.

use vault_sdk::wire::AuditResponse;

use super::{require_officer, ApiError, Ctx};
use crate::audit;
use crate::schema::valid_subject;
use crate::server::Vault;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn audit(
    v: &Vault,
    ctx: &Ctx,
    query: Option<&str>,
    deadline: audit::Deadline,
) -> Result<AuditResponse, ApiError> {
    require_officer(ctx)?;
    let mut subject = None;
    let mut since = 0u64;
    let mut limit = DEFAULT_LIMIT;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded =
            percent_decode(raw).ok_or(ApiError::BadRequest("bad percent-encoding in the query"))?;
        let val = decoded.as_str();
        match k {
            "subject" if !val.is_empty() => {
                if !valid_subject(val) {
                    return Err(ApiError::InvalidSubject);
                }
                subject = Some(val.to_string());
            }
            "subject" => {}
            "since" => {
                since = val
                    .parse()
                    .map_err(|_| ApiError::BadRequest("since must be an event sequence number"))?
            }
            "limit" => {
                limit = val
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or(ApiError::BadRequest("limit must be 1..=1000"))?;
            }
            _ => return Err(ApiError::BadRequest("unknown query parameter")),
        }
    }
    let events = audit::query(v.store.as_ref(), subject.as_deref(), since, limit, deadline)
        .map_err(|e| {
            if !matches!(e, audit::AuditError::TimedOut) {
                tracing::error!(request_id = %ctx.request_id, error = %e, "Audit query failed");
            }
            super::subjects::walk_error(e)
        })?;
    Ok(AuditResponse { events })
}

/// Decodes `%XX` escapes (and `+` as space); `None` on a bad escape or bytes
/// that are not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("acct%3A1").as_deref(), Some("acct:1"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
