//! `org_code`: the 9-character organization code of GB 11714, shown
//! `XXXXXXXX-X`. Invariant: a value that leaves here is 8 body characters
//! (0-9, A-Z), a hyphen and a correct check character; unlike the USCC there
//! is no known family of genuine codes failing the check, so a wrong one is
//! rejected.

use super::{compact, Invalid};

const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

pub(super) fn normalize(raw: &str) -> Result<String, Invalid> {
    // `compact` drops the hyphen with the other separators.
    let code = compact(raw)?;
    if !code
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return Err(Invalid::Charset);
    }
    let (body, check) = code.split_at_checked(8).ok_or(Invalid::Length)?;
    if check.len() != 1 {
        return Err(Invalid::Length);
    }
    if check.bytes().next() != check_char(body.as_bytes()) {
        return Err(Invalid::Checksum);
    }
    let mut out = String::with_capacity(10);
    out.push_str(body);
    out.push('-');
    out.push_str(check);
    Ok(out)
}

/// The check character of an 8-character body: digits count as 0-9 and
/// letters as 10-35; `c = 11 - sum mod 11`, where 10 is `X` and 11 is `0`.
pub(super) fn check_char(body: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (&b, w) in body.iter().zip(WEIGHTS) {
        sum += char::from(b).to_digit(36)? * w;
    }
    Some(match 11 - sum % 11 {
        10 => b'X',
        11 => b'0',
        c => b'0' + u8::try_from(c).ok()?,
    })
}
