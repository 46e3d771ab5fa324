//! How long values are kept. This module owns the ISO 8601 duration grammar
//! (`P3Y`, `P180D`, `PT30S`) and the rule that turns a request's retention and
//! the policy into one expiry time. Invariant: a request can shorten retention
//! but never extend it past the policy's cap.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an ISO 8601 duration such as P3Y, P180D or PT30S")]
pub struct BadDuration;

const DAY: u64 = 86_400;

/// Parses an ISO 8601 duration of whole units. A year counts 365 days and a
/// month 30: retention is a legal minimum or maximum, and the policy's caps
/// are written in the same units, so the convention only needs to be fixed.
pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let rest = text.strip_prefix('P').ok_or(BadDuration)?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(BadDuration),
        None => (rest, None),
    };
    let mut secs = units(
        date,
        &[
            ('Y', 365 * DAY),
            ('M', 30 * DAY),
            ('W', 7 * DAY),
            ('D', DAY),
        ],
    )?;
    if let Some(t) = time {
        secs = secs
            .checked_add(units(t, &[('H', 3600), ('M', 60), ('S', 1)])?)
            .ok_or(BadDuration)?;
    }
    if date.is_empty() && time.is_none() {
        return Err(BadDuration);
    }
    Ok(Duration::from_secs(secs))
}

/// Sums `<digits><unit>` groups whose units appear in `order`, each at most once
/// and in that order.
fn units(mut s: &str, order: &[(char, u64)]) -> Result<u64, BadDuration> {
    let mut total: u64 = 0;
    let mut allowed = order.iter();
    while !s.is_empty() {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (num, tail) = s.split_at_checked(digits).ok_or(BadDuration)?;
        let mut chars = tail.chars();
        let unit = chars.next().ok_or(BadDuration)?;
        if num.is_empty() || num.len() > 9 {
            return Err(BadDuration);
        }
        let n: u64 = num.parse().map_err(|_| BadDuration)?;
        let (_, factor) = allowed.find(|(u, _)| *u == unit).ok_or(BadDuration)?;
        total = total
            .checked_add(n.checked_mul(*factor).ok_or(BadDuration)?)
            .ok_or(BadDuration)?;
        s = chars.as_str();
    }
    Ok(total)
}

/// The expiry (Unix ms) of a value collected at `now_ms`: the requested
/// retention capped by `cap`, or the class's collection-clock default. `None`
/// means it lives until an account event or erasure ends it.
pub fn expiry_ms(
    now_ms: u64,
    requested: Option<Duration>,
    class_default: Option<Duration>,
    cap: Duration,
) -> Option<u64> {
    let keep = match (requested, class_default) {
        (Some(r), Some(d)) => Some(r.min(d)),
        (Some(r), None) => Some(r),
        (None, d) => d,
    }?;
    let keep = keep.min(cap);
    Some(now_ms.saturating_add(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(
            parse_duration("P3Y").unwrap(),
            Duration::from_secs(3 * 365 * DAY)
        );
        assert_eq!(
            parse_duration("P180D").unwrap(),
            Duration::from_secs(180 * DAY)
        );
        assert_eq!(parse_duration("PT30S").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("P1Y2M3DT4H5M6S").unwrap().as_secs(),
            365 * DAY + 60 * DAY + 3 * DAY + 4 * 3600 + 5 * 60 + 6
        );
        assert_eq!(
            parse_duration("P2W").unwrap(),
            Duration::from_secs(14 * DAY)
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "P",
            "PT",
            "3Y",
            "P3",
            "PY",
            "P-1D",
            "P1.5D",
            "P1D2Y",
            "P1Y1Y",
            "PT1D",
            "P1H",
            "p3y",
            "P99999999999D",
            "P3Y ",
            "P１D",
        ] {
            assert_eq!(parse_duration(bad), Err(BadDuration), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_capped() {
        let day = Duration::from_secs(DAY);
        let cap = day * 365;
        assert_eq!(expiry_ms(0, None, None, cap), None);
        assert_eq!(expiry_ms(0, Some(day), None, cap), Some(86_400_000));
        assert_eq!(
            expiry_ms(0, Some(day * 1000), None, cap),
            Some(365 * 86_400_000)
        );
        assert_eq!(
            expiry_ms(0, Some(day * 200), Some(day * 180), cap),
            Some(180 * 86_400_000)
        );
        assert_eq!(expiry_ms(5, None, Some(day), cap), Some(5 + 86_400_000));
    }
}
