//! The API's handlers, one file per endpoint family, and the one error type
//! they answer with. Invariant: no handler writes anything until the whole
//! request has been validated, and nothing an [`ApiError`] carries comes from
//! a submitted value.

pub mod admin;
mod audit_query;
pub mod consent;
mod deidentify;
mod detokenize;
pub mod exposure;
pub mod lifecycle;
mod records;
pub mod subjects;
mod tokenize;

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::classes::Invalid;
use crate::policy::Role;
use crate::server::Vault;

pub use audit_query::audit;
pub(crate) use audit_query::percent_decode;
pub use deidentify::{deidentify, reidentify};
pub use detokenize::detokenize;
pub use records::records;
pub use tokenize::tokenize;

/// Who is asking, for what request.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub caller: Arc<str>,
    pub role: Role,
    pub request_id: String,
    /// When the request's time is up (`None` for the vault's own work):
    /// what a long walk stops at, so the answer still makes it.
    pub deadline: Option<std::time::Instant>,
}

/// Everything a request can fail with. The status and code of each variant
/// are fixed in exactly one place, `http::error_parts`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not well-formed JSON (line {line}, column {column})")]
    MalformedJson { line: usize, column: usize },
    #[error("the request does not match the schema (line {line}, column {column}): {what}")]
    InvalidRequest {
        line: usize,
        column: usize,
        what: &'static str,
    },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("the request body is over the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("more than {0} fields or tokens in one request")]
    TooManyItems(usize),
    #[error("the client certificate names no configured caller")]
    UnknownCaller,
    #[error("this endpoint is for officers")]
    OfficerOnly,
    #[error("consent is given through the application acting for the subject, not by an officer")]
    ConsentByOfficer,
    #[error("subject must be 1-128 characters of [A-Za-z0-9._:-]")]
    InvalidSubject,
    #[error("purpose is required")]
    PurposeRequired,
    #[error("unknown purpose")]
    UnknownPurpose,
    #[error("this caller may not use this purpose")]
    PurposeNotAllowed,
    #[error("field {field}: this caller may not collect this class for this purpose")]
    ClassNotAllowed { field: usize },
    #[error("this caller may not collect this value's class for the purpose it was collected for")]
    CorrectionNotAllowed,
    #[error("field {field}: unknown class")]
    UnknownClass { field: usize },
    #[error("field {field}: {reason}")]
    InvalidValue { field: usize, reason: Invalid },
    #[error("retention is not an ISO 8601 duration such as P3Y")]
    InvalidRetention,
    #[error("the vault is sealed")]
    Sealed,
    #[error("the vault is at capacity; retry later")]
    Overloaded,
    #[error("the request took too long")]
    Timeout,
    #[error("storage is unavailable; nothing was stored or released")]
    Unavailable,
    #[error("no such endpoint")]
    NotFound,
    #[error("the subject holds no live value under this token")]
    NoSuchValue,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the subject is under legal hold; nothing was changed")]
    LegalHold,
    #[error("this subject's erasure waits for a legal retention period to end; until then its data is only kept, not collected, exported or released")]
    SubjectRestricted,
    #[error("this account was closed and its post-closure retention period is over: nothing more is kept for it")]
    AccountClosed,
    #[error("an officer may not approve a disclosure they make themselves")]
    SelfApproval,
    #[error("a concurrent change won; retry")]
    Conflict,
    #[error(
        "stored values still use this key version (rewrap first), or it was superseded moments ago"
    )]
    KeyInUse,
    #[error("{0}")]
    InvalidShare(&'static str),
    #[error("the shares given do not open this vault; unseal starts again")]
    UnsealFailed,
    #[error("{0}")]
    BadMapping(crate::records::MappingError),
    #[error("walking the document would build more than {0} bytes of pointers; name fewer or narrower pointers, or send a smaller document")]
    WalkTooLarge(usize),
    #[error("no schema of that name is configured")]
    UnknownSchema,
    #[error("{pointer}: a string is required for this class")]
    LeafNotString { pointer: String },
    #[error("{pointer}: two mappings name this leaf")]
    LeafMappedTwice { pointer: String },
    #[error("{pointer}: this caller may not collect this class for this purpose")]
    LeafNotAllowed { pointer: String },
    #[error("{pointer}: {reason}")]
    LeafInvalid { pointer: String, reason: Invalid },
    #[error("the JSON nests deeper than 128 levels")]
    TooDeep,
    /// The three answers hyper gives by itself, before the service sees a
    /// request (`http/heads.rs`).
    #[error("the request line or a header could not be parsed")]
    HeadMalformed,
    #[error("the request target is too long")]
    UriTooLong,
    #[error("the request head is over the limit of 32 KiB or 100 header fields")]
    HeadTooLarge,
    #[error("internal error")]
    Internal,
    /// The request's handling panicked (in its task or one it waited
    /// for): answered as `Internal`, and an HTTP/1 connection closes.
    #[error("internal error")]
    Panicked,
}

/// A task's end as a request's result: a panic (the hook has counted and
/// located it) is [`ApiError::Panicked`]. The `JoinError` is never
/// formatted: its text would carry the panic's message.
pub fn joined<T>(r: Result<T, tokio::task::JoinError>) -> Result<T, ApiError> {
    r.map_err(|e| {
        if e.is_panic() {
            ApiError::Panicked
        } else {
            ApiError::Internal
        }
    })
}

/// A request refused as a whole still leaves its event (SPEC: every
/// outcome, denied included, is in the audit log): one event naming the
/// action, the purpose (a configured one, never a string the caller made
/// up) and the subject where there is one. Answers `e`, or 503 when the
/// refusal could not be written.
pub(crate) async fn refused(
    v: &Vault,
    ctx: &Ctx,
    action: &'static str,
    purpose: Option<&str>,
    subject: Option<&str>,
    outcome: &'static str,
    e: ApiError,
) -> ApiError {
    let draft = crate::audit::Draft {
        request_id: ctx.request_id.clone(),
        caller: ctx.caller.to_string(),
        action,
        purpose: purpose.map(str::to_string),
        subject: subject.map(str::to_string),
        outcome,
        ..crate::audit::Draft::default()
    };
    match v
        .committer
        .commit(crate::store::Batch::default(), vec![draft])
        .await
    {
        Ok(_) => e,
        Err(_) => ApiError::Unavailable,
    }
}

/// Parses a JSON body. serde's own messages can quote the offending input,
/// so only the position and the kind of problem are kept.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        // A schema error can surface before a later syntax error (`[1,2`
        // fails on the `1`), so a body that is not JSON at all is told
        // apart by a second, schema-free parse, only on this error path.
        if e.to_string().starts_with("recursion limit exceeded") {
            return ApiError::TooDeep;
        }
        // That parse skips strings without checking them, so invalid UTF-8
        // is looked for first.
        if let Err(bad) = std::str::from_utf8(body) {
            let valid = body.get(..bad.valid_up_to()).unwrap_or_default();
            return ApiError::MalformedJson {
                line: 1 + valid.iter().filter(|b| **b == b'\n').count(),
                column: 1 + valid.iter().rev().take_while(|b| **b != b'\n').count(),
            };
        }
        if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            return ApiError::MalformedJson {
                line: syntax.line(),
                column: syntax.column(),
            };
        }
        let msg = e.to_string();
        let what = if msg.starts_with("unknown field") {
            "unknown field"
        } else if msg.starts_with("missing field") {
            "missing field"
        } else if msg.starts_with("duplicate field") {
            "duplicate field"
        } else {
            "wrong type or value"
        };
        ApiError::InvalidRequest {
            line: e.line(),
            column: e.column(),
            what,
        }
    })
}

/// Longest case reference of a legal exception, in characters.
pub(crate) const MAX_REFERENCE: usize = 128;

/// Not blank, at most `max` characters, no control characters and no
/// invisible or bidirectional formatting ones (which would let a reference
/// read as another to an officer, `tax-2026\u{202E}...`): a name or
/// reference fit for the audit log.
fn printable(s: &str, max: usize) -> bool {
    !s.trim().is_empty()
        && s.chars().count() <= max
        && !s.chars().any(|c| {
            c.is_control()
                || crate::classes::is_invisible(c)
                || matches!(
                    c,
                    // The other format and invisible characters: the Arabic
                    // letter mark, the combining grapheme joiner, Hangul
                    // fillers, Khmer inherent vowels, Mongolian variation
                    // selectors and vowel separator, line and paragraph
                    // separators, deprecated format characters, variation
                    // selectors, interlinear annotation, shorthand and
                    // musical format controls, and the tag characters
                    // (which spell hidden ASCII).
                    '\u{061C}'
                        | '\u{034F}'
                        | '\u{115F}'
                        | '\u{1160}'
                        | '\u{3164}'
                        | '\u{FFA0}'
                        | '\u{17B4}'
                        | '\u{17B5}'
                        | '\u{180B}'..='\u{180F}'
                        | '\u{2028}'
                        | '\u{2029}'
                        | '\u{206A}'..='\u{206F}'
                        | '\u{FE00}'..='\u{FE0F}'
                        | '\u{FFF9}'..='\u{FFFB}'
                        | '\u{1BCA0}'..='\u{1BCA3}'
                        | '\u{1D173}'..='\u{1D17A}'
                        | '\u{E0000}'..='\u{E007F}'
                        | '\u{E0100}'..='\u{E01EF}'
                )
        })
}

fn require_officer(ctx: &Ctx) -> Result<(), ApiError> {
    match ctx.role {
        Role::Officer => Ok(()),
        Role::App => Err(ApiError::OfficerOnly),
    }
}

fn keyring(v: &Vault) -> Result<Arc<crate::keys::Keyring>, ApiError> {
    v.keys.get().map_err(|_| ApiError::Sealed)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    /// What goes into the audit log from a caller is text an officer reads
    /// as it is: nothing that hides or reorders characters.
    #[test]
    fn printable_refuses_what_hides_or_reorders_text() {
        assert!(super::printable("case-2026-17", 128));
        assert!(super::printable("案件 2026-17", 128));
        for hidden in [
            "case\u{202E}71",
            "case\u{200B}17",
            "case\u{061C}17",
            "case\u{E0041}17",
            "case\u{3164}17",
            "case\u{FE0F}17",
            "case\u{E0100}17",
            "case\u{2028}17",
            "case\u{206A}17",
            "case\n17",
            " ",
        ] {
            assert!(!super::printable(hidden, 128), "{hidden:?}");
        }
        assert!(!super::printable(&"x".repeat(129), 128));
    }
}
