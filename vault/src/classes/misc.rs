//! The classes with short rules: `passport` (pattern only, there is no
//! public checksum), `bank_card` (Luhn, a failure only flagged), `address`
//! and `text` (free text, NFKC and whitespace only). Invariant: passports and
//! cards leave here as upper-case ASCII without separators; addresses as
//! trimmed single-spaced NFKC without control characters.

use super::{collapse_spaces, compact, nfkc, precheck, Flag, Invalid, FULL_MASK};

const MAX_ADDRESS_BYTES: usize = 4096;
const MAX_TEXT_BYTES: usize = 65_536;
/// An address mask keeps this many leading characters (province and city).
const ADDRESS_KEEP: usize = 6;
/// Stars in an address mask stop here: the length of the rest is no one's
/// business either.
const ADDRESS_MAX_STARS: usize = 8;

pub(super) fn passport(raw: &str) -> Result<String, Invalid> {
    let p = compact(raw)?;
    if !p
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return Err(Invalid::Charset);
    }
    if passport_pattern(p.as_bytes()) {
        Ok(p)
    } else {
        Err(Invalid::Format)
    }
}

/// The document number patterns of PII-FORMATS.md: PRC e-passport
/// `E\d{8}`, `E[A-HJ-NP-Z]\d{7}`; older `G\d{8}`; official `(DE|SE|PE)\d{7}`;
/// HKSAR `K\d{8}`; MSAR `MA\d{7}`; travel permit `[HM]\d{8}(\d{2})?`;
/// Taiwan residents' permit `\d{8}`.
fn passport_pattern(p: &[u8]) -> bool {
    let digits = |s: &[u8], n: usize| s.len() == n && s.iter().all(u8::is_ascii_digit);
    match p {
        [b'E' | b'G' | b'K', rest @ ..] if digits(rest, 8) => true,
        [b'E', b'A'..=b'H' | b'J'..=b'N' | b'P'..=b'Z', rest @ ..] => digits(rest, 7),
        [b'D' | b'S' | b'P', b'E', rest @ ..] | [b'M', b'A', rest @ ..] => digits(rest, 7),
        [b'H' | b'M', rest @ ..] => digits(rest, 8) || digits(rest, 10),
        _ => digits(p, 8),
    }
}

pub(super) fn bank_card(raw: &str) -> Result<(String, Option<Flag>), Invalid> {
    let card = compact(raw)?;
    if !card.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::Charset);
    }
    if !(12..=19).contains(&card.len()) {
        return Err(Invalid::Length);
    }
    let flag = (!luhn_ok(card.as_bytes())).then_some(Flag::ChecksumFailed);
    Ok((card, flag))
}

/// Luhn: from the right, every second digit doubled (minus 9 past 9); the
/// sum must end in 0.
pub(super) fn luhn_ok(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b.wrapping_sub(b'0'));
            match (i % 2 == 1, d * 2) {
                (true, x) if x > 9 => x - 9,
                (true, x) => x,
                (false, _) => d,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub(super) fn address(raw: &str) -> Result<String, Invalid> {
    collapse_spaces(raw, MAX_ADDRESS_BYTES)
}

/// Free text keeps its inner layout (line breaks, tabs); only the ends are
/// trimmed, so a stray newline does not make a new token.
pub(super) fn text(raw: &str) -> Result<String, Invalid> {
    precheck(raw, MAX_TEXT_BYTES)?;
    let text = nfkc(raw);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Invalid::Empty);
    }
    if trimmed.len() > MAX_TEXT_BYTES {
        return Err(Invalid::TooLong);
    }
    Ok(trimmed.to_string())
}

/// The first six characters (province and city, in a Chinese address), then
/// one star per remaining character, at most eight. An address of six
/// characters or fewer keeps only its first half.
pub(super) fn mask_address(address: &str) -> String {
    let n = address.chars().count();
    if n == 0 {
        return FULL_MASK.to_string();
    }
    let keep = if n > ADDRESS_KEEP {
        ADDRESS_KEEP
    } else {
        n / 2
    };
    let stars = (n - keep).min(ADDRESS_MAX_STARS);
    let mut out: String = address.chars().take(keep).collect();
    out.extend(std::iter::repeat_n('*', stars));
    out
}
