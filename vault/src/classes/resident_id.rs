//! `cn_resident_id`: the 18-character resident identity number of GB
//! 11643-1999, also used by the Hong Kong, Macau and Taiwan residence permits
//! and the foreigner permanent-residence ID. Invariant: a value that leaves
//! here has 17 digits, a correct ISO 7064 MOD 11-2 check character (upper-case
//! `X`), an address code not starting with `0` (no such code was ever
//! issued; format-preserving tokens live there, so no token passes for an
//! ID) and a birth date that is a real day between 1900-01-01 and today; the
//! legacy 15-digit form comes out as its 18-digit equivalent. Unknown
//! address codes are otherwise accepted: retired county codes stay valid.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{compact, digit, Invalid};

/// Weights of the first 17 digits in the MOD 11-2 sum.
const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// The check character for `sum mod 11` = 0..=10.
const CHECK: [u8; 11] = *b"10X98765432";

pub(super) fn normalize(raw: &str) -> Result<String, Invalid> {
    let mut id = compact(raw)?;
    if !id.bytes().all(|b| b.is_ascii_digit() || b == b'X') {
        return Err(Invalid::Charset);
    }
    match id.len() {
        18 => {}
        15 => id = widen(&id)?,
        _ => return Err(Invalid::Length),
    }
    // Only the last place may hold `X`.
    if id.bytes().take(17).any(|b| b == b'X') {
        return Err(Invalid::Charset);
    }
    if id.starts_with('0') {
        return Err(Invalid::Format);
    }
    if id.as_bytes().get(17).copied() != check_char(id.as_bytes()) {
        return Err(Invalid::Checksum);
    }
    check_birth_date(id.as_bytes())?;
    Ok(id)
}

/// The legacy 15-digit form (address, `YYMMDD`, sequence) as 18 digits:
/// every 15-digit number was issued to someone born in the 1900s.
fn widen(id15: &str) -> Result<String, Invalid> {
    if id15.contains('X') {
        return Err(Invalid::Charset);
    }
    let (address, rest) = id15.split_at_checked(6).ok_or(Invalid::Length)?;
    let mut id = String::with_capacity(18);
    id.push_str(address);
    id.push_str("19");
    id.push_str(rest);
    let check = check_char(id.as_bytes()).ok_or(Invalid::Charset)?;
    id.push(char::from(check));
    Ok(id)
}

/// The check character the first 17 digits call for.
pub(super) fn check_char(id: &[u8]) -> Option<u8> {
    if id.len() < 17 {
        return None;
    }
    let mut sum = 0u32;
    for (&b, w) in id.iter().zip(WEIGHTS) {
        sum += digit(b)? * w;
    }
    CHECK.get(usize::try_from(sum % 11).ok()?).copied()
}

/// Places 7-14 must be a real calendar day, not before 1900 and not after
/// today.
fn check_birth_date(id: &[u8]) -> Result<(), Invalid> {
    let field = |from: usize, len: usize| -> Option<u32> {
        id.iter()
            .skip(from)
            .take(len)
            .try_fold(0u32, |acc, &b| Some(acc * 10 + digit(b)?))
    };
    let (Some(year), Some(month), Some(day)) = (field(6, 4), field(10, 2), field(12, 2)) else {
        return Err(Invalid::Date);
    };
    if year < 1900 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(Invalid::Date);
    }
    if !not_after_today(year * 10_000 + month * 100 + day) {
        return Err(Invalid::Date);
    }
    Ok(())
}

/// The latest day (`YYYYMMDD`) known to have begun in China. Days only move
/// forward, so a birth date on or before it needs no clock reading; that
/// spares nearly every check a call to the clock.
static KNOWN_TODAY: AtomicU32 = AtomicU32::new(0);

/// Whether `date` (`YYYYMMDD`) is not after today in China (UTC+8), where
/// the numbers are issued.
fn not_after_today(date: u32) -> bool {
    if date <= KNOWN_TODAY.load(Ordering::Relaxed) {
        return true;
    }
    let (y, m, d) = today_in_china();
    let today = y * 10_000 + m * 100 + d;
    KNOWN_TODAY.fetch_max(today, Ordering::Relaxed);
    date <= today
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

/// Today's date at UTC+8 as (year, month, day).
fn today_in_china() -> (u32, u32, u32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs + 8 * 3600) / 86_400;
    civil_from_days(i64::try_from(days).unwrap_or(i64::MAX / 2))
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), to avoid a date library for one comparison.
pub(crate) fn civil_from_days(days: i64) -> (u32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
    (to_u32(year), to_u32(month), to_u32(day))
}
