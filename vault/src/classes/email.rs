//! `email`: an address with its local part exactly as entered and its domain
//! in lower-case ASCII (IDNA). Invariant: a value that leaves here has one
//! `@`, a non-empty local part of at most 64 bytes without whitespace,
//! control or invisible formatting characters, a domain of valid DNS labels with at least one dot,
//! and at most 254 bytes in all; its token form is the whole address
//! lower-cased, so `A@X.cn` and `a@x.cn` share a token.

use super::{Invalid, Normalized, FULL_MASK};

const MAX_LOCAL_BYTES: usize = 64;
const MAX_ADDRESS_BYTES: usize = 254;

pub(super) fn normalize(raw: &str) -> Result<Normalized, Invalid> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Invalid::Empty);
    }
    if raw.len() > MAX_ADDRESS_BYTES * 4 {
        return Err(Invalid::TooLong);
    }
    // NFKC on the separator only: the local part is kept as entered, and
    // IDNA applies its own mapping (which includes NFKC) to the domain.
    let mut parts = raw.split(['@', '＠', '﹫']);
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Invalid::Format);
    };
    check_local(local)?;
    let mut value = String::with_capacity(local.len() + 1 + domain.len());
    value.push_str(local);
    value.push('@');
    push_ascii_domain(&mut value, domain)?;
    let ascii_domain = value.get(local.len() + 1..).unwrap_or_default();
    if !ascii_domain.contains('.') || !ascii_domain.split('.').all(label_ok) {
        return Err(Invalid::Format);
    }
    if value.len() > MAX_ADDRESS_BYTES {
        return Err(Invalid::TooLong);
    }
    // Only the local part can change: the domain is lower-case already. A
    // second string is spent only when lower-casing changes something.
    let token_form = if value.is_ascii() {
        local
            .bytes()
            .any(|b| b.is_ascii_uppercase())
            .then(|| value.to_ascii_lowercase())
    } else {
        let changes = local
            .chars()
            .any(|c| !c.to_lowercase().eq(std::iter::once(c)));
        changes.then(|| value.to_lowercase())
    };
    Ok(Normalized {
        value,
        token_form,
        flag: None,
    })
}

fn check_local(local: &str) -> Result<(), Invalid> {
    if local.is_empty() {
        return Err(Invalid::Format);
    }
    if local.len() > MAX_LOCAL_BYTES {
        return Err(Invalid::TooLong);
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || super::is_invisible(c))
    {
        return Err(Invalid::Charset);
    }
    Ok(())
}

/// Appends the domain as lower-case ASCII. Plain ASCII host names skip
/// IDNA, which would only lower-case them; anything else (non-ASCII, or an
/// `xn--` label to verify) goes through `idna::domain_to_ascii`.
fn push_ascii_domain(out: &mut String, domain: &str) -> Result<(), Invalid> {
    let plain = domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !domain
            .split('.')
            .any(|l| l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")));
    if plain {
        out.extend(domain.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        out.push_str(&idna::domain_to_ascii(domain).map_err(|_| Invalid::Format)?);
    }
    Ok(())
}

/// A DNS host label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
fn label_ok(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// The first character of the local part, `***`, and the domain
/// (`c***@example.com`).
pub(super) fn mask(value: &str) -> String {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return FULL_MASK.to_string();
    };
    let Some(first) = local.chars().next() else {
        return FULL_MASK.to_string();
    };
    let mut out = String::with_capacity(first.len_utf8() + 4 + domain.len());
    out.push(first);
    out.push_str("***@");
    out.push_str(domain);
    out
}
