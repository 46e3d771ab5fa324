//! `phone`: mainland China mobile, fixed-line and 400/800 service numbers.
//! Invariant: a value that leaves here is E.164 (`+86` and the national
//! significant number, no trunk `0`), optionally followed by an RFC 3966
//! `;ext=` and the extension digits; the number part passed the CN numbering
//! plan checks of PII-FORMATS.md, so two spellings of one line share a value.

use super::{is_separator, keep_ends, nfkc, precheck, Invalid, FULL_MASK, MAX_NUMBER_CHARS};

/// What separates a number from its extension, lower-case; matched
/// case-insensitively, longest first where two start at the same place.
/// `;ext=` is our own output form, so a normalized value normalizes to itself.
const EXTENSION_MARKERS: [&str; 8] = [";ext=", "分机号", "分机", "转分机", "转", "ext", "x", "#"];
/// Room for `0086`, a trunk `0` and the longest national number, with slack;
/// anything longer is no phone number.
const MAX_DIGITS: usize = 20;
const MAX_EXTENSION_DIGITS: usize = 10;

pub(super) fn normalize(raw: &str) -> Result<String, Invalid> {
    precheck(raw, MAX_NUMBER_CHARS)?;
    let text = nfkc(raw);
    let (number, extension) = split_extension(text.trim());
    let (digits, plus) = number_digits(number)?;
    let national = national_number(digits.get(), plus)?;
    check_national(national)?;
    let mut out = String::with_capacity(3 + national.len() + 5 + MAX_EXTENSION_DIGITS);
    out.push_str("+86");
    out.extend(national.iter().map(|&b| char::from(b)));
    if let Some(ext) = extension {
        out.push_str(";ext=");
        push_extension(&mut out, ext)?;
    }
    Ok(out)
}

/// Splits at the first extension marker, dropping the marker.
fn split_extension(text: &str) -> (&str, Option<&str>) {
    // Only places where a marker can start are tried: most numbers have none.
    let starts = |c: char| matches!(c, ';' | '分' | '转' | 'e' | 'E' | 'x' | 'X' | '#');
    for (i, _) in text.char_indices().filter(|&(_, c)| starts(c)) {
        let Some(rest) = text.get(i..) else { continue };
        for marker in EXTENSION_MARKERS {
            let hit = rest
                .get(..marker.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(marker));
            if hit {
                let number = text.get(..i).unwrap_or_default();
                return (number, rest.get(marker.len()..));
            }
        }
    }
    (text, None)
}

/// The digits of the number part, kept on the stack: a valid one has at
/// most 16 (`0086` and 12), so this costs no allocation.
struct Digits {
    buf: [u8; MAX_DIGITS],
    len: usize,
}

impl Digits {
    fn get(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// The number part's digits, and whether they were preceded by `+`.
fn number_digits(number: &str) -> Result<(Digits, bool), Invalid> {
    let mut d = Digits {
        buf: [0; MAX_DIGITS],
        len: 0,
    };
    let mut plus = false;
    for c in number.chars().filter(|&c| !is_separator(c)) {
        if c == '+' && d.len == 0 && !plus {
            plus = true;
            continue;
        }
        if !c.is_ascii_digit() {
            return Err(Invalid::Charset);
        }
        let slot = d.buf.get_mut(d.len).ok_or(Invalid::Length)?;
        *slot = u8::try_from(c).map_err(|_| Invalid::Charset)?;
        d.len += 1;
    }
    if d.len == 0 {
        return Err(if plus {
            Invalid::Format
        } else {
            Invalid::Empty
        });
    }
    Ok((d, plus))
}

/// The national significant number: country code and trunk `0` removed.
/// Any country code but 86 is refused: this vault holds CN numbers.
fn national_number(d: &[u8], plus: bool) -> Result<&[u8], Invalid> {
    let after_country_code = if plus {
        d.strip_prefix(b"86").ok_or(Invalid::Prefix)?
    } else if let Some(rest) = d.strip_prefix(b"0086") {
        rest
    } else if d.starts_with(b"00") {
        return Err(Invalid::Prefix);
    } else if let Some(rest) = d.strip_prefix(b"0") {
        return Ok(rest);
    } else if let (true, Some(rest)) = (d.len() >= 12, d.strip_prefix(b"86")) {
        // No CN national number has 12 digits or more, so a leading 86 on
        // one that long can only be the country code.
        rest
    } else {
        return Ok(d);
    };
    // `+86 (0)591 ...`: the trunk prefix is often written after the code too.
    Ok(after_country_code
        .strip_prefix(b"0")
        .unwrap_or(after_country_code))
}

/// What a national number is, by its leading digits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mobile,
    /// 400/800 numbers: valid, but a company's line, not a person's.
    Service,
    /// A fixed line with an area code of this many digits (trunk `0` not
    /// counted).
    Fixed(usize),
}

fn kind(n: &[u8]) -> Option<Kind> {
    match n {
        [b'1', b'0', ..] | [b'2', ..] => Some(Kind::Fixed(2)),
        [b'1', ..] => Some(Kind::Mobile),
        [b'4' | b'8', b'0', b'0', ..] => Some(Kind::Service),
        [b'3'..=b'9', ..] => Some(Kind::Fixed(3)),
        _ => None,
    }
}

fn check_national(n: &[u8]) -> Result<(), Invalid> {
    match kind(n).ok_or(Invalid::Format)? {
        Kind::Mobile if n.len() != 11 => Err(Invalid::Length),
        Kind::Mobile if !mobile_prefix_ok(n) => Err(Invalid::Prefix),
        Kind::Mobile => Ok(()),
        Kind::Service if n.len() != 10 => Err(Invalid::Length),
        Kind::Service => Ok(()),
        Kind::Fixed(area_len) => check_fixed(n, area_len),
    }
}

/// Mobile prefixes in service (libphonenumber's CN metadata, as listed in
/// PII-FORMATS.md, and 1610x, which libphonenumber 9.0 calls mobile and
/// the contract's list leaves out); 154, 179 and 194 were never assigned,
/// and of 174 only 1740x is a mobile block. (libphonenumber 9.0 has numbers only in
/// 17400-17405; PII-FORMATS.md lists `1740x`, and format-preserving tokens
/// issued over the whole block must keep resolving, so the block stays
/// whole.)
fn mobile_prefix_ok(n: &[u8]) -> bool {
    matches!(
        n,
        [b'1', b'3' | b'8', ..]
            | [b'1', b'4', b'5' | b'7', ..]
            | [b'1', b'5', b'0'..=b'3' | b'5'..=b'9', ..]
            | [b'1', b'6', b'2' | b'5'..=b'7', ..]
            | [b'1', b'6', b'1', b'0', ..]
            | [b'1', b'7', b'0'..=b'3' | b'5'..=b'8', ..]
            | [b'1', b'7', b'4', b'0', ..]
            | [b'1', b'9', b'0'..=b'3' | b'5'..=b'9', ..]
    )
}

/// Local numbers never start with 0 or 1 (those lead to trunk and special
/// services). The area code must exist and the local number have one of its
/// lengths, as libphonenumber says (`phone_areas.rs`): Beijing, Shanghai and
/// the other 2-digit areas 8 digits, most 3-digit areas 7, Fuzhou (591) and
/// Quanzhou (595) 8, a few either.
fn check_fixed(n: &[u8], area_len: usize) -> Result<(), Invalid> {
    let (area, local) = n.split_at_checked(area_len).ok_or(Invalid::Length)?;
    if matches!(local.first(), None | Some(b'0' | b'1')) {
        return Err(Invalid::Format);
    }
    let code = area
        .iter()
        .try_fold(0u16, |acc, &b| {
            Some(acc * 10 + u16::from(b.checked_sub(b'0')?))
        })
        .ok_or(Invalid::Format)?;
    let i = super::phone_areas::AREAS
        .binary_search_by_key(&code, |&(a, _)| a)
        .map_err(|_| Invalid::Prefix)?;
    let mask = super::phone_areas::AREAS.get(i).map_or(0, |&(_, m)| m);
    let ok = match local.len() {
        7 => mask & 1 != 0,
        8 => mask & 2 != 0,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Invalid::Length)
    }
}

/// Appends the extension's digits; separators and a `:` or `=` after the
/// marker are dropped.
fn push_extension(out: &mut String, ext: &str) -> Result<(), Invalid> {
    let mut count = 0;
    for c in ext
        .chars()
        .filter(|&c| !is_separator(c) && c != ':' && c != '=')
    {
        if !c.is_ascii_digit() {
            return Err(Invalid::Charset);
        }
        count += 1;
        out.push(c);
    }
    if (1..=MAX_EXTENSION_DIGITS).contains(&count) {
        Ok(())
    } else {
        Err(Invalid::Format)
    }
}

/// Mobile and service numbers keep their first 3 and last 4 digits
/// (`138****8000`); fixed lines keep `0`, the area code and the last 4
/// (`0591****8788`). One star per hidden digit; the extension is left out.
pub(super) fn mask(value: &str) -> String {
    let number = value.split(';').next().unwrap_or_default();
    let Some(national) = number.strip_prefix("+86") else {
        return FULL_MASK.to_string();
    };
    match kind(national.as_bytes()) {
        Some(Kind::Mobile | Kind::Service) => keep_ends(national, 3, 4),
        Some(Kind::Fixed(area_len)) => {
            let mut domestic = String::with_capacity(national.len() + 1);
            domestic.push('0');
            domestic.push_str(national);
            keep_ends(&domestic, area_len + 1, 4)
        }
        None => FULL_MASK.to_string(),
    }
}
