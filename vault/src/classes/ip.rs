//! `ip`: an IPv4 or IPv6 address. Invariant: a value that leaves here is
//! what `std` prints for the parsed address: IPv4 in dotted decimal without
//! leading zeros, IPv6 in RFC 5952 form, an IPv4-mapped IPv6 address as plain
//! IPv4, and never a zone id (it names an interface of one host, not the
//! address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{nfkc, precheck, Invalid, FULL_MASK};

/// Longer than any textual IPv6 address with a zone id.
const MAX_CHARS: usize = 64;

pub(super) fn normalize(raw: &str) -> Result<String, Invalid> {
    precheck(raw, MAX_CHARS)?;
    let text = nfkc(raw);
    let text = text.trim();
    if text.is_empty() {
        return Err(Invalid::Empty);
    }
    if text.len() > MAX_CHARS {
        return Err(Invalid::TooLong);
    }
    Ok(parse(text).ok_or(Invalid::Format)?.to_string())
}

/// Strict parse: `std` refuses leading zeros in IPv4 octets, which some
/// parsers read as octal, so `192.168.001.010` is not silently a different
/// address.
fn parse(text: &str) -> Option<IpAddr> {
    if let Ok(v4) = text.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    let (address, zone) = match text.split_once('%') {
        Some((address, zone)) => (address, Some(zone)),
        None => (text, None),
    };
    if zone.is_some_and(|z| z.is_empty() || z.chars().any(|c| c.is_whitespace())) {
        return None;
    }
    let v6 = address.parse::<Ipv6Addr>().ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Generalized for display as for statistics: IPv4 to its /24
/// (`192.168.1.*`), IPv6 to its /48 (`2001:db8:1::/48`).
pub(super) fn mask(value: &str) -> String {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.*")
        }
        Ok(IpAddr::V6(v6)) => {
            let [a, b, c, ..] = v6.segments();
            format!("{}/48", Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0))
        }
        Err(_) => FULL_MASK.to_string(),
    }
}
