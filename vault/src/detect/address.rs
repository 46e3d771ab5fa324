//! Addresses, found only after a form label (`地址：`, `住址：`, `联系地址:`)
//! and running to the end of the field: a line break, a sentence or clause
//! mark, the next cue, or a stronger candidate inside. Invariant: an address
//! span starts after the label and its colon, holds no line break, is at
//! most [`MAX_CHARS`] characters, and never overlaps a number candidate
//! that is found inside it.

use super::lexicon::{Cue, Hit};
use super::Candidate;
use crate::classes::Class;

/// The longest address read, in characters.
const MAX_CHARS: usize = 100;
/// The shortest address reported, in characters.
const MIN_CHARS: usize = 4;

/// Characters that end an address field.
fn ends_field(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '。' | '；'
                | ';'
                | '，'
                | ','
                | '|'
                | '｜'
                | '│'
                | '！'
                | '？'
                | '!'
                | '?'
                | '、'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// Characters that name a place: an address holds at least one. Digits,
/// `号` or `楼` alone do not make one (`住院号Z2024…` after a `，住` cue).
fn address_like(c: char) -> bool {
    "省市区县路街道镇乡村巷弄苑园".contains(c)
}

/// Finds the address after every address label. `found` holds the number
/// candidates already found, which an address stops before.
pub(super) fn find(text: &str, hits: &[Hit], out: &mut Vec<Candidate>) {
    let mut numbers: Vec<(usize, usize)> = out
        .iter()
        .filter(|c| c.confidence >= super::MIN_CONFIDENCE)
        .map(|c| (c.start, c.end))
        .collect();
    numbers.sort_unstable();
    for (k, h) in hits.iter().enumerate() {
        if h.cue != Cue::Address {
            continue;
        }
        let limit = hits.get(k + 1).map_or(text.len(), |n| n.start);
        if let Some(mut c) = after_label(text, h.end, limit, &numbers) {
            // A form label (`地址：`) vouches for what follows; a short
            // phrase (`，住`, `家在`) only with a place word in it.
            let cue = text.get(h.start..h.end).unwrap_or_default();
            let short = cue.trim_start_matches('，').chars().count() <= 2 && !cue.contains('址');
            if short && c.confidence < 0.85 {
                c.confidence = 0.45;
            }
            out.push(c);
        }
    }
}

fn after_label(
    text: &str,
    from: usize,
    limit: usize,
    numbers: &[(usize, usize)],
) -> Option<Candidate> {
    let rest = text.get(from..limit.max(from))?;
    let mut start = from;
    for c in rest.chars().take(4) {
        if matches!(
            c,
            ':' | '：' | ' ' | '\u{3000}' | '|' | '｜' | '│' | '是' | '为' | '在' | '\t'
        ) {
            start += c.len_utf8();
        } else {
            break;
        }
    }
    // A number found inside ends the address (or starts right at it: then
    // there is none).
    let first_number = numbers.partition_point(|&(s, _)| s < start);
    let number_at = numbers.get(first_number).map_or(usize::MAX, |&(s, _)| s);
    let body = text.get(start..limit.max(start).min(number_at.max(start)))?;
    let mut end = start;
    let mut like = false;
    let mut spaces = 0;
    for (count, (i, c)) in body.char_indices().enumerate() {
        // Two spaces in a row end a field in a one-line form.
        spaces = if c.is_whitespace() { spaces + 1 } else { 0 };
        if ends_field(c) || count == MAX_CHARS || spaces == 2 {
            break;
        }
        like |= address_like(c);
        if !c.is_whitespace() {
            end = start + i + c.len_utf8();
        }
    }
    let chars = text.get(start..end)?.chars().count();
    if chars < MIN_CHARS {
        return None;
    }
    Some(Candidate {
        class: Class::Address,
        start,
        end,
        confidence: if like { 0.85 } else { 0.55 },
        validated: false,
    })
}
