//! PII classes: what a value is, how it is normalized and validated, and how
//! it is masked for display (PII-FORMATS.md is the authority). Invariant: one
//! real-world value has exactly one normalized form per class, whatever the
//! width, case or separators it arrived in, so it always gets the same token;
//! and nothing in this module ever puts any part of a value into an error or
//! a `Debug` string.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
use zeroize::Zeroize;

mod email;
mod ip;
mod misc;
mod name;
mod org_code;
mod phone;
pub(crate) mod phone_areas;
mod resident_id;
mod uscc;

/// For the name detector, which keeps compound surnames whole too.
pub(crate) use name::COMPOUND_SURNAMES;
pub(crate) use resident_id::civil_from_days;

#[cfg(test)]
mod tests;

/// What a value is. The tag of each class is part of every token derived for
/// it, so tags are fixed forever and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    Name,
    CnResidentId,
    Phone,
    Email,
    Uscc,
    OrgCode,
    Passport,
    BankCard,
    Ip,
    Address,
    Text,
}

impl Class {
    /// Every class, in tag order (`ALL[i].tag() == i + 1`).
    pub const ALL: [Class; 11] = [
        Class::Name,
        Class::CnResidentId,
        Class::Phone,
        Class::Email,
        Class::Uscc,
        Class::OrgCode,
        Class::Passport,
        Class::BankCard,
        Class::Ip,
        Class::Address,
        Class::Text,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Name => "name",
            Class::CnResidentId => "cn_resident_id",
            Class::Phone => "phone",
            Class::Email => "email",
            Class::Uscc => "uscc",
            Class::OrgCode => "org_code",
            Class::Passport => "passport",
            Class::BankCard => "bank_card",
            Class::Ip => "ip",
            Class::Address => "address",
            Class::Text => "text",
        }
    }

    /// The inverse of [`Class::as_str`]; exact, case-sensitive match.
    pub fn parse(s: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Stable one-byte tag (1..=11), mixed into token derivation. Written out
    /// rather than derived from the declaration order so that reordering the
    /// enum can never change a token.
    pub fn tag(self) -> u8 {
        match self {
            Class::Name => 1,
            Class::CnResidentId => 2,
            Class::Phone => 3,
            Class::Email => 4,
            Class::Uscc => 5,
            Class::OrgCode => 6,
            Class::Passport => 7,
            Class::BankCard => 8,
            Class::Ip => 9,
            Class::Address => 10,
            Class::Text => 11,
        }
    }

    pub fn from_tag(t: u8) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.tag() == t)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A class name that is not one of [`Class::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown class")]
pub struct UnknownClass;

impl FromStr for Class {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Class::parse(s).ok_or(UnknownClass)
    }
}

/// A value accepted, but with a remark the caller and the metrics should see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// The check character is wrong, yet such values exist in the wild
    /// (early USCC pilot codes, some old bank cards).
    ChecksumFailed,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::ChecksumFailed => "checksum_failed",
        }
    }
}

/// Why a value was rejected. A closed enum: it never carries any part of the
/// value, so it is safe to log and to return to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the value is empty")]
    Empty,
    #[error("the value is too long")]
    TooLong,
    #[error("wrong number of characters")]
    Length,
    #[error("a character not allowed in this class")]
    Charset,
    #[error("wrong check character")]
    Checksum,
    #[error("not a real birth date")]
    Date,
    #[error("unknown country code or number prefix")]
    Prefix,
    #[error("not in a recognised format")]
    Format,
}

/// A value in its class's canonical form. Holds plaintext PII: `Debug`
/// redacts it and the memory is wiped on drop.
pub struct Normalized {
    /// What detokenize returns.
    value: String,
    /// Set only where tokens are computed on another form than `value`
    /// (email: the whole address lower-cased); `None` means `value`.
    token_form: Option<String>,
    flag: Option<Flag>,
}

impl Normalized {
    fn new(value: String) -> Self {
        Normalized {
            value,
            token_form: None,
            flag: None,
        }
    }

    fn flagged(value: String, flag: Option<Flag>) -> Self {
        Normalized {
            value,
            token_form: None,
            flag,
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// The form tokens are computed on.
    pub fn token_form(&self) -> &str {
        self.token_form.as_deref().unwrap_or(&self.value)
    }

    pub fn flag(&self) -> Option<Flag> {
        self.flag
    }

    pub fn into_value(mut self) -> String {
        // `Drop` forbids moving the field out; taking it leaves an empty
        // string behind for `Drop` to wipe.
        std::mem::take(&mut self.value)
    }
}

impl fmt::Debug for Normalized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Normalized")
            .field("value", &"[REDACTED]")
            .field(
                "token_form",
                &self.token_form.as_ref().map(|_| "[REDACTED]"),
            )
            .field("flag", &self.flag)
            .finish()
    }
}

impl Drop for Normalized {
    fn drop(&mut self) {
        self.value.zeroize();
        self.token_form.zeroize();
    }
}

/// Validates `raw` as a value of `class` and brings it to canonical form.
pub fn normalize(class: Class, raw: &str) -> Result<Normalized, Invalid> {
    match class {
        Class::Name => name::normalize(raw).map(Normalized::new),
        Class::CnResidentId => resident_id::normalize(raw).map(Normalized::new),
        Class::Phone => phone::normalize(raw).map(Normalized::new),
        Class::Email => email::normalize(raw),
        Class::Uscc => uscc::normalize(raw).map(|(v, f)| Normalized::flagged(v, f)),
        Class::OrgCode => org_code::normalize(raw).map(Normalized::new),
        Class::Passport => misc::passport(raw).map(Normalized::new),
        Class::BankCard => misc::bank_card(raw).map(|(v, f)| Normalized::flagged(v, f)),
        Class::Ip => ip::normalize(raw).map(Normalized::new),
        Class::Address => misc::address(raw).map(Normalized::new),
        Class::Text => misc::text(raw).map(Normalized::new),
    }
}

/// The display mask of a normalized value (the input is
/// [`Normalized::value`]). Never fails: a value that does not have its
/// class's shape is masked entirely, as `***`.
///
/// Resident ID and bank card keep the first 6 and last 4 characters; USCC
/// the first 2 (authority and type) and last 4; organization code the first
/// 2 and the hyphen with the check; passport the first letter and last 3;
/// phone, email, name, IP and address are described in their modules; text
/// is always `***`. Kept ends aside, each hidden character is one star.
pub fn mask(class: Class, normalized_value: &str) -> String {
    let v = normalized_value;
    match class {
        Class::Name => name::mask(v),
        Class::CnResidentId => keep_ends(v, 6, 4),
        Class::Phone => phone::mask(v),
        Class::Email => email::mask(v),
        Class::Uscc => keep_ends(v, 2, 4),
        Class::OrgCode => keep_ends(v, 2, 2),
        Class::Passport => keep_ends(v, 1, 3),
        Class::BankCard => keep_ends(v, 6, 4),
        Class::Ip => ip::mask(v),
        Class::Address => misc::mask_address(v),
        Class::Text => FULL_MASK.to_string(),
    }
}

/// The non-identifying generalization kept for statistics when an expired
/// value is anonymized instead of deleted: resident ID, province code and
/// birth year; phone, the number block (first three digits); email, the
/// domain; IP, the /16 (IPv4) or /32 (IPv6) network. Other classes keep
/// nothing but their class.
pub fn generalize(class: Class, normalized_value: &str) -> String {
    let v = normalized_value;
    let chars: Vec<char> = v.chars().collect();
    let slice = |a: usize, b: usize| chars.get(a..b).map(|c| c.iter().collect::<String>());
    match class {
        Class::CnResidentId => match (slice(0, 2), slice(6, 10)) {
            (Some(p), Some(y)) if chars.len() == 18 => format!("province={p};birth_year={y}"),
            _ => String::new(),
        },
        Class::Phone => v
            .strip_prefix("+86")
            .and_then(|n| n.get(..3))
            .map(|b| format!("block={b}"))
            .unwrap_or_default(),
        Class::Email => v
            .rsplit_once('@')
            .map(|(_, d)| format!("domain={d}"))
            .unwrap_or_default(),
        // Coarser than PII-FORMATS.md's /24 or /48 on purpose: these counts
        // outlive the values' deletion as anonymized data (PIPL Art. 73),
        // and a /24 is often one household or one office. The network is
        // written in RFC 5952 form.
        Class::Ip => match v.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => {
                let [x, y, ..] = a.octets();
                format!("net={x}.{y}.0.0/16")
            }
            Ok(std::net::IpAddr::V6(a)) => {
                let s = a.segments();
                let net = std::net::Ipv6Addr::new(
                    s.first().copied().unwrap_or(0),
                    s.get(1).copied().unwrap_or(0),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                );
                format!("net={net}/32")
            }
            Err(_) => String::new(),
        },
        _ => String::new(),
    }
}

/// What a value that cannot be masked by its class's rule is shown as.
const FULL_MASK: &str = "***";

/// Keeps the first `head` and last `tail` characters and stars the ones
/// between, one star each. A value too short to hide anything that way is
/// starred whole, so a mask never equals the value.
fn keep_ends(v: &str, head: usize, tail: usize) -> String {
    let n = v.chars().count();
    if n <= head + tail {
        return FULL_MASK.to_string();
    }
    let mut out = String::with_capacity(v.len());
    out.extend(
        v.chars()
            .enumerate()
            .map(|(i, c)| if i < head || i >= n - tail { c } else { '*' }),
    );
    out
}

/// NFKC, the first step for every class. ASCII, and most Chinese text, is
/// already in NFKC, which the quick check sees without allocating.
fn nfkc(raw: &str) -> Cow<'_, str> {
    if raw.is_ascii() || is_nfkc_quick(raw.chars()) == IsNormalized::Yes {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(raw.nfkc().collect())
    }
}

/// Rejects input longer than `max_chars` before any work is spent on it.
/// Counted on the raw input: NFKC never turns more than a few raw characters
/// into one, so four raw bytes per character is a safe bound.
fn precheck(raw: &str, max_chars: usize) -> Result<(), Invalid> {
    if raw.len() > max_chars.saturating_mul(4) {
        return Err(Invalid::TooLong);
    }
    Ok(())
}

/// Invisible formatting characters that copy and paste carry into values:
/// zero-width spaces and joiners, the soft hyphen, the byte-order mark, and
/// the bidirectional marks and overrides (which would also reorder a mask
/// on a display). NFKC keeps them, and a value with one would get a second
/// token for the same real value, so every class drops them (an e-mail
/// local part, kept as entered, refuses them instead).
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Characters that separate groups in identity, card and phone numbers and
/// carry no information (PII-FORMATS.md, normalization step 2). The katakana
/// middle dot is in because NFKC leaves it alone and IMEs produce it for `·`;
/// so is the minus sign U+2212, which NFKC also leaves alone and which text
/// set by word processors and typesetters puts where a hyphen was typed (the
/// contract's list omits it; the detector always read it as a dash, so a
/// number written with it passed deidentify in clear).
fn is_separator(c: char) -> bool {
    c.is_whitespace()
        || is_invisible(c)
        || matches!(
            c,
            '-' | '\u{2010}'
                ..='\u{2015}' | '\u{2212}' | '.' | '(' | ')' | '（' | '）' | '/' | '·' | '・'
        )
}

/// Most characters a number class accepts, after separators are gone.
const MAX_NUMBER_CHARS: usize = 256;

/// NFKC, separators stripped, ASCII upper-cased: the common front half of
/// every number class. Non-ASCII characters that survive are kept, for the
/// class's charset check to reject.
fn compact(raw: &str) -> Result<String, Invalid> {
    precheck(raw, MAX_NUMBER_CHARS)?;
    let text = nfkc(raw);
    let mut out = String::with_capacity(text.len());
    if text.is_ascii() {
        // The common case, a byte at a time: measurably faster than `chars`.
        for b in text.bytes() {
            // The ASCII members of `is_separator`: whitespace is 9-13 and 32.
            if !matches!(b, 9..=13 | b' ' | b'-' | b'.' | b'(' | b')' | b'/') {
                out.push(char::from(b.to_ascii_uppercase()));
            }
        }
    } else {
        let kept = text.chars().filter(|&c| !is_separator(c));
        out.extend(kept.map(|c| c.to_ascii_uppercase()));
    }
    if out.len() > MAX_NUMBER_CHARS && out.chars().count() > MAX_NUMBER_CHARS {
        return Err(Invalid::TooLong);
    }
    if out.is_empty() {
        return Err(Invalid::Empty);
    }
    Ok(out)
}

/// NFKC, trimmed, every run of whitespace made one space, control characters
/// rejected: the common front half of the free-text classes.
fn collapse_spaces(raw: &str, max_bytes: usize) -> Result<String, Invalid> {
    precheck(raw, max_bytes)?;
    // Invisible characters go before NFKC: one between a letter and its
    // combining mark (`e\u{200B}\u{301}`) would otherwise keep them apart,
    // and normalizing the result again would compose them (two values).
    let visible: Cow<'_, str> = if raw.chars().any(is_invisible) {
        Cow::Owned(raw.chars().filter(|&c| !is_invisible(c)).collect())
    } else {
        Cow::Borrowed(raw)
    };
    let text = nfkc(&visible);
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.is_empty() {
        return Err(Invalid::Empty);
    }
    if out.len() > max_bytes {
        return Err(Invalid::TooLong);
    }
    if out.chars().any(char::is_control) {
        return Err(Invalid::Charset);
    }
    Ok(out)
}

/// The numeric value of an ASCII digit.
fn digit(b: u8) -> Option<u32> {
    char::from(b).to_digit(10)
}
