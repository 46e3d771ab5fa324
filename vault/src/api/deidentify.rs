//! `POST /v1/deidentify` and `POST /v1/reidentify`: PII found in free text
//! is tokenized (stored like tokenize), masked or redacted in place; markers
//! `[[class:token]]` are put back as far as the policy releases them.
//! Invariants: a class the caller may not collect for the purpose is
//! redacted, never left in clear nor stored; every value is stored in one
//! atomic write before any text comes back; reidentify releases exactly
//! what detokenize would, audited the same way, and leaves the rest as
//! markers.

use bytes::Bytes;
use vault_sdk::wire::{
    DeidentifyMode, DeidentifyRequest, DeidentifyResponse, Finding, MarkerOut, ReidentifyRequest,
    ReidentifyResponse, Status,
};

use super::detokenize::{release, Ask};
use super::tokenize::{store_values, Collect};
use super::{keyring, parse_json, ApiError, Ctx};
use crate::classes::{self, Class, Normalized};
use crate::detect;
use crate::server::Vault;

pub async fn deidentify(
    v: &Vault,
    ctx: &Ctx,
    body: &Bytes,
) -> Result<DeidentifyResponse, ApiError> {
    let req: DeidentifyRequest = parse_json(body)?;
    // Sealed means no processing of PII at all, storing or not.
    keyring(v)?;
    let collect = match (req.mode, req.subject.as_deref()) {
        (DeidentifyMode::Tokenize, None) => {
            return Err(ApiError::BadRequest("subject is required in tokenize mode"))
        }
        (DeidentifyMode::Tokenize, Some(s)) => Some(Collect {
            action: "deidentify",
            ..Collect::new(v, s, &req.purpose, req.retention.as_deref())?
        }),
        _ if v.policy.purpose(&req.purpose).is_none() => return Err(ApiError::UnknownPurpose),
        _ => None,
    };
    let mut plan = Plan::new(v, ctx, req.mode, &req.purpose);
    let spans = plan.scan(&req.text)?;
    let tokens = match &collect {
        Some(c) => store_values(v, ctx, c, &plan.items).await?,
        None => Vec::new(),
    };
    let shown: Vec<String> = tokens.into_iter().map(|t| t.token).collect();
    let text = render(&req.text, &spans, &shown);
    let findings = spans
        .iter()
        .map(|s| Finding {
            class: s.found.class.as_str().to_string(),
            start: s.found.start,
            end: s.found.end,
            confidence: s.found.confidence,
            validated: s.found.validated,
            action: s.with.action().to_string(),
            token: s.with.item().and_then(|i| shown.get(i)).cloned(),
        })
        .collect();
    Ok(DeidentifyResponse { text, findings })
}

/// What takes a finding's place.
#[derive(Debug)]
pub(crate) enum Replacement {
    /// The token of the plan's item with this index, as a marker.
    Marker(usize),
    /// The token of the plan's item with this index, bare (a mapped
    /// record leaf).
    Token(usize),
    Masked(String),
    Redacted,
}

impl Replacement {
    pub fn action(&self) -> &'static str {
        match self {
            Replacement::Marker(_) | Replacement::Token(_) => "tokenized",
            Replacement::Masked(_) => "masked",
            Replacement::Redacted => "redacted",
        }
    }

    pub fn item(&self) -> Option<usize> {
        match self {
            Replacement::Marker(i) | Replacement::Token(i) => Some(*i),
            _ => None,
        }
    }
}

/// One finding and what replaces it.
#[derive(Debug)]
pub(crate) struct Span {
    pub found: detect::Finding,
    pub with: Replacement,
}

/// The values one request will store, gathered before anything is written,
/// and what it needs to decide each replacement.
pub(crate) struct Plan<'a> {
    v: &'a Vault,
    ctx: &'a Ctx,
    mode: DeidentifyMode,
    purpose: &'a str,
    pub items: Vec<(Class, Normalized)>,
    /// Replacements decided so far, in every mode: the item limit counts
    /// what a request changes, stored or not.
    decided: usize,
}

impl<'a> Plan<'a> {
    pub fn new(v: &'a Vault, ctx: &'a Ctx, mode: DeidentifyMode, purpose: &'a str) -> Self {
        Plan {
            v,
            ctx,
            mode,
            purpose,
            items: Vec::new(),
            decided: 0,
        }
    }

    /// How one value of `class` found or mapped in the request is replaced;
    /// `marker` puts a token in as `[[class:token]]` rather than bare.
    pub fn decide(
        &mut self,
        class: Class,
        norm: Normalized,
        marker: bool,
    ) -> Result<Replacement, ApiError> {
        let v = self.v;
        if self.decided >= v.limits.max_items {
            return Err(ApiError::TooManyItems(v.limits.max_items));
        }
        self.decided += 1;
        Ok(match self.mode {
            DeidentifyMode::Redact => Replacement::Redacted,
            DeidentifyMode::Mask => Replacement::Masked(classes::mask(class, norm.value())),
            DeidentifyMode::Tokenize
                if !v.policy.may_collect(&self.ctx.caller, self.purpose, class) =>
            {
                Replacement::Redacted
            }
            DeidentifyMode::Tokenize => {
                self.items.push((class, norm));
                let i = self.items.len() - 1;
                if marker {
                    Replacement::Marker(i)
                } else {
                    Replacement::Token(i)
                }
            }
        })
    }

    /// Finds the PII of `text` and decides each replacement.
    pub fn scan(&mut self, text: &str) -> Result<Vec<Span>, ApiError> {
        let found = detect::detect(text);
        let mut spans = Vec::with_capacity(found.len());
        for f in found {
            let raw = text.get(f.byte_start..f.byte_end).unwrap_or_default();
            let with = match classes::normalize(f.class, raw) {
                Ok(norm) => self.decide(f.class, norm, true)?,
                // The detector only reports values its class accepts; if one
                // slipped through it is hidden, never left in clear.
                Err(_) => Replacement::Redacted,
            };
            spans.push(Span { found: f, with });
        }
        Ok(spans)
    }
}

/// `text` with every span replaced. `tokens` holds the token string of
/// each plan item.
pub(crate) fn render(text: &str, spans: &[Span], tokens: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + spans.len() * 40);
    let mut at = 0;
    for s in spans {
        let f = &s.found;
        if f.byte_start < at {
            continue;
        }
        out.push_str(text.get(at..f.byte_start).unwrap_or_default());
        let class = f.class.as_str();
        match &s.with {
            Replacement::Marker(i) | Replacement::Token(i) => match tokens.get(*i) {
                Some(t) => {
                    out.push_str("[[");
                    out.push_str(class);
                    out.push(':');
                    out.push_str(t);
                    out.push_str("]]");
                }
                None => push_redacted(&mut out, class),
            },
            Replacement::Masked(m) => out.push_str(m),
            Replacement::Redacted => push_redacted(&mut out, class),
        }
        at = f.byte_end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

fn push_redacted(out: &mut String, class: &str) {
    out.push_str("[[");
    out.push_str(class);
    out.push_str("]]");
}

pub async fn reidentify(
    v: &Vault,
    ctx: &Ctx,
    body: &Bytes,
) -> Result<ReidentifyResponse, ApiError> {
    let req: ReidentifyRequest = parse_json(body)?;
    let markers = markers(&req.text);
    if markers.len() > v.limits.max_items {
        return Err(ApiError::TooManyItems(v.limits.max_items));
    }
    let tokens: Vec<String> = markers.iter().map(|m| m.token.to_string()).collect();
    let classes: Vec<&str> = markers.iter().map(|m| m.class).collect();
    let ask = Ask {
        action: "reidentify",
        purpose: req.purpose.as_deref(),
        reveal: req.reveal,
        legal_basis: req.legal_basis.as_ref(),
        classes: &classes,
    };
    let values = release(v, ctx, &ask, &tokens).await?;
    // Room for every value put back, so the text never grows into a new
    // buffer and leaves a plaintext copy in the old one.
    let room: usize = values
        .iter()
        .filter_map(|v| v.value.as_ref())
        .map(String::len)
        .sum();
    let mut text = String::with_capacity(req.text.len() + room);
    let mut at = 0;
    let mut out = Vec::with_capacity(markers.len());
    for (m, mut val) in markers.iter().zip(values) {
        text.push_str(req.text.get(at..m.byte_start).unwrap_or_default());
        // A marker names its class; a token of another class was answered
        // `unknown` (`Ask::classes`), nothing released.
        let fits = val.class.as_deref() == Some(m.class);
        match (&val.value, val.status) {
            (Some(plain), Status::Ok) if fits => text.push_str(plain),
            _ => text.push_str(req.text.get(m.byte_start..m.byte_end).unwrap_or_default()),
        }
        at = m.byte_end;
        out.push(MarkerOut {
            start: m.start,
            end: m.end,
            // The value stays in `val`, which wipes it when dropped.
            token: std::mem::take(&mut val.token),
            status: if fits || val.status != Status::Ok {
                val.status
            } else {
                Status::Unknown
            },
            masked: val.masked && fits,
            class: val.class.take(),
            reason: val.reason.take(),
        });
    }
    text.push_str(req.text.get(at..).unwrap_or_default());
    Ok(ReidentifyResponse { text, markers: out })
}

/// A `[[class:token]]` marker in a text.
#[derive(Debug, PartialEq, Eq)]
struct Marker<'a> {
    byte_start: usize,
    byte_end: usize,
    start: usize,
    end: usize,
    class: &'a str,
    token: &'a str,
}

/// Longest token a marker can hold (SPEC: tokens are at most 64 chars).
const MAX_TOKEN: usize = 64;

/// Every well-formed marker of `text`, in order. Linear: each `[[` is
/// looked at once, and reads at most a class name and 64 token characters.
fn markers(text: &str) -> Vec<Marker<'_>> {
    let mut out = Vec::new();
    let mut chars_before = 0;
    let mut counted_to = 0;
    let mut from = 0;
    while let Some(rel) = text.get(from..).and_then(|t| t.find("[[")) {
        let open = from + rel;
        match marker_at(text, open) {
            Some((class, token, close)) => {
                chars_before += text.get(counted_to..open).map_or(0, |s| s.chars().count());
                let len = text.get(open..close).map_or(0, |s| s.chars().count());
                out.push(Marker {
                    byte_start: open,
                    byte_end: close,
                    start: chars_before,
                    end: chars_before + len,
                    class,
                    token,
                });
                chars_before += len;
                counted_to = close;
                from = close;
            }
            None => from = open + 1,
        }
    }
    out
}

/// The marker starting at byte `open` (which holds `[[`): its class, token
/// and the byte just past its `]]`.
fn marker_at(text: &str, open: usize) -> Option<(&str, &str, usize)> {
    let rest = text.get(open + 2..)?;
    let class_len = rest
        .bytes()
        .take(16)
        .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
        .count();
    let class = rest.get(..class_len)?;
    Class::parse(class)?;
    let rest = rest.get(class_len..)?.strip_prefix(':')?;
    let token_len = rest
        .bytes()
        .take(MAX_TOKEN + 1)
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        .count();
    if token_len == 0 || token_len > MAX_TOKEN {
        return None;
    }
    let token = rest.get(..token_len)?;
    rest.get(token_len..)?.strip_prefix("]]")?;
    Some((class, token, open + 2 + class_len + 1 + token_len + 2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn markers_are_found_with_character_offsets() {
        let t = "𠀀陈[[name:abc_-9]]说[[phone:13912345678]] [[nope:x]] [[email:]] [[ip:a b]]";
        let m = markers(t);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].class, m[0].token), ("name", "abc_-9"));
        assert_eq!((m[0].start, m[0].end), (2, 2 + "[[name:abc_-9]]".len()));
        assert_eq!(&t[m[0].byte_start..m[0].byte_end], "[[name:abc_-9]]");
        assert_eq!((m[1].class, m[1].token), ("phone", "13912345678"));
        let chars: Vec<char> = t.chars().collect();
        let s: String = chars[m[1].start..m[1].end].iter().collect();
        assert_eq!(s, "[[phone:13912345678]]");
    }

    #[test]
    fn marker_edge_cases() {
        assert!(markers("[[[[phone:abc]]").len() == 1);
        assert!(markers("[[phone:abc]").is_empty());
        assert!(markers(&format!("[[phone:{}]]", "a".repeat(65))).is_empty());
        assert_eq!(markers(&format!("[[phone:{}]]", "a".repeat(64))).len(), 1);
        // Linear on a long run of openers.
        assert!(markers(&"[[".repeat(200_000)).is_empty());
    }
}
