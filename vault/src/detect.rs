//! PII detection in free text, Chinese and mixed Chinese/English. Owns the
//! candidate search and the choice between overlapping candidates; the class
//! rules themselves (checksums, dates, numbering plans) stay in
//! [`crate::classes`], which every reported span passes. Invariant: the
//! findings are sorted, never overlap, lie on character boundaries, carry
//! offsets only (never text), and the work is linear in the input: one
//! scanner pass for numbers, e-mail and IP addresses, one Aho-Corasick pass
//! for the context lexicon, and only bounded look-around windows besides.

use std::collections::BTreeMap;

use crate::classes::{self, Class};

mod address;
mod chars;
mod lexicon;
mod names;
mod numbers;
mod scan;

#[cfg(test)]
mod tests;

/// One piece of PII found in a text, by position only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finding {
    pub class: Class,
    /// Character (Unicode scalar value) offset, inclusive.
    pub start: usize,
    /// Character offset, exclusive.
    pub end: usize,
    /// Byte offsets of the same span in the input `&str`.
    pub byte_start: usize,
    pub byte_end: usize,
    /// 0..=1.
    pub confidence: f32,
    /// A checksum (resident ID MOD 11-2, USCC, organization code, Luhn)
    /// validated it.
    pub validated: bool,
}

/// Candidates below this confidence are not reported.
const MIN_CONFIDENCE: f32 = 0.5;

/// A possible finding, in byte offsets, before overlaps are resolved.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    class: Class,
    start: usize,
    end: usize,
    confidence: f32,
    validated: bool,
}

impl Candidate {
    /// Whether the span is a value of `class` by the classes module's rules;
    /// `Some(checksum_ok)` if so. The checksum is meaningful only for the
    /// classes that have one; it is `false` for the others.
    fn check(text: &str, class: Class, start: usize, end: usize) -> Option<bool> {
        let span = text.get(start..end)?;
        let n = classes::normalize(class, span).ok()?;
        let has_checksum = matches!(
            class,
            Class::CnResidentId | Class::Uscc | Class::OrgCode | Class::BankCard
        );
        // A 15-digit resident ID has no check character of its own.
        let long_id = class != Class::CnResidentId || span_digits(span) >= 17;
        Some(has_checksum && long_id && n.flag().is_none())
    }
}

fn span_digits(span: &str) -> usize {
    span.chars()
        .filter(|c| c.is_ascii_digit() || ('０'..='９').contains(c))
        .count()
}

/// All findings in `text`, sorted by start, non-overlapping (overlaps
/// resolved to the best candidate: validated checksum, then confidence,
/// then length).
pub fn detect(text: &str) -> Vec<Finding> {
    let hits = lexicon::hits(text);
    let mut cands = Vec::new();
    scan::scan(text, &hits, &mut cands);
    names::find(text, &hits, &mut cands);
    address::find(text, &hits, &mut cands);
    cands.retain(|c| c.confidence >= MIN_CONFIDENCE);
    let chosen = resolve(cands);
    with_char_offsets(text, chosen)
}

/// Best candidate first, each kept only if it overlaps nothing kept before.
fn resolve(mut cands: Vec<Candidate>) -> Vec<Candidate> {
    cands.sort_by(|a, b| {
        b.validated
            .cmp(&a.validated)
            .then(b.confidence.total_cmp(&a.confidence))
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
            .then(a.class.cmp(&b.class))
    });
    // Kept spans by start; they never overlap, so the one starting last
    // before a new span's end is the only one that can overlap it.
    let mut kept: BTreeMap<usize, Candidate> = BTreeMap::new();
    for c in cands {
        let clash = kept
            .range(..c.end)
            .next_back()
            .is_some_and(|(_, k)| k.end > c.start);
        if !clash {
            kept.insert(c.start, c);
        }
    }
    kept.into_values().collect()
}

/// Converts byte spans, sorted and disjoint, to findings with character
/// offsets, counting characters once over the text.
fn with_char_offsets(text: &str, chosen: Vec<Candidate>) -> Vec<Finding> {
    let bytes = text.as_bytes();
    let count = |from: usize, to: usize| -> usize {
        bytes
            .get(from..to)
            .map_or(0, |s| s.iter().filter(|&&b| b & 0xC0 != 0x80).count())
    };
    let (mut byte_pos, mut char_pos) = (0usize, 0usize);
    let mut out = Vec::with_capacity(chosen.len());
    for c in chosen {
        let start = char_pos + count(byte_pos, c.start);
        let end = start + count(c.start, c.end);
        (byte_pos, char_pos) = (c.end, end);
        out.push(Finding {
            class: c.class,
            start,
            end,
            byte_start: c.start,
            byte_end: c.end,
            confidence: c.confidence.clamp(0.0, 1.0),
            validated: c.validated,
        });
    }
    out
}
