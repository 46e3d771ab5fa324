//! `uscc`: the unified social credit code of GB 32100-2015. Invariant: a
//! value that leaves here is 18 characters of the code's 31-character
//! alphabet, upper-case, starting with a registering authority that exists
//! (1-9, A, N, Y; format-preserving tokens start with the letters none
//! uses, so no token passes for a code); a wrong check character is
//! accepted but flagged, because early Fujian pilot codes are genuine and
//! fail it.

use super::{compact, Flag, Invalid};

/// The code's alphabet; a character's value is its position (0-30). I, O, S,
/// V and Z are left out as too easily confused.
const ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
/// Position 1: the registering authorities of GB 32100-2015.
const AUTHORITIES: &[u8; 12] = b"123456789ANY";
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

pub(super) fn normalize(raw: &str) -> Result<(String, Option<Flag>), Invalid> {
    let code = compact(raw)?;
    if !code.bytes().all(|b| value_of(b).is_some()) {
        return Err(Invalid::Charset);
    }
    if code.len() != 18 {
        return Err(Invalid::Length);
    }
    if !code
        .bytes()
        .next()
        .is_some_and(|b| AUTHORITIES.contains(&b))
    {
        return Err(Invalid::Format);
    }
    let flag = (code.as_bytes().get(17).copied() != check_char(code.as_bytes()))
        .then_some(Flag::ChecksumFailed);
    Ok((code, flag))
}

fn value_of(b: u8) -> Option<u32> {
    let pos = ALPHABET.iter().position(|&a| a == b)?;
    u32::try_from(pos).ok()
}

/// The check character the first 17 characters call for.
pub(super) fn check_char(code: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (&b, w) in code.iter().zip(WEIGHTS) {
        sum += value_of(b)? * w;
    }
    let c = (31 - sum % 31) % 31;
    ALPHABET.get(usize::try_from(c).ok()?).copied()
}
