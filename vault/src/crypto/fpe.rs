//! Format-preserving tokens: for phone numbers, resident IDs, bank cards and
//! USCC codes, a token that has the value's own shape (length, alphabet,
//! valid check character), made with FF1 (NIST SP 800-38G, AES-256) over the
//! characters that carry identity, tweaked by the class and by what is kept in
//! clear. Invariants: for each class the map from normalized values to tokens
//! is a keyed permutation (so it is deterministic, collision-free and
//! invertible with the key), and the token shapes of the four classes are
//! pairwise disjoint (phone tokens start `+86`, resident-ID tokens `000`, bank
//! card tokens are digits starting 1-9, USCC tokens start with a letter no
//! registering authority uses), so [`PreservingKey::class_of`] is exact.
//!
//! What each class keeps in clear is what its display mask shows anyway:
//! phone the number block or area code, bank card the BIN, USCC the
//! authority and organization type. A resident ID keeps nothing: region,
//! birth date and sex all go into the permuted part. A value whose check
//! character fails (a flagged card or USCC) maps to a token whose check
//! fails by a permuted amount, so the flag survives the round trip.

use ::fpe::ff1::{FlexibleNumeralString, FF1};
use aes::Aes256;
use zeroize::{Zeroize, Zeroizing};

use crate::classes::{self, Class};
use crate::secret::SecretKey;

#[cfg(test)]
mod tests;

const DIGITS: &[u8; 10] = b"0123456789";
/// The USCC alphabet (GB 32100-2015); a character's value is its position.
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];
/// Registering authorities a real USCC starts with.
const USCC_AUTHORITIES: &[u8; 12] = b"123456789ANY";
/// What each authority becomes in a token: letters no authority uses, so a
/// USCC token never equals a real code and never looks like a digit-only
/// token of another class. Position `i` stands for `USCC_AUTHORITIES[i]`.
const USCC_TOKEN_FIRST: &[u8; 12] = b"BCDEFGHJKLMP";
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";
/// Resident-ID tokens start here: address code `000xxx` is never issued.
const ID_TOKEN_PREFIX: &str = "000";
/// Birth dates are counted in days from this day (1900-01-01, the earliest
/// the resident-ID normalizer accepts), in five digits: good until 2173.
const ID_EPOCH_DAYS: i64 = -25_567;
const ID_MAX_DAYS: u64 = 100_000;
/// Digits the permuted part of a resident ID has: address code (6), days
/// since the epoch (5), sequence (3).
const ID_FREE_DIGITS: usize = 14;
/// Cycle-walking steps before giving up. Every walk here stays in its domain
/// with probability at least 4/5 per step, so 64 misses in a row happen with
/// probability below 10^-44; a value that did would get an opaque token.
const MAX_WALK: usize = 64;

/// The key of format-preserving tokens, derived by the caller from the token
/// key (label `vault/fpe/v1`), so it shares the token key's lifetime.
#[derive(Debug)]
pub struct PreservingKey(SecretKey<32>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// The numeral strings FF1 is walked over: cycle walking keeps applying the
/// permutation until the result lands in the domain again, which makes a
/// permutation of the domain alone.
#[derive(Clone, Copy)]
enum Domain {
    All,
    /// A failed check's offset rides in the last numeral and is never 0.
    LastNonZero,
    /// A fixed line's local number never starts with 0 or 1.
    FirstAtLeastTwo,
}

impl Domain {
    fn holds(self, x: &[u16]) -> bool {
        match self {
            Domain::All => true,
            Domain::LastNonZero => x.last().is_some_and(|&d| d != 0),
            Domain::FirstAtLeastTwo => x.first().is_some_and(|&d| d >= 2),
        }
    }
}

impl PreservingKey {
    pub fn new(key: SecretKey<32>) -> Self {
        Self(key)
    }

    /// The format-preserving token of a normalized value (the input is
    /// exactly what [`crate::classes::normalize`] returns via `.value()`),
    /// or `None` for classes without a preserving form and for the few values
    /// of those classes that have none (documented with each class).
    pub fn token(&self, class: Class, normalized: &str) -> Option<String> {
        if !matches!(
            class,
            Class::Phone | Class::CnResidentId | Class::BankCard | Class::Uscc
        ) || !is_normalized(class, normalized)
        {
            return None;
        }
        let mut token = match class {
            Class::Phone => self.phone(Direction::Encrypt, normalized),
            Class::CnResidentId => self.resident_id_token(normalized),
            Class::BankCard => self.bank_card(Direction::Encrypt, normalized),
            Class::Uscc => self.uscc(Direction::Encrypt, normalized),
            _ => None,
        }?;
        // Shapes are disjoint by construction; checked anyway, because
        // detokenize trusts `class_of` to route a token.
        if Self::class_of(&token) != Some(class) {
            return None;
        }
        Some(std::mem::take(&mut *token))
    }

    /// Inverse of [`PreservingKey::token`]: the normalized value a preserving
    /// token stands for, if `token` has the shape of that class's preserving
    /// tokens. Any string of that shape decrypts to some valid value (or one
    /// valid under the rules it may have been stored by), issued or not:
    /// whether it was ever stored is for the caller to check.
    pub fn value(&self, class: Class, token: &str) -> Option<Zeroizing<String>> {
        if Self::class_of(token) != Some(class) {
            return None;
        }
        let value = match class {
            Class::Phone => self.phone(Direction::Decrypt, token),
            Class::CnResidentId => self.resident_id_value(token),
            Class::BankCard => self.bank_card(Direction::Decrypt, token),
            Class::Uscc => self.uscc(Direction::Decrypt, token),
            _ => None,
        }?;
        (is_normalized(class, &value) || stored_under_older_rules(class, &value)).then_some(value)
    }

    /// Which class's preserving-token shape `token` has. Exact: the shapes
    /// are disjoint, so every token of class `c` gives `Some(c)`.
    pub fn class_of(token: &str) -> Option<Class> {
        let b = token.as_bytes();
        match b.first()? {
            b'+' => phone_layout(token)
                .filter(|_| {
                    is_normalized(Class::Phone, token)
                        || stored_under_older_rules(Class::Phone, token)
                })
                .map(|_| Class::Phone),
            b'0' => resident_id_shape(b).then_some(Class::CnResidentId),
            b'1'..=b'9' => bank_card_kept(b).map(|_| Class::BankCard),
            c if USCC_TOKEN_FIRST.contains(c) => uscc_shape(b).then_some(Class::Uscc),
            _ => None,
        }
    }

    /// FF1 one way over `x`, cycle-walking until the result is in `domain`
    /// (`x` must be in it). Every intermediate numeral string is wiped.
    fn permute(
        &self,
        direction: Direction,
        radix: u32,
        tweak: &[u8],
        x: &[u16],
        domain: Domain,
    ) -> Option<Zeroizing<Vec<u16>>> {
        if !domain.holds(x) {
            return None;
        }
        let ff1 = FF1::<Aes256>::new(self.0.expose_secret(), radix).ok()?;
        let mut current = Zeroizing::new(x.to_vec());
        for _ in 0..MAX_WALK {
            let input = FlexibleNumeralString::from(std::mem::take(&mut *current));
            let output = match direction {
                Direction::Encrypt => ff1.encrypt(tweak, &input),
                Direction::Decrypt => ff1.decrypt(tweak, &input),
            };
            Vec::<u16>::from(input).zeroize();
            *current = output.ok()?.into();
            if domain.holds(&current) {
                return Some(current);
            }
        }
        None
    }

    /// Phone, both ways. Kept: `+86` and the number block (mobile `1XX`,
    /// `1740`; service `400`/`800`) or the area code (fixed line). Permuted:
    /// the rest of the number together with the extension digits, which
    /// keep their places; a fixed line's local number keeps a first digit of
    /// 2-9, so every token is itself a valid number of the same kind.
    fn phone(&self, direction: Direction, input: &str) -> Option<Zeroizing<String>> {
        let layout = phone_layout(input)?;
        let ext = layout.ext.unwrap_or_default();
        let free = numerals(&[layout.local.as_bytes(), ext.as_bytes()], 0)?;
        let domain = if layout.kind == b'F' {
            Domain::FirstAtLeastTwo
        } else {
            Domain::All
        };
        let mut tweak = vec![
            Class::Phone.tag(),
            layout.kind,
            u8::try_from(layout.local.len()).ok()?,
            u8::try_from(ext.len()).ok()?,
        ];
        tweak.extend_from_slice(layout.kept.as_bytes());
        let out = self.permute(direction, 10, &tweak, &free, domain)?;
        let (local, ext_out) = out.split_at_checked(layout.local.len())?;
        let mut s = Zeroizing::new(String::with_capacity(input.len()));
        s.push_str("+86");
        s.push_str(layout.kept);
        push_symbols(&mut s, DIGITS, local)?;
        if layout.ext.is_some() {
            s.push_str(";ext=");
            push_symbols(&mut s, DIGITS, ext_out)?;
        }
        Some(s)
    }

    /// Resident ID to token. Nothing is kept: the address code, the birth
    /// date as days since 1900-01-01 and the sequence number make a 14-digit
    /// number, permuted whole; the token is `000`, those 14 digits and a
    /// valid MOD 11-2 check character.
    fn resident_id_token(&self, value: &str) -> Option<Zeroizing<String>> {
        let b = value.as_bytes();
        if b.len() != 18 {
            return None;
        }
        let field = |from: usize, to: usize| decimal(b.get(from..to)?);
        let (address, year, month, day, sequence) = (
            field(0, 6)?,
            field(6, 10)?,
            field(10, 12)?,
            field(12, 14)?,
            field(14, 17)?,
        );
        let days = days_from_civil(
            i64::try_from(year).ok()?,
            i64::try_from(month).ok()?,
            i64::try_from(day).ok()?,
        ) - ID_EPOCH_DAYS;
        let days = u64::try_from(days).ok().filter(|&d| d < ID_MAX_DAYS)?;
        let packed = Zeroizing::new((address * ID_MAX_DAYS + days) * 1000 + sequence);
        let free = to_numerals(*packed, ID_FREE_DIGITS);
        let out = self.permute(
            Direction::Encrypt,
            10,
            &resident_id_tweak(),
            &free,
            Domain::All,
        )?;
        let mut s = Zeroizing::new(String::with_capacity(18));
        s.push_str(ID_TOKEN_PREFIX);
        push_symbols(&mut s, DIGITS, &out)?;
        let check = resident_id_check(s.as_bytes())?;
        s.push(char::from(check));
        Some(s)
    }

    /// Resident-ID token back to the ID (the shape is already checked).
    fn resident_id_value(&self, token: &str) -> Option<Zeroizing<String>> {
        let free = numerals(&[token.as_bytes().get(3..17)?], 0)?;
        let out = self.permute(
            Direction::Decrypt,
            10,
            &resident_id_tweak(),
            &free,
            Domain::All,
        )?;
        let packed = Zeroizing::new(from_numerals(&out)?);
        let sequence = *packed % 1000;
        let days = (*packed / 1000) % ID_MAX_DAYS;
        let address = *packed / (1000 * ID_MAX_DAYS);
        let (year, month, day) = civil_from_days(i64::try_from(days).ok()? + ID_EPOCH_DAYS);
        let mut s = Zeroizing::new(String::with_capacity(18));
        for (n, width) in [(address, 6), (year, 4), (month, 2), (day, 2), (sequence, 3)] {
            push_symbols(&mut s, DIGITS, &to_numerals(n, width))?;
        }
        let check = resident_id_check(s.as_bytes())?;
        s.push(char::from(check));
        Some(s)
    }

    /// Bank card, both ways. Kept: the length and the first 6 digits (the
    /// BIN; 5 on a 12-digit card, so that 6 digits are left to permute).
    /// Permuted: the digits between them and the check digit, plus, on a
    /// card that fails Luhn, its offset from the right check digit; the
    /// token's check digit is Luhn's, shifted by the permuted offset.
    fn bank_card(&self, direction: Direction, input: &str) -> Option<Zeroizing<String>> {
        let b = input.as_bytes();
        let kept = bank_card_kept(b)?;
        let (&check, body) = b.split_last()?;
        let (prefix, middle) = body.split_at_checked(kept)?;
        let offset = (u16::from(check.checked_sub(b'0')?) + 10 - luhn_digit(body)?) % 10;
        let mut free = numerals(&[middle], 1)?;
        if offset != 0 {
            free.push(offset);
        }
        let mut tweak = vec![
            Class::BankCard.tag(),
            u8::from(offset != 0),
            u8::try_from(b.len()).ok()?,
        ];
        tweak.extend_from_slice(prefix);
        let domain = if offset != 0 {
            Domain::LastNonZero
        } else {
            Domain::All
        };
        let out = self.permute(direction, 10, &tweak, &free, domain)?;
        let (middle_out, offset_out) = out.split_at_checked(middle.len())?;
        let mut s = Zeroizing::new(String::with_capacity(b.len()));
        s.push_str(input.get(..kept)?);
        push_symbols(&mut s, DIGITS, middle_out)?;
        let offset_out = offset_out.first().copied().unwrap_or(0);
        let check_out = (luhn_digit(s.as_bytes())? + offset_out) % 10;
        push_symbols(&mut s, DIGITS, &[check_out])?;
        Some(s)
    }

    /// USCC, both ways. Kept: the length, the registering authority (shown
    /// as a token letter, see [`USCC_TOKEN_FIRST`]) and the organization
    /// type. Permuted: the division code and organization code (15
    /// characters of the 31-character alphabet), plus a failed check's
    /// offset, as for bank cards. A code whose first character is no
    /// authority's has no preserving token.
    fn uscc(&self, direction: Direction, input: &str) -> Option<Zeroizing<String>> {
        let b = input.as_bytes();
        if b.len() != 18 {
            return None;
        }
        let (&check, body) = b.split_last()?;
        let (&first, rest) = body.split_first()?;
        let (&kind, middle) = rest.split_first()?;
        let (from, to) = match direction {
            Direction::Encrypt => (USCC_AUTHORITIES, USCC_TOKEN_FIRST),
            Direction::Decrypt => (USCC_TOKEN_FIRST, USCC_AUTHORITIES),
        };
        let index = from.iter().position(|&c| c == first)?;
        let first_out = *to.get(index)?;
        let authority = *USCC_AUTHORITIES.get(index)?;
        let offset = (uscc_value(check)? + 31 - uscc_check(body)?) % 31;
        let mut free = Zeroizing::new(Vec::with_capacity(middle.len() + 1));
        for &c in middle {
            free.push(uscc_value(c)?);
        }
        if offset != 0 {
            free.push(offset);
        }
        let tweak = [Class::Uscc.tag(), u8::from(offset != 0), authority, kind];
        let domain = if offset != 0 {
            Domain::LastNonZero
        } else {
            Domain::All
        };
        let out = self.permute(direction, 31, &tweak, &free, domain)?;
        let (middle_out, offset_out) = out.split_at_checked(middle.len())?;
        let mut s = Zeroizing::new(String::with_capacity(18));
        s.push(char::from(first_out));
        s.push(char::from(kind));
        push_symbols(&mut s, USCC_ALPHABET, middle_out)?;
        let offset_out = offset_out.first().copied().unwrap_or(0);
        let check_out = (uscc_check(s.as_bytes())? + offset_out) % 31;
        push_symbols(&mut s, USCC_ALPHABET, &[check_out])?;
        Some(s)
    }
}

/// Whether `v` is a normalized value that an earlier, looser rule of
/// `classes` accepted and the current one refuses: a fixed line whose area
/// code or local length libphonenumber does not list (checked since
/// 2026-12-07; its token keeps the area, and a local number starting 2-9),
/// or a resident ID whose address code starts with 0 (refused since then
/// too). Values stored under those rules, and their tokens, stay reachable.
fn stored_under_older_rules(class: Class, v: &str) -> bool {
    match class {
        Class::Phone => phone_layout(v).is_some_and(|l| {
            l.kind == b'F' && matches!(l.local.as_bytes().first(), Some(b'2'..=b'9'))
        }),
        Class::CnResidentId => {
            let b = v.as_bytes();
            b.len() == 18
                && b.first() == Some(&b'0')
                && b.iter().take(17).all(u8::is_ascii_digit)
                && b.get(17).copied() == resident_id_check(b)
        }
        _ => false,
    }
}

/// Whether `value` is exactly its own normalized form in `class`.
fn is_normalized(class: Class, value: &str) -> bool {
    classes::normalize(class, value).is_ok_and(|n| n.value() == value)
}

/// A normalized phone value (or token) cut into what is kept and what is
/// permuted.
struct PhoneLayout<'a> {
    /// `M` mobile, `S` service (400/800), `F` fixed line.
    kind: u8,
    kept: &'a str,
    local: &'a str,
    ext: Option<&'a str>,
}

/// The phone layout of `+86<national>[;ext=<digits>]`. Mirrors the kinds of
/// `classes::phone`; validity beyond the shape is `classes::normalize`'s.
fn phone_layout(v: &str) -> Option<PhoneLayout<'_>> {
    let rest = v.strip_prefix("+86")?;
    let (number, ext) = match rest.split_once(";ext=") {
        Some((number, ext)) => (number, Some(ext)),
        None => (rest, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(number) || !ext.is_none_or(all_digits) {
        return None;
    }
    let (kind, kept_len, local_len) = match number.as_bytes() {
        [b'1', b'0', ..] | [b'2', ..] => (b'F', 2, 7..=8),
        [b'1', b'7', b'4', b'0', ..] | [b'1', b'6', b'1', b'0', ..] => (b'M', 4, 7..=7),
        [b'1', ..] => (b'M', 3, 8..=8),
        [b'4' | b'8', b'0', b'0', ..] => (b'S', 3, 7..=7),
        [b'3'..=b'9', ..] => (b'F', 3, 7..=8),
        _ => return None,
    };
    let (kept, local) = number.split_at_checked(kept_len)?;
    local_len.contains(&local.len()).then_some(PhoneLayout {
        kind,
        kept,
        local,
        ext,
    })
}

fn resident_id_tweak() -> [u8; 2] {
    [Class::CnResidentId.tag(), b'I']
}

/// `000`, 14 digits, and a valid check character.
fn resident_id_shape(b: &[u8]) -> bool {
    b.len() == 18
        && b.starts_with(ID_TOKEN_PREFIX.as_bytes())
        && b.iter().take(17).all(u8::is_ascii_digit)
        && b.get(17).copied() == resident_id_check(b)
}

/// The MOD 11-2 check character of the first 17 digits of `id`.
fn resident_id_check(id: &[u8]) -> Option<u8> {
    let first17 = id.get(..17)?;
    let mut sum = 0u32;
    for (&b, w) in first17.iter().zip(ID_WEIGHTS) {
        sum += u32::from(b.checked_sub(b'0').filter(|&d| d <= 9)?) * w;
    }
    ID_CHECK.get(usize::try_from(sum % 11).ok()?).copied()
}

/// How many leading digits a card (or card token) keeps, if it has a
/// preserving form: 12-19 digits, not starting with 0 (no bank card does,
/// and it keeps card tokens apart from resident-ID tokens).
fn bank_card_kept(b: &[u8]) -> Option<usize> {
    let ok = (12..=19).contains(&b.len())
        && b.iter().all(u8::is_ascii_digit)
        && b.first().is_some_and(|&c| c != b'0');
    ok.then_some(if b.len() == 12 { 5 } else { 6 })
}

/// The Luhn check digit that `body` (the digits before the check) calls for.
fn luhn_digit(body: &[u8]) -> Option<u16> {
    let mut sum = 0u16;
    for (i, &b) in body.iter().rev().enumerate() {
        let d = u16::from(b.checked_sub(b'0').filter(|&d| d <= 9)?);
        sum += match (i % 2 == 0, d * 2) {
            (true, x) if x > 9 => x - 9,
            (true, x) => x,
            (false, _) => d,
        };
    }
    Some((10 - sum % 10) % 10)
}

/// A token letter, then 17 characters of the USCC alphabet.
fn uscc_shape(b: &[u8]) -> bool {
    b.len() == 18
        && b.first().is_some_and(|c| USCC_TOKEN_FIRST.contains(c))
        && b.iter().all(|&c| uscc_value(c).is_some())
}

fn uscc_value(c: u8) -> Option<u16> {
    let pos = USCC_ALPHABET.iter().position(|&a| a == c)?;
    u16::try_from(pos).ok()
}

/// The value (0-30) of the check character the first 17 characters call
/// for.
fn uscc_check(code: &[u8]) -> Option<u16> {
    let mut sum = 0u32;
    for (&c, w) in code.get(..17)?.iter().zip(USCC_WEIGHTS) {
        sum += u32::from(uscc_value(c)?) * w;
    }
    u16::try_from((31 - sum % 31) % 31).ok()
}

/// The digits of `parts`, concatenated, as numerals, with room for `extra`
/// more so that a later push never reallocates (and leaves a copy behind).
fn numerals(parts: &[&[u8]], extra: usize) -> Option<Zeroizing<Vec<u16>>> {
    let len = parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(len + extra));
    for &b in parts.iter().copied().flatten() {
        out.push(u16::from(b.checked_sub(b'0').filter(|&d| d <= 9)?));
    }
    Some(out)
}

/// `n` as `width` decimal numerals, most significant first.
fn to_numerals(mut n: u64, width: usize) -> Zeroizing<Vec<u16>> {
    let mut out = Zeroizing::new(vec![0u16; width]);
    for slot in out.iter_mut().rev() {
        // `n % 10` is below 10, so the conversion never falls back.
        *slot = u16::try_from(n % 10).unwrap_or(0);
        n /= 10;
    }
    out
}

fn from_numerals(x: &[u16]) -> Option<u64> {
    x.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// A run of ASCII digits as a number.
fn decimal(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &c| {
        let d = c.checked_sub(b'0').filter(|&d| d <= 9)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn push_symbols(out: &mut String, alphabet: &[u8], values: &[u16]) -> Option<()> {
    for &v in values {
        out.push(char::from(*alphabet.get(usize::from(v))?));
    }
    Some(())
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`]: the resident-ID validator's own
/// `civil_from_days`, widened.
fn civil_from_days(days: i64) -> (u64, u64, u64) {
    let (y, m, d) = classes::civil_from_days(days);
    (u64::from(y), u64::from(m), u64::from(d))
}
