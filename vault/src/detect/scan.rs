//! The single pass over the text for number-like candidates, e-mail and IP
//! addresses. Invariant: a candidate starts only where a token starts (the
//! character before is no letter or digit, nor a joiner such as `-`, `.`,
//! `,`, `:` glued to one), and every attempt from a start reads a bounded
//! number of characters, so the pass is linear however long a run of digits,
//! letters, `@` or dots the text holds.

use super::chars::{self, Ch};
use super::lexicon::{self, Cue, Hit};
use super::numbers;
use super::Candidate;
use crate::classes::Class;

/// The longest local part RFC 5321 allows.
const MAX_LOCAL: usize = 64;
/// The longest domain RFC 1035 allows.
const MAX_DOMAIN: usize = 253;
/// Longer than any textual IPv6 address.
const MAX_IPV6: usize = 45;

/// What follows a candidate's last character.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Tail {
    /// Nothing that could continue it: the candidate is bounded.
    Free,
    /// A space and more digits: another number may follow, or a group.
    SpaceMore,
    /// A dash and more digits or letters.
    DashMore,
    /// Letters, digits, `@`, or a joiner with a digit behind it: part of a
    /// longer token, not a value of its own.
    #[default]
    Joined,
}

impl Tail {
    pub(super) fn bounded(self) -> bool {
        matches!(self, Tail::Free | Tail::SpaceMore)
    }
}

/// What follows byte `i`. A `,`, `/` or dash after a run of at least
/// [`COMPLETE`] digits ends it: no thousands group, date or number block
/// is that long, so the run is a whole value and the separator lists the
/// next one (`13800138000,13900139000`, a CSV line).
pub(super) fn tail(bytes: &[u8], i: usize) -> Tail {
    let (c, w) = chars::at(bytes, i);
    let (next, _) = chars::at(bytes, i + w);
    let complete = || digits_before(bytes, i) >= COMPLETE;
    match c {
        Ch::Digit(_) | Ch::Letter(_) | Ch::Punct(b'@' | b'_') => Tail::Joined,
        Ch::Space if next.is_digit() => Tail::SpaceMore,
        Ch::Dash if next.is_alnum() && !complete() => Tail::DashMore,
        Ch::Punct(b',' | b'/') if next.is_digit() && complete() => Tail::Free,
        Ch::Punct(b'.' | b',' | b'/' | b':' | b'%') if next.is_digit() => Tail::Joined,
        _ => Tail::Free,
    }
}

/// A run of two or three separators at byte `i` between two digit groups
/// (`138 - 0013`, `138\u{200B}\u{200B}0013`): spaces, with at most one
/// dash among them; its width in bytes, `None` when no digit follows such
/// a run. It reads as a space does ([`Tail::SpaceMore`]): the groups may
/// join, and the number before it may also end there, so a list written
/// with spaced dashes (`138 0013 8000 - 139 0013 9000`) still gives each.
pub(super) fn separator_run(bytes: &[u8], i: usize) -> Option<(Tail, usize)> {
    let (mut j, mut count, mut dash) = (i, 0, false);
    loop {
        let (c, w) = chars::at(bytes, j);
        match c {
            Ch::Digit(_) if count >= 2 => return Some((Tail::SpaceMore, j - i)),
            Ch::Space if count < 3 => {}
            Ch::Dash if count < 3 && !dash => dash = true,
            _ => return None,
        }
        count += 1;
        j += w;
    }
}

/// Digits in a run that makes a whole value on its own: a mobile number
/// has 11, a resident ID 18.
const COMPLETE: usize = 11;
/// Digits after a `:` or `,` that start a value even right after a digit:
/// a time (`10:30`) or a thousands group (`1,234`) never has that many,
/// a numbered label (`电话2：13900139000`) does.
const LONG_AFTER: usize = 7;

/// How many digits (ASCII or full width; a final `X` of an ID counts) end
/// just before byte `end`, counted up to [`COMPLETE`].
fn digits_before(bytes: &[u8], end: usize) -> usize {
    let mut n = 0;
    let mut i = end;
    while n < COMPLETE && i > 0 {
        // Back to the start of the previous character (at most 4 bytes).
        let mut start = i - 1;
        while start > 0 && i - start < 4 && bytes.get(start).is_some_and(|b| b & 0xC0 == 0x80) {
            start -= 1;
        }
        match chars::at(bytes, start).0 {
            Ch::Digit(_) => n += 1,
            Ch::Letter(b'X' | b'x') if n == 0 => {}
            _ => break,
        }
        i = start;
    }
    n
}

/// How many digits start at byte `i`, counted up to `cap`.
fn digits_from(bytes: &[u8], mut i: usize, cap: usize) -> usize {
    let mut n = 0;
    while n < cap {
        match chars::at(bytes, i) {
            (Ch::Digit(_), w) => {
                n += 1;
                i += w;
            }
            _ => break,
        }
    }
    n
}

/// Whether a token may start at byte `i`, after `prev` (the character
/// before, at byte `prev_at`) and `prev2` (the one before that). After a
/// `,`, `/` or dash glued to a digit, only where the run before is a whole
/// value (`13800138000/13900139000`; after `:`, only if a digit follows);
/// after `,` or `:` glued to a digit, also where a long run follows
/// (`手机2:13900139000`).
fn starts_token(bytes: &[u8], i: usize, prev: Ch, prev_at: usize, prev2: Ch) -> bool {
    let complete = || digits_before(bytes, prev_at) >= COMPLETE;
    match prev {
        Ch::Digit(_) | Ch::Letter(_) | Ch::Currency => false,
        Ch::Punct(b'.' | b'_' | b'@' | b'+' | b'#' | b'&' | b'%') => false,
        Ch::Dash | Ch::Punct(b'/' | b'\\') => !prev2.is_alnum() || complete(),
        Ch::Punct(b',') => {
            !prev2.is_digit() || complete() || digits_from(bytes, i, LONG_AFTER) >= LONG_AFTER
        }
        // After a whole value only where digits follow
        // (`13800138000:192.168.1.1`): `…2001:db8::1` is one address, not
        // a number and an address.
        Ch::Punct(b':') => {
            !prev2.is_digit()
                || digits_from(bytes, i, LONG_AFTER) >= LONG_AFTER
                || (complete() && digits_from(bytes, i, 1) == 1)
        }
        _ => true,
    }
}

/// Finds the candidates of the number classes, e-mail and IP.
pub(super) fn scan(text: &str, hits: &[Hit], out: &mut Vec<Candidate>) {
    let bytes = text.as_bytes();
    let (mut prev, mut prev2) = (Ch::Other, Ch::Other);
    let mut prev_at = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Han text is most of a Chinese page and starts nothing: skip it
        // without classifying.
        if bytes.get(i).is_some_and(|b| (0xE4..=0xE9).contains(b)) {
            (prev2, prev, prev_at) = (prev, Ch::Han, i);
            i += 3;
            continue;
        }
        // Inside a run of ASCII letters and digits nothing starts: skip it.
        if prev.is_alnum() && bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            let from = i;
            while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                i += 1;
            }
            prev2 = if i - from > 1 {
                chars::at(bytes, i - 2).0
            } else {
                prev
            };
            prev = chars::at(bytes, i - 1).0;
            prev_at = i - 1;
            continue;
        }
        let (ch, w) = chars::at(bytes, i);
        let next = || chars::at(bytes, i + w).0;
        let start = starts_token(bytes, i, prev, prev_at, prev2);
        match ch {
            Ch::Digit(_) | Ch::Letter(_) if start => {
                numbers::at(text, i, hits, out);
                if ch.is_digit() {
                    ipv4(text, i, hits, out);
                }
                if hex(ch) {
                    ipv6(text, i, hits, out);
                }
            }
            Ch::Punct(b'+' | b'(') if start && matches!(next(), Ch::Digit(_) | Ch::Punct(b'+')) => {
                numbers::at(text, i, hits, out);
            }
            Ch::Punct(b':') if start && next() == Ch::Punct(b':') => ipv6(text, i, hits, out),
            Ch::Punct(b'@') => email(text, i, w, out),
            _ => {}
        }
        (prev2, prev, prev_at) = (prev, ch, i);
        i += w.max(1);
    }
}

fn hex(c: Ch) -> bool {
    matches!(c, Ch::Digit(_) | Ch::Letter(b'a'..=b'f' | b'A'..=b'F'))
}

fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// An address around the `@` at byte `at` (`width` bytes: `@`, `＠` or
/// `﹫`). Both sides are read at most to their RFC limits, so a run of `@`
/// costs a constant each.
fn email(text: &str, at: usize, width: usize, out: &mut Vec<Candidate>) {
    let bytes = text.as_bytes();
    let mut start = at;
    while start > 0 && bytes.get(start - 1).copied().is_some_and(local_char) {
        start -= 1;
        if at - start > MAX_LOCAL {
            return;
        }
    }
    // A local part starts with a letter or digit.
    while start < at && !bytes.get(start).is_some_and(u8::is_ascii_alphanumeric) {
        start += 1;
    }
    if start == at {
        return;
    }
    // The domain, width-folded as it is read (an IME's full-width `．` or
    // letters are the same domain to IDNA, which the validator applies):
    // each end is where the folded domain ends too.
    let dom = at + width;
    let mut end = dom;
    let mut folded: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    loop {
        let (c, w) = chars::at(bytes, end);
        let b = match c {
            Ch::Digit(b) | Ch::Letter(b) => b,
            Ch::Punct(b'.') => b'.',
            Ch::Dash if bytes.get(end) == Some(&b'-') => b'-',
            _ => break,
        };
        folded.push(b);
        end += w;
        ends.push(end);
        if folded.len() > MAX_DOMAIN {
            return;
        }
    }
    while matches!(folded.last(), Some(b'.' | b'-')) {
        folded.pop();
        ends.pop();
    }
    end = ends.last().copied().unwrap_or(dom);
    if matches!(bytes.get(end), Some(b'@' | b'_')) {
        return;
    }
    let tld_ok = folded
        .rsplit(|&b| b == b'.')
        .next()
        .filter(|_| folded.contains(&b'.'))
        .is_some_and(|tld| {
            // Letters, or an internationalized TLD in its ASCII form
            // (`xn--fiqs8s`, 中国).
            let ace = tld.len() > 4
                && tld
                    .get(..4)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--"))
                && tld.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
            ace || (tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
        });
    if !tld_ok {
        return;
    }
    if Candidate::check(text, Class::Email, start, end).is_some() {
        out.push(Candidate {
            class: Class::Email,
            start,
            end,
            confidence: 0.97,
            validated: false,
        });
    }
}

/// A dotted quad starting at `start`.
fn ipv4(text: &str, start: usize, hits: &[Hit], out: &mut Vec<Candidate>) {
    let bytes = text.as_bytes();
    let mut i = start;
    for part in 0..4 {
        let from = i;
        while bytes.get(i).is_some_and(u8::is_ascii_digit) && i - from < 4 {
            i += 1;
        }
        if !(1..=3).contains(&(i - from)) {
            return;
        }
        if part < 3 {
            if bytes.get(i) != Some(&b'.') {
                return;
            }
            i += 1;
        }
    }
    if !tail(bytes, i).bounded() && !port_or_prefix(bytes, i) {
        return;
    }
    push_ip(text, start, i, hits, out);
}

/// Whether byte `i` starts a port (`:8080`) or a prefix length (`/24`)
/// that ends there: the address before it is whole.
fn port_or_prefix(bytes: &[u8], i: usize) -> bool {
    let max = match bytes.get(i) {
        Some(b':') => 5,
        Some(b'/') => 2,
        _ => return false,
    };
    let n = digits_from(bytes, i + 1, max + 1);
    (1..=max).contains(&n) && tail(bytes, i + 1 + n).bounded()
}

/// An IPv6 address starting at `start`: a run of hex digits, colons and
/// (for an embedded IPv4 tail) dots with at least two colons.
fn ipv6(text: &str, start: usize, hits: &[Hit], out: &mut Vec<Candidate>) {
    let bytes = text.as_bytes();
    let mut i = start;
    let mut colons = 0;
    while let Some(&b) = bytes.get(i) {
        if !(b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            break;
        }
        colons += usize::from(b == b':');
        i += 1;
        if i - start > MAX_IPV6 {
            return;
        }
    }
    // `::` alone is the unspecified address in theory and punctuation in
    // text: an address has a hex digit.
    let has_hex = bytes
        .get(start..i)
        .is_some_and(|s| s.iter().any(u8::is_ascii_hexdigit));
    if colons < 2 || !has_hex {
        return;
    }
    while i > start && matches!(bytes.get(i - 1), Some(b'.')) {
        i -= 1;
    }
    if bytes
        .get(i)
        .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        return;
    }
    push_ip(text, start, i, hits, out);
}

fn push_ip(text: &str, start: usize, end: usize, hits: &[Hit], out: &mut Vec<Candidate>) {
    let cue = lexicon::cue_before(text, hits, start);
    if cue == Some(Cue::Anti) || Candidate::check(text, Class::Ip, start, end).is_none() {
        return;
    }
    let confidence = if cue == Some(Cue::Number(Class::Ip)) {
        0.95
    } else {
        0.85
    };
    out.push(Candidate {
        class: Class::Ip,
        start,
        end,
        confidence,
        validated: false,
    });
}
