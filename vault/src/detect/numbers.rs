//! Number-like candidates from one token start: digit groups joined by
//! single separators (phones, resident IDs, bank cards, permits) and single
//! alphanumeric codes (USCC, organization codes, passports). Invariant: a
//! start reads at most [`MAX_DIGITS`] digits in [`MAX_GROUPS`] groups, or
//! [`MAX_CODE`] code characters, and a candidate is reported only where its
//! last group is not glued to more digits or letters, and only if
//! [`crate::classes::normalize`] accepts its span.

use std::cell::OnceCell;

use super::chars::{self, Ch};
use super::lexicon::{self, Cue, Hit};
use super::scan::{tail, Tail};
use super::Candidate;
use crate::classes::Class;

/// More than `0086`, a trunk `0` and a 12-digit number, or 19 card digits.
const MAX_DIGITS: usize = 24;
const MAX_GROUPS: usize = 8;
/// The longest code read as one token (USCC has 18 characters).
const MAX_CODE: usize = 20;
const MAX_EXTENSION: usize = 6;

/// The end of the digit groups read so far.
#[derive(Clone, Copy, Debug, Default)]
struct Cut {
    /// Digits up to here.
    n: usize,
    /// Byte offset just after the last digit.
    end: usize,
    tail: Tail,
}

/// Digit groups read from one start.
struct Groups {
    digits: [u8; MAX_DIGITS],
    cuts: [Cut; MAX_GROUPS],
    ncuts: usize,
    plus: bool,
    /// The first group was an area code in parentheses.
    paren: bool,
    /// 17 digits followed directly by `X`: the end after it and its tail.
    x: Option<(usize, Tail)>,
}

impl Groups {
    fn cuts(&self) -> &[Cut] {
        self.cuts.get(..self.ncuts).unwrap_or_default()
    }

    fn digits(&self, cut: Cut) -> &[u8] {
        self.digits.get(..cut.n).unwrap_or_default()
    }
}

fn read_groups(bytes: &[u8], start: usize) -> Groups {
    let mut g = Groups {
        digits: [0; MAX_DIGITS],
        cuts: [Cut::default(); MAX_GROUPS],
        ncuts: 0,
        plus: false,
        paren: false,
        x: None,
    };
    let mut i = start;
    let mut open = false;
    match chars::at(bytes, i) {
        (Ch::Punct(b'+'), w) => (g.plus, i) = (true, i + w),
        (Ch::Punct(b'('), w) => {
            (open, i) = (true, i + w);
            // `(+86)`: the country code in parentheses.
            if let (Ch::Punct(b'+'), w) = chars::at(bytes, i) {
                (g.plus, i) = (true, i + w);
            }
        }
        _ => {}
    }
    let mut n = 0;
    while g.ncuts < MAX_GROUPS {
        let group_start = n;
        while let (Ch::Digit(d), w) = chars::at(bytes, i) {
            let Some(slot) = g.digits.get_mut(n) else {
                // Too long for any class: this group is no value's end.
                return g;
            };
            *slot = d;
            n += 1;
            i += w;
        }
        if n == group_start {
            break;
        }
        let end = i;
        let (c, w) = chars::at(bytes, i);
        if open {
            open = false;
            if c != Ch::Punct(b')') {
                return g;
            }
            g.paren = true;
            i += w;
            if let (Ch::Space, w) = chars::at(bytes, i) {
                i += w;
            }
            if !chars::at(bytes, i).0.is_digit() {
                return g;
            }
            push_cut(&mut g, n, end, Tail::DashMore);
            continue;
        }
        if matches!(c, Ch::Letter(b'X' | b'x')) && n == 17 {
            g.x = Some((i + w, tail(bytes, i + w)));
        }
        // `+86 (0)591 ...`, `+86 (591) ...`: a group in parentheses after
        // the country code (the trunk zero, the area code or both) is read
        // like a leading `(0591)`, and the number goes on.
        if g.plus && g.ncuts == 0 && g.digits.get(..n) == Some(b"86".as_slice()) {
            if let Some(next) = paren_after(bytes, end) {
                push_cut(&mut g, n, end, Tail::DashMore);
                open = true;
                i = next;
                continue;
            }
        }
        let t = tail(bytes, end);
        // One separator, or a short run of them (`138 - 0013 - 8000`).
        let (t, skip) = match (t, super::scan::separator_run(bytes, end)) {
            (Tail::Free, Some(run)) => run,
            (t, _) => (t, w),
        };
        push_cut(&mut g, n, end, t);
        let more = matches!(t, Tail::SpaceMore | Tail::DashMore)
            && chars::at(bytes, i + skip).0.is_digit();
        if !more {
            break;
        }
        i += skip;
    }
    g
}

/// After `+86` at byte `i`: an optional space, `(` and a digit. Returns
/// where that digit starts.
fn paren_after(bytes: &[u8], mut i: usize) -> Option<usize> {
    if let (Ch::Space, w) = chars::at(bytes, i) {
        i += w;
    }
    let (Ch::Punct(b'('), w) = chars::at(bytes, i) else {
        return None;
    };
    chars::at(bytes, i + w).0.is_digit().then_some(i + w)
}

fn push_cut(g: &mut Groups, n: usize, end: usize, tail: Tail) {
    if let Some(slot) = g.cuts.get_mut(g.ncuts) {
        *slot = Cut { n, end, tail };
        g.ncuts += 1;
    }
}

/// The cue before a start, looked up only once a candidate needs it: most
/// starts (words, short numbers) never do.
struct LazyCue<'a> {
    text: &'a str,
    hits: &'a [Hit],
    start: usize,
    cell: OnceCell<Option<Cue>>,
}

impl LazyCue<'_> {
    fn get(&self) -> Option<Cue> {
        *self
            .cell
            .get_or_init(|| lexicon::cue_before(self.text, self.hits, self.start))
    }

    fn is(&self, class: Class) -> bool {
        self.get() == Some(Cue::Number(class))
    }
}

/// Every candidate starting at byte `start` (a digit, a letter, `+` or `(`).
pub(super) fn at(text: &str, start: usize, hits: &[Hit], out: &mut Vec<Candidate>) {
    let cue = LazyCue {
        text,
        hits,
        start,
        cell: OnceCell::new(),
    };
    let before = out.len();
    let bytes = text.as_bytes();
    let first = chars::at(bytes, start).0;
    if first.is_digit() || matches!(first, Ch::Punct(b'+' | b'(')) {
        let g = read_groups(bytes, start);
        let cx = Ctx {
            text,
            start,
            cue: &cue,
            g: &g,
        };
        for (k, &cut) in g.cuts().iter().enumerate() {
            cx.phone(k, cut, out);
            if !g.plus && !g.paren {
                cx.resident_id(cut, out);
                cx.bank_card(k, cut, out);
                cx.permit(cut, out);
            }
        }
    }
    if first.is_alnum() {
        code(text, start, &cue, out);
    }
    // A number labelled as something else (`订单号`) is not PII, unless
    // it is a resident ID or USCC whose check character holds: an anti-cue
    // is a guess about the label, the checksum is a fact about the number
    // (`身份证编号` reads as `身份证` + `编号` to a shorter lexicon).
    if out.len() > before && cue.get() == Some(Cue::Anti) {
        let mut kept = before;
        for i in before..out.len() {
            let keep = out.get(i).is_some_and(|c| {
                c.validated && matches!(c.class, Class::CnResidentId | Class::Uscc)
            });
            if keep {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
    }
    // After a device label, a 15-digit run is an IMEI, not a resident ID
    // of the first generation (which has no check character to say so).
    if out.len() > before && cue.get() == Some(Cue::Device) {
        let mut i = before;
        while i < out.len() {
            let legacy = out
                .get(i)
                .is_some_and(|c| c.class == Class::CnResidentId && !c.validated);
            if legacy {
                out.remove(i);
            } else {
                i += 1;
            }
        }
    }
}

struct Ctx<'a> {
    text: &'a str,
    start: usize,
    cue: &'a LazyCue<'a>,
    g: &'a Groups,
}

impl Ctx<'_> {
    fn cued(&self, class: Class) -> bool {
        self.cue.is(class)
    }

    fn push(&self, out: &mut Vec<Candidate>, class: Class, end: usize, confidence: f32) {
        if let Some(validated) = Candidate::check(self.text, class, self.start, end) {
            out.push(Candidate {
                class,
                start: self.start,
                end,
                confidence,
                validated,
            });
        }
    }

    fn phone(&self, k: usize, cut: Cut, out: &mut Vec<Candidate>) {
        let d = self.g.digits(cut);
        let (national, prefixed) = if self.g.plus {
            match d.strip_prefix(b"86") {
                Some(rest) => (rest, true),
                None => return,
            }
        } else if let Some(rest) = d.strip_prefix(b"0086") {
            (rest, true)
        } else if let (13, Some(rest)) = (d.len(), d.strip_prefix(b"86")) {
            (rest, true)
        } else {
            (d, false)
        };
        let (national, trunk) = match national.strip_prefix(b"0") {
            Some(rest) => (rest, true),
            None => (national, false),
        };
        let mobile = !trunk && national.len() == 11 && national.starts_with(b"1");
        let service = national.starts_with(b"400") || national.starts_with(b"800");
        let fixed =
            (trunk || prefixed) && !mobile && !service && (9..=11).contains(&national.len());
        if !mobile && !fixed {
            return;
        }
        let bytes = self.text.as_bytes();
        let end = match extension(bytes, cut.end) {
            Some(end) => end,
            None if cut.tail.bounded() => cut.end,
            None if fixed && self.hyphen_extension(k) => cut.end,
            None => return,
        };
        let mut confidence: f32 = if self.cued(Class::Phone) || prefixed {
            0.95
        } else if mobile {
            0.88
        } else if self.g.paren || k > 0 && self.g.cuts().first().is_some_and(|c| c.n <= 4) {
            0.85
        } else {
            0.7
        };
        if cut.tail == Tail::SpaceMore && end == cut.end {
            confidence -= 0.1;
        }
        self.push(out, Class::Phone, end, confidence);
    }

    /// Whether group `k` of a fixed line is followed by a dash and one short
    /// last group, the extension as Chinese companies write it
    /// (`0591-88088788-8001`).
    fn hyphen_extension(&self, k: usize) -> bool {
        let cuts = self.g.cuts();
        let (Some(this), Some(next)) = (cuts.get(k), cuts.get(k + 1)) else {
            return false;
        };
        this.tail == Tail::DashMore
            && k + 2 == cuts.len()
            && (1..=5).contains(&(next.n - this.n))
            && next.tail.bounded()
    }

    fn resident_id(&self, cut: Cut, out: &mut Vec<Candidate>) {
        let (end, tail) = match (cut.n, self.g.x) {
            (17, Some((end, tail))) => (end, tail),
            (18 | 15, _) => (cut.end, cut.tail),
            _ => return,
        };
        if !tail.bounded() {
            return;
        }
        let cued = self.cued(Class::CnResidentId);
        let confidence = match (cut.n, cued, tail) {
            (15, true, _) => 0.9,
            // Unlabelled, a legacy ID is taken only with a province code.
            (15, false, _) if province(self.g.digits(cut)) => 0.6,
            (15, false, _) => 0.45,
            (_, true, _) => 0.995,
            (_, false, Tail::SpaceMore) => 0.95,
            _ => 0.99,
        };
        self.push(out, Class::CnResidentId, end, confidence);
    }

    fn bank_card(&self, k: usize, cut: Cut, out: &mut Vec<Candidate>) {
        if !(12..=19).contains(&cut.n) || !cut.tail.bounded() {
            return;
        }
        let d = self.g.digits(cut);
        let Some(luhn) = Candidate::check(self.text, Class::BankCard, self.start, cut.end) else {
            return;
        };
        // A prefix of a longer spaced group is less likely than the whole.
        let partial = if cut.tail == Tail::SpaceMore {
            0.05
        } else {
            0.0
        };
        let confidence = if self.cued(Class::BankCard) {
            if luhn {
                0.97 - partial
            } else {
                0.8 - partial
            }
        } else {
            let issuer = matches!(d.first(), Some(b'3'..=b'6' | b'9'));
            // Under another class's label, not a card; a device label
            // (`串号`, also in `这串号码`) is no such label.
            let labelled = self.cue.get().is_some_and(|c| c != Cue::Device);
            if !luhn || !issuer || !matches!(cut.n, 16 | 19) || labelled {
                return;
            }
            let grouped = k >= 3;
            if d.starts_with(b"62") || grouped {
                0.92 - partial
            } else {
                0.88 - partial
            }
        };
        out.push(Candidate {
            class: Class::BankCard,
            start: self.start,
            end: cut.end,
            confidence,
            validated: luhn,
        });
    }

    /// The Taiwan residents' permit, 8 bare digits: only where a cue says so.
    fn permit(&self, cut: Cut, out: &mut Vec<Candidate>) {
        if cut.n == 8 && cut.tail.bounded() && self.cued(Class::Passport) {
            self.push(out, Class::Passport, cut.end, 0.85);
        }
    }
}

/// Whether a resident ID starts with a province-level division code (GB/T
/// 2260: 11-15, 21-23, 31-37, 41-46, 50-54, 61-65; 71 Taiwan; 81-83 the
/// residence permits).
fn province(d: &[u8]) -> bool {
    matches!(
        d,
        [b'1', b'1'..=b'5', ..]
            | [b'2', b'1'..=b'3', ..]
            | [b'3', b'1'..=b'7', ..]
            | [b'4', b'1'..=b'6', ..]
            | [b'5', b'0'..=b'4', ..]
            | [b'6', b'1'..=b'5', ..]
            | [b'7', b'1', ..]
            | [b'8', b'1'..=b'3', ..]
    )
}

/// An extension after a phone number ending at `end`: an optional space,
/// `转`, `分机`, `分机号`, `转分机`, `ext`, `x` or `#`, an optional colon and space, and 1 to 6
/// digits not glued to more. Returns the end of the extension digits.
fn extension(bytes: &[u8], end: usize) -> Option<usize> {
    let mut i = end;
    if let (Ch::Space, w) = chars::at(bytes, i) {
        i += w;
    }
    let rest = bytes.get(i..)?;
    let marker = [
        "转分机".as_bytes(),
        "转".as_bytes(),
        "分机号".as_bytes(),
        "分机".as_bytes(),
        b"ext.",
        b"ext",
        b"EXT",
        b"Ext",
        b"x",
        b"X",
        b"#",
    ]
    .into_iter()
    .find(|m| rest.starts_with(m))?;
    i += marker.len();
    if let (Ch::Punct(b':'), w) = chars::at(bytes, i) {
        i += w;
    }
    if let (Ch::Space, w) = chars::at(bytes, i) {
        i += w;
    }
    let from = i;
    let mut count = 0;
    while let (Ch::Digit(_), w) = chars::at(bytes, i) {
        count += 1;
        i += w;
        if count > MAX_EXTENSION {
            return None;
        }
    }
    (count > 0 && from < i && tail(bytes, i).bounded()).then_some(i)
}

/// A code of letters and digits starting at `start`: USCC, organization
/// code, passport or permit, or a resident ID ending in `X` (found by the
/// group reader too; the duplicate is harmless).
fn code(text: &str, start: usize, cue: &LazyCue<'_>, out: &mut Vec<Candidate>) {
    let bytes = text.as_bytes();
    let mut buf = [0u8; MAX_CODE];
    let mut len = 0;
    let mut i = start;
    while let (Ch::Digit(b) | Ch::Letter(b), w) = chars::at(bytes, i) {
        let slot = match buf.get_mut(len) {
            Some(slot) => slot,
            None => return,
        };
        *slot = b;
        len += 1;
        i += w;
    }
    let code = buf.get(..len).unwrap_or_default();
    let digits = code.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = digits < len;
    let t = tail(bytes, i);
    let cued = |class| cue.is(class);
    let mut push = |class, end, confidence: f32, need_check: bool| {
        if let Some(validated) = Candidate::check(text, class, start, end) {
            if need_check && !validated {
                return;
            }
            out.push(Candidate {
                class,
                start,
                end,
                confidence,
                validated,
            });
        }
    };
    // `XXXXXXXX-X`: the dash and check character after an 8-character body.
    if len == 8 && t == Tail::DashMore {
        let (_, dash) = chars::at(bytes, i);
        if let (Ch::Digit(_) | Ch::Letter(b'X' | b'x'), w) = chars::at(bytes, i + dash) {
            let end = i + dash + w;
            if tail(bytes, end).bounded() {
                let confidence = if cued(Class::OrgCode) { 0.97 } else { 0.8 };
                push(Class::OrgCode, end, confidence, true);
            }
        }
        return;
    }
    // Every other code class holds digits, bar a labelled organization
    // code: plain words end here.
    if digits == 0 && !(len == 9 && cued(Class::OrgCode)) {
        return;
    }
    if !t.bounded() {
        return;
    }
    match len {
        9 if cued(Class::OrgCode) => push(Class::OrgCode, i, 0.95, true),
        18 if letters => {
            // 17 digits and `X` may be a resident ID too: a cue decides
            // between two valid readings, else the resident ID wins.
            if cued(Class::Uscc) {
                push(Class::Uscc, i, 0.995, false);
            } else {
                push(Class::Uscc, i, 0.97, true);
            }
        }
        18 if cued(Class::Uscc) => push(Class::Uscc, i, 0.995, false),
        _ => {}
    }
    // Passports start with an upper-case letter; under a passport label a
    // lower-case one is the same number typed carelessly.
    let prefix_ok = code
        .first()
        .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_lowercase() && cued(Class::Passport));
    if letters && prefix_ok && (8..=11).contains(&len) && digits + 2 >= len {
        let confidence = if cued(Class::Passport) || cued(Class::CnResidentId) {
            0.92
        } else if code.first() == Some(&b'E') {
            0.8
        } else {
            0.7
        };
        push(Class::Passport, i, confidence, false);
    }
}
