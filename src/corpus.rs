//! A labelled synthetic corpus for the free-text PII detector
//! (`vault::detect`), and its evaluation.
//!
//! [`generate`] writes realistic Fujian government-portal text (application
//! forms, complaints, comments, customer-service chats, English and mixed
//! lines, OCR-ish forms) with PII of every class embedded in it, and decoys
//! that look like PII but are not (order, tracking, invoice and serial
//! numbers, amounts, dates, versions, ordinary words that begin with a
//! surname). Every [`Label`] is the PII exactly as written, in char offsets:
//! separators, `+86` prefixes and extensions included; field names such as
//! `姓名：` and honorifics such as `先生` excluded. The corpus is a pure
//! function of the seed, and document `i` depends only on the seed and `i`,
//! so a smaller corpus is a prefix of a larger one.
//!
//! [`evaluate`] runs the detector over a corpus and scores it per class:
//! exact (same class, same span) and lenient (same class, overlapping span).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vault::classes::Class;

// ---------------------------------------------------------------------------
// Corpus types
// ---------------------------------------------------------------------------

/// What kind of text a document imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DocKind {
    /// 申请表: a form with `姓名：`, `身份证号：`, … fields.
    Application,
    /// 投诉: a complaint in running prose.
    Complaint,
    /// 留言: a short comment or suggestion.
    Comment,
    /// Customer-service chat, one line per turn.
    Chat,
    /// English or mixed English/Chinese lines.
    English,
    /// A form as OCR returns it: table bars, odd spacing, full-width digits.
    OcrForm,
    /// Hand-written, hand-labelled text from `tests/data/detect-holdout.txt`.
    Holdout,
}

impl DocKind {
    pub const ALL: [DocKind; 6] = [
        DocKind::Application,
        DocKind::Complaint,
        DocKind::Comment,
        DocKind::Chat,
        DocKind::English,
        DocKind::OcrForm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Application => "application",
            DocKind::Complaint => "complaint",
            DocKind::Comment => "comment",
            DocKind::Chat => "chat",
            DocKind::English => "english",
            DocKind::OcrForm => "ocr_form",
            DocKind::Holdout => "holdout",
        }
    }
}

/// One PII occurrence: `start..end` in chars, end exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    pub class: Class,
    pub start: usize,
    pub end: usize,
}

/// A generated document and the PII in it.
#[derive(Clone, Debug)]
pub struct Doc {
    pub kind: DocKind,
    pub text: String,
    /// Sorted by `start`, never overlapping.
    pub labels: Vec<Label>,
}

impl Doc {
    /// The text of chars `start..end`.
    pub fn span(&self, start: usize, end: usize) -> String {
        char_span(&self.text, start, end)
    }
}

fn char_span(text: &str, start: usize, end: usize) -> String {
    text.chars()
        .skip(start)
        .take(end.saturating_sub(start))
        .collect()
}

/// The hand-labelled held-out set: texts written apart from this
/// generator's templates, so a detector tuned on the corpus is also scored
/// on phrasing it has not seen.
pub fn holdout() -> Vec<Doc> {
    include_str!("../tests/data/detect-holdout.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(parse_marked)
        .collect()
}

/// A line with its PII marked `⟦class|text⟧`: the plain text and labels.
/// `None` when a mark is malformed or names no class.
pub fn parse_marked(line: &str) -> Option<Doc> {
    let mut text = String::new();
    let mut labels = Vec::new();
    let mut chars = 0;
    let mut rest = line;
    while let Some(open) = rest.find('⟦') {
        let (before, after) = rest.split_at(open);
        text.push_str(before);
        chars += before.chars().count();
        let after = after.strip_prefix('⟦')?;
        let close = after.find('⟧')?;
        let (mark, tail) = after.split_at(close);
        let (class, value) = mark.split_once('|')?;
        let class = Class::parse(class)?;
        let n = value.chars().count();
        labels.push(Label {
            class,
            start: chars,
            end: chars + n,
        });
        text.push_str(value);
        chars += n;
        rest = tail.strip_prefix('⟧')?;
    }
    text.push_str(rest);
    Some(Doc {
        kind: DocKind::Holdout,
        text,
        labels,
    })
}

/// `docs` documents, deterministic in `seed`.
pub fn generate(seed: u64, docs: usize) -> Vec<Doc> {
    (0..docs).map(|i| generate_doc(seed, i)).collect()
}

/// Document `index` of the corpus of `seed`.
pub fn generate_doc(seed: u64, index: usize) -> Doc {
    let index = u64::try_from(index).unwrap_or(u64::MAX);
    let mut rng = StdRng::seed_from_u64(splitmix(seed ^ splitmix(index)));
    let kind = pick_w(
        &mut rng,
        &[
            (DocKind::Application, 24),
            (DocKind::Complaint, 20),
            (DocKind::Comment, 14),
            (DocKind::Chat, 18),
            (DocKind::English, 10),
            (DocKind::OcrForm, 14),
        ],
        DocKind::Application,
    );
    let mut b = Builder::default();
    let g = &mut rng;
    match kind {
        DocKind::Application => application(g, &mut b),
        DocKind::Complaint => complaint(g, &mut b),
        DocKind::Comment => comment(g, &mut b),
        DocKind::Chat => chat(g, &mut b),
        DocKind::English => english(g, &mut b),
        // Never drawn above; hand-written texts come from `holdout()`.
        DocKind::OcrForm | DocKind::Holdout => ocr_form(g, &mut b),
    }
    Doc {
        kind,
        text: b.text,
        labels: b.labels,
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Appends text and records labels in char offsets as it goes.
#[derive(Default)]
struct Builder {
    text: String,
    chars: usize,
    labels: Vec<Label>,
}

impl Builder {
    fn t(&mut self, s: &str) {
        self.text.push_str(s);
        self.chars += s.chars().count();
    }

    fn pii(&mut self, class: Class, s: &str) {
        let start = self.chars;
        self.t(s);
        self.labels.push(Label {
            class,
            start,
            end: self.chars,
        });
    }
}

// ---------------------------------------------------------------------------
// Random helpers
// ---------------------------------------------------------------------------

type R = StdRng;

fn pick(rng: &mut R, items: &[&'static str]) -> &'static str {
    items.choose(rng).copied().unwrap_or("")
}

fn pick_w<T: Copy>(rng: &mut R, items: &[(T, u32)], fallback: T) -> T {
    let total: u32 = items.iter().map(|&(_, w)| w).sum();
    if total == 0 {
        return fallback;
    }
    let mut x = rng.gen_range(0..total);
    for &(item, w) in items {
        if x < w {
            return item;
        }
        x -= w;
    }
    fallback
}

fn chance(rng: &mut R, p: f64) -> bool {
    rng.gen_bool(p.clamp(0.0, 1.0))
}

fn digit_char(d: u32) -> char {
    char::from_digit(d % 10, 10).unwrap_or('0')
}

fn digits(rng: &mut R, n: usize) -> String {
    (0..n).map(|_| digit_char(rng.gen_range(0..10))).collect()
}

/// `n` digits, the first not zero.
fn digits_nz(rng: &mut R, n: usize) -> String {
    let mut s = String::with_capacity(n);
    s.push(digit_char(rng.gen_range(1..10)));
    s.push_str(&digits(rng, n.saturating_sub(1)));
    s
}

fn digit_values(s: &str) -> impl Iterator<Item = u32> + '_ {
    s.chars().filter_map(|c| c.to_digit(10))
}

/// ASCII to full-width forms (space to the ideographic space).
pub fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' => '\u{3000}',
            '!'..='~' => char::from_u32(u32::from(c) + 0xFEE0).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// Groups `s` in runs of `sizes` (the last size repeats), joined by `sep`.
fn group(s: &str, sizes: &[usize], sep: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() * 2);
    let mut at = 0;
    let mut i = 0;
    while at < chars.len() {
        let size = sizes.get(i).or(sizes.last()).copied().unwrap_or(4).max(1);
        let end = (at + size).min(chars.len());
        if at > 0 {
            out.push_str(sep);
        }
        out.extend(chars.get(at..end).unwrap_or_default());
        at = end;
        i += 1;
    }
    out
}

fn colon(rng: &mut R) -> &'static str {
    pick(rng, &["：", "：", "：", "：", ":", ": ", "： "])
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        _ => 28,
    }
}

fn date(rng: &mut R, years: std::ops::RangeInclusive<u32>) -> (u32, u32, u32) {
    let y = rng.gen_range(years);
    let m = rng.gen_range(1..=12);
    let d = rng.gen_range(1..=days_in_month(y, m));
    (y, m, d)
}

// ---------------------------------------------------------------------------
// Check characters
// ---------------------------------------------------------------------------

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// GB 11643 check character of the first 17 digits of `body`.
pub fn resident_id_check(body: &str) -> char {
    let sum: u32 = digit_values(body).zip(ID_WEIGHTS).map(|(d, w)| d * w).sum();
    ID_CHECK
        .get(usize::try_from(sum % 11).unwrap_or(0))
        .map_or('0', |&b| char::from(b))
}

pub const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn uscc_value(c: char) -> Option<u32> {
    let b = u8::try_from(c).ok()?;
    let pos = USCC_ALPHABET.iter().position(|&a| a == b)?;
    u32::try_from(pos).ok()
}

/// GB 32100 check character of the first 17 characters of `body`.
pub fn uscc_check(body: &str) -> Option<char> {
    let mut sum = 0u32;
    for (c, w) in body.chars().zip(USCC_WEIGHTS) {
        sum += uscc_value(c)? * w;
    }
    let c = (31 - sum % 31) % 31;
    USCC_ALPHABET
        .get(usize::try_from(c).ok()?)
        .map(|&b| char::from(b))
}

const ORG_WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

/// GB 11714 check character of an 8-character body.
pub fn org_code_check(body: &str) -> Option<char> {
    let mut sum = 0u32;
    for (c, w) in body.chars().zip(ORG_WEIGHTS) {
        sum += c.to_digit(36)? * w;
    }
    Some(match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        c => digit_char(c),
    })
}

/// The Luhn check digit to append to `payload`.
pub fn luhn_digit(payload: &str) -> char {
    let sum: u32 = digit_values(payload)
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    digit_char((10 - sum % 10) % 10)
}

pub fn luhn_ok(number: &str) -> bool {
    let d: Vec<u32> = digit_values(number).collect();
    let Some((&last, payload)) = d.split_last() else {
        return false;
    };
    let payload: String = payload.iter().map(|&x| digit_char(x)).collect();
    luhn_digit(&payload) == digit_char(last)
}

// ---------------------------------------------------------------------------
// PII values
// ---------------------------------------------------------------------------

const ADDRESS_CODES: &[(&str, u32)] = &[
    ("350102", 12),
    ("350103", 6),
    ("350104", 6),
    ("350105", 3),
    ("350111", 6),
    ("350112", 2),
    ("350121", 4),
    ("350181", 4),
    ("350203", 8),
    ("350205", 3),
    ("350206", 6),
    ("350211", 4),
    ("350212", 3),
    ("350302", 3),
    ("350303", 3),
    ("350402", 1),
    ("350502", 4),
    ("350503", 3),
    ("350581", 3),
    ("350582", 5),
    ("350583", 3),
    ("350602", 3),
    ("350681", 2),
    ("350702", 2),
    ("350802", 3),
    ("350902", 2),
    ("110105", 2),
    ("110108", 2),
    ("310104", 2),
    ("440305", 3),
    ("440106", 2),
    ("330106", 2),
    ("360102", 1),
    ("420106", 1),
    ("510107", 1),
    ("430102", 1),
];

fn id_body(rng: &mut R, address: &str) -> String {
    let (y, m, d) = date(rng, 1940..=2012);
    format!("{address}{y:04}{m:02}{d:02}{:03}", rng.gen_range(1..1000))
}

/// A canonical, valid 18-character resident ID.
pub fn resident_id_canonical(rng: &mut R) -> String {
    let address = pick_w(rng, ADDRESS_CODES, "350102");
    let body = id_body(rng, address);
    let check = resident_id_check(&body);
    format!("{body}{check}")
}

/// A resident ID in one of the ways people write it.
fn resident_id(rng: &mut R) -> String {
    let form = rng.gen_range(0..100);
    if form < 8 {
        // Legacy 15-digit: address, YYMMDD, sequence; no check character.
        let address = pick_w(rng, ADDRESS_CODES, "350102");
        let (y, m, d) = date(rng, 1930..=1998);
        return format!(
            "{address}{:02}{m:02}{d:02}{:03}",
            y % 100,
            rng.gen_range(1..1000)
        );
    }
    let id = resident_id_canonical(rng);
    match form {
        8..=17 => group(&id, &[4], " "),
        18..=22 => group(&id, &[6, 8, 4], " "),
        23..=30 => fullwidth(&id),
        _ if id.ends_with('X') && chance(rng, 0.45) => id.replace('X', "x"),
        _ => id,
    }
}

/// Residence permit for Hong Kong, Macau and Taiwan residents.
fn residence_permit_id(rng: &mut R) -> String {
    let address = pick(rng, &["810000", "820000", "830000"]);
    let body = id_body(rng, address);
    let check = resident_id_check(&body);
    format!("{body}{check}")
}

const MOBILE_PREFIXES: &[&str] = &[
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145", "147", "150",
    "151", "152", "153", "155", "156", "157", "158", "159", "162", "166", "170", "171", "172",
    "173", "175", "176", "177", "178", "180", "181", "182", "183", "184", "185", "186", "187",
    "188", "189", "190", "191", "192", "193", "195", "196", "197", "198", "199",
];

fn mobile_canonical(rng: &mut R) -> String {
    let prefix = pick(rng, MOBILE_PREFIXES);
    format!("{prefix}{}", digits(rng, 8))
}

fn mobile(rng: &mut R) -> String {
    let n = mobile_canonical(rng);
    match rng.gen_range(0..100) {
        0..=49 => n,
        50..=61 => group(&n, &[3, 4, 4], "-"),
        62..=71 => group(&n, &[3, 4, 4], " "),
        72..=78 => format!("+86 {}", group(&n, &[3, 4, 4], " ")),
        79..=82 => format!("+86{n}"),
        83..=85 => format!("+86-{n}"),
        86..=88 => format!("0086-{n}"),
        89..=90 => format!("(+86){n}"),
        _ => fullwidth(&n),
    }
}

/// Area code and local-number length.
const AREA_CODES: &[(&str, usize, u32)] = &[
    ("0591", 8, 30),
    ("0592", 7, 16),
    ("0593", 7, 4),
    ("0594", 7, 4),
    ("0595", 8, 10),
    ("0596", 7, 5),
    ("0597", 7, 4),
    ("0598", 7, 4),
    ("0599", 7, 4),
    ("010", 8, 4),
    ("021", 8, 4),
    ("020", 8, 3),
    ("0755", 8, 3),
];

fn fixed_line(rng: &mut R) -> String {
    let weights: Vec<((&str, usize), u32)> =
        AREA_CODES.iter().map(|&(a, n, w)| ((a, n), w)).collect();
    let (area, len) = pick_w(rng, &weights, ("0591", 8));
    let local = format!(
        "{}{}",
        digit_char(rng.gen_range(2..9)),
        digits(rng, len - 1)
    );
    let number = match rng.gen_range(0..100) {
        0..=44 => format!("{area}-{local}"),
        45..=54 => format!("{area} {local}"),
        55..=64 => format!("({area}){local}"),
        65..=70 => format!("（{area}）{local}"),
        71..=80 => format!("{area}{local}"),
        81..=85 => format!("+86 {} {local}", area.trim_start_matches('0')),
        _ => format!(
            "{area}-{}",
            group(&local, &[local.len() / 2, local.len()], " ")
        ),
    };
    match rng.gen_range(0..100) {
        0..=9 => {
            let n = rng.gen_range(3..5);
            format!("{number}转{}", digits_nz(rng, n))
        }
        10..=14 => format!("{number} 分机 {}", digits_nz(rng, 4)),
        15..=17 => format!("{number}分机{}", digits_nz(rng, 3)),
        _ => number,
    }
}

fn phone(rng: &mut R) -> String {
    if chance(rng, 0.75) {
        mobile(rng)
    } else {
        fixed_line(rng)
    }
}

const PINYIN: &[&str] = &[
    "zhang", "wang", "li", "chen", "lin", "huang", "wu", "zheng", "liu", "yang", "xu", "cai",
    "hong", "guo", "zeng", "zhou", "xie", "qiu", "su", "zhuang", "ye", "jiang", "you", "he",
    "ming", "hua", "jian", "guo", "wei", "fang", "na", "xiu", "ying", "min", "jing", "li", "qiang",
    "lei", "jun", "yong", "yan", "jie", "juan", "tao", "chao", "xia", "ping", "gang", "hong",
    "xiao", "zhi", "wen", "hai", "hui", "peng", "ting", "ling", "bin", "yu", "hao", "kai", "xin",
    "yi", "xue", "mei",
];

fn email(rng: &mut R) -> String {
    let domain = pick_w(
        rng,
        &[
            ("qq.com", 30),
            ("163.com", 18),
            ("126.com", 8),
            ("sina.com", 4),
            ("foxmail.com", 5),
            ("gmail.com", 5),
            ("outlook.com", 4),
            ("hotmail.com", 2),
            ("139.com", 3),
            ("yeah.net", 2),
            ("sohu.com", 2),
            ("fj.gov.cn", 5),
            ("fuzhou.gov.cn", 2),
            ("xm.gov.cn", 2),
            ("fzu.edu.cn", 2),
            ("xmu.edu.cn", 2),
            ("mindong-tech.com.cn", 1),
            ("haixi-logistics.cn", 1),
        ],
        "qq.com",
    );
    let a = pick(rng, PINYIN);
    let c = pick(rng, PINYIN);
    let local = if domain == "qq.com" && chance(rng, 0.6) {
        // A QQ number: 5 to 11 digits, no leading zero.
        let n = rng.gen_range(5..=11);
        digits_nz(rng, n)
    } else {
        match rng.gen_range(0..8) {
            0 => format!("{a}{c}"),
            1 => format!("{a}.{c}"),
            2 => format!("{a}_{c}{}", rng.gen_range(1..100)),
            3 => format!("{a}{c}{}", rng.gen_range(1960..2010)),
            4 => {
                let mut s = String::new();
                s.extend(a.chars().take(1).flat_map(char::to_uppercase));
                s.push_str(a.get(1..).unwrap_or_default());
                s.extend(c.chars().take(1).flat_map(char::to_uppercase));
                s.push_str(c.get(1..).unwrap_or_default());
                s
            }
            5 => format!("{a}-{c}"),
            6 => format!("{a}{c}+gov"),
            _ => format!("{}{}{}", a, c.chars().next().unwrap_or('x'), digits(rng, 3)),
        }
    };
    let at = if chance(rng, 0.08) { "＠" } else { "@" };
    format!("{local}{at}{domain}")
}

fn org_body(rng: &mut R) -> String {
    if chance(rng, 0.4) {
        // Codes issued with the USCC reform: MA plus six characters.
        let mut s = String::from("MA");
        for _ in 0..6 {
            let i = rng.gen_range(0..USCC_ALPHABET.len());
            s.push(USCC_ALPHABET.get(i).map_or('0', |&b| char::from(b)));
        }
        s
    } else {
        digits_nz(rng, 8)
    }
}

/// A valid organization code, usually `XXXXXXXX-X`.
fn org_code(rng: &mut R) -> String {
    let body = org_body(rng);
    let check = org_code_check(&body).unwrap_or('0');
    if chance(rng, 0.9) {
        format!("{body}-{check}")
    } else {
        format!("{body}{check}")
    }
}

/// A valid unified social credit code.
fn uscc(rng: &mut R) -> String {
    let head = pick_w(
        rng,
        &[
            ("91", 60),
            ("92", 10),
            ("12", 8),
            ("11", 5),
            ("52", 5),
            ("93", 3),
            ("51", 3),
            ("31", 2),
            ("Y1", 1),
        ],
        "91",
    );
    let division = pick(
        rng,
        &[
            "350000", "350100", "350102", "350103", "350104", "350111", "350181", "350200",
            "350203", "350206", "350211", "350500", "350502", "350582", "350600", "350700",
            "350800", "350900", "110000", "440300",
        ],
    );
    let body = org_body(rng);
    let org_check = org_code_check(&body).unwrap_or('0');
    let body17 = format!("{head}{division}{body}{org_check}");
    let check = uscc_check(&body17).unwrap_or('0');
    let code = format!("{body17}{check}");
    if chance(rng, 0.04) {
        fullwidth(&code)
    } else {
        code
    }
}

fn upper_no_io(rng: &mut R) -> char {
    const L: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    L.get(rng.gen_range(0..L.len()))
        .map_or('A', |&b| char::from(b))
}

/// (context phrase, number): PRC passports and travel permits.
fn passport(rng: &mut R) -> (&'static str, String) {
    match rng.gen_range(0..100) {
        0..=44 => ("护照号码", format!("E{}", digits(rng, 8))),
        45..=64 => (
            "护照号码",
            format!("E{}{}", upper_no_io(rng), digits(rng, 7)),
        ),
        65..=79 => ("护照号", format!("G{}", digits(rng, 8))),
        80..=91 => ("港澳居民来往内地通行证号码", format!("H{}", digits(rng, 8))),
        _ => ("港澳居民来往内地通行证号码", format!("M{}", digits(rng, 8))),
    }
}

const CARD_BINS: &[(&str, u32)] = &[
    ("622202", 10),
    ("622848", 8),
    ("621700", 8),
    ("622588", 5),
    ("621226", 5),
    ("622908", 3),
    ("625965", 2),
    ("623668", 3),
    ("621799", 2),
    ("622262", 3),
    ("436742", 2),
    ("518710", 1),
    ("622155", 2),
];

fn bank_card_canonical(rng: &mut R) -> String {
    let bin = pick_w(rng, CARD_BINS, "622202");
    let len = if chance(rng, 0.55) { 19 } else { 16 };
    let payload = format!("{bin}{}", digits(rng, len - 1 - bin.len()));
    let check = luhn_digit(&payload);
    format!("{payload}{check}")
}

fn bank_card(rng: &mut R) -> String {
    let n = bank_card_canonical(rng);
    match rng.gen_range(0..100) {
        0..=64 => n,
        65..=89 => group(&n, &[4], " "),
        90..=94 => group(&n, &[4], "-"),
        _ => fullwidth(&n),
    }
}

fn ipv4(rng: &mut R) -> String {
    let a: u8 = rng.gen_range(0..=255);
    let b: u8 = rng.gen_range(0..=255);
    let c: u8 = rng.gen_range(1..=254);
    match rng.gen_range(0..10) {
        0..=1 => format!("10.{a}.{b}.{c}"),
        2..=3 => format!("192.168.{}.{c}", rng.gen_range(0..=10)),
        4 => format!("172.{}.{a}.{c}", rng.gen_range(16..=31)),
        _ => {
            let net = pick(
                rng,
                &[
                    "218.85", "218.5", "220.249", "27.148", "36.248", "117.25", "59.57", "110.80",
                    "120.36", "183.250", "112.49", "125.77",
                ],
            );
            format!("{net}.{a}.{c}")
        }
    }
}

fn ipv6(rng: &mut R) -> String {
    let first = pick_w(
        rng,
        &[
            (0x2001u16, 3),
            (0x240e, 5),
            (0x2408, 3),
            (0x2409, 2),
            (0xfe80, 1),
        ],
        0x240e,
    );
    let mut seg = [0u16; 8];
    for (i, s) in seg.iter_mut().enumerate() {
        if i == 0 {
            *s = first;
            continue;
        }
        if first == 0x2001 && i == 1 {
            *s = 0x0db8;
            continue;
        }
        let zero = chance(rng, if (3..7).contains(&i) { 0.5 } else { 0.15 });
        *s = if first == 0xfe80 && i < 4 || zero {
            0
        } else {
            rng.gen_range(1..=0xffff)
        };
    }
    let addr = std::net::Ipv6Addr::from(seg);
    if chance(rng, 0.2) {
        // Uncompressed form, as some logs print it.
        let parts: Vec<String> = seg.iter().map(|s| format!("{s:x}")).collect();
        parts.join(":")
    } else if chance(rng, 0.1) {
        format!("::ffff:{}", ipv4(rng))
    } else {
        addr.to_string()
    }
}

fn ip(rng: &mut R) -> String {
    if chance(rng, 0.75) {
        ipv4(rng)
    } else {
        ipv6(rng)
    }
}

/// Surnames weighted roughly by their frequency in Fujian.
const SURNAMES: &[(&str, u32)] = &[
    ("陈", 120),
    ("林", 100),
    ("黄", 70),
    ("张", 50),
    ("吴", 40),
    ("李", 40),
    ("王", 35),
    ("郑", 35),
    ("刘", 30),
    ("杨", 25),
    ("许", 20),
    ("蔡", 20),
    ("洪", 15),
    ("郭", 18),
    ("曾", 15),
    ("周", 15),
    ("谢", 15),
    ("邱", 10),
    ("苏", 12),
    ("庄", 10),
    ("叶", 12),
    ("江", 10),
    ("游", 6),
    ("何", 8),
    ("卓", 5),
    ("罗", 8),
    ("方", 6),
    ("高", 8),
    ("徐", 8),
    ("朱", 8),
    ("潘", 6),
    ("柯", 5),
    ("施", 6),
    ("詹", 5),
    ("傅", 5),
    ("翁", 5),
    ("魏", 5),
    ("赖", 6),
    ("余", 5),
    ("彭", 4),
    ("连", 4),
    ("孙", 5),
    ("马", 4),
    ("胡", 5),
    ("钟", 4),
    ("汪", 3),
    ("欧阳", 4),
    ("上官", 2),
    ("司马", 2),
    ("诸葛", 1),
    ("司徒", 2),
    ("皇甫", 1),
    ("令狐", 1),
    ("夏侯", 1),
    ("慕容", 1),
    ("东方", 1),
];

const GIVEN: &[&str] = &[
    "明", "华", "建", "国", "伟", "芳", "娜", "秀", "英", "敏", "静", "丽", "强", "磊", "军", "洋",
    "勇", "艳", "杰", "娟", "涛", "超", "霞", "平", "刚", "桂", "红", "小", "晓", "志", "文", "海",
    "辉", "鹏", "婷", "玲", "斌", "宇", "浩", "凯", "欣", "怡", "雪", "梅", "琳", "慧", "颖", "佳",
    "俊", "龙", "鑫", "瑶", "萍", "燕", "琴", "荣", "振", "春", "阳", "思", "雅", "子", "梓", "涵",
    "睿", "泽", "铭", "晨", "婉", "清", "德", "福", "金", "水", "锦", "荣", "秋", "嘉",
];

fn surname(rng: &mut R) -> &'static str {
    pick_w(rng, SURNAMES, "陈")
}

fn given(rng: &mut R) -> String {
    match rng.gen_range(0..100) {
        0..=27 => pick(rng, GIVEN).to_string(),
        28..=33 => {
            let g = pick(rng, GIVEN);
            format!("{g}{g}")
        }
        _ => {
            let a = pick(rng, GIVEN);
            let b = pick(rng, GIVEN);
            format!("{a}{b}")
        }
    }
}

/// A full Chinese name: (surname, whole name).
fn name(rng: &mut R) -> (&'static str, String) {
    let s = surname(rng);
    let g = given(rng);
    (s, format!("{s}{g}"))
}

const CITY_DISTRICTS: &[(&str, &[&str], &[&str])] = &[
    (
        "福州市",
        &[
            "鼓楼区",
            "台江区",
            "仓山区",
            "晋安区",
            "马尾区",
            "长乐区",
            "闽侯县",
            "福清市",
        ],
        &[
            "五四路",
            "湖东路",
            "八一七北路",
            "杨桥中路",
            "工业路",
            "福飞南路",
            "华林路",
            "东街",
        ],
    ),
    (
        "厦门市",
        &["思明区", "湖里区", "集美区", "海沧区", "同安区", "翔安区"],
        &[
            "湖滨南路",
            "厦禾路",
            "嘉禾路",
            "莲前西路",
            "仙岳路",
            "中山路",
            "环岛东路",
        ],
    ),
    (
        "泉州市",
        &["丰泽区", "鲤城区", "洛江区", "晋江市", "石狮市", "南安市"],
        &["温陵路", "丰泽街", "刺桐路", "泉秀路", "田安路"],
    ),
    (
        "漳州市",
        &["芗城区", "龙文区", "龙海区"],
        &["胜利西路", "延安北路", "新华北路"],
    ),
    (
        "莆田市",
        &["城厢区", "荔城区", "涵江区"],
        &["文献路", "学园路", "东园路"],
    ),
    ("三明市", &["三元区", "沙县区"], &["列东街", "新市北路"]),
    ("南平市", &["延平区", "建阳区"], &["滨江中路", "八一路"]),
    ("龙岩市", &["新罗区", "永定区"], &["九一南路", "登高西路"]),
    ("宁德市", &["蕉城区", "福安市"], &["蕉城南路", "天湖东路"]),
];

const ESTATES: &[&str] = &[
    "金山花园",
    "融侨锦江",
    "阳光城",
    "万科城",
    "碧桂园",
    "泰禾广场",
    "世茂天城",
    "建发央著",
    "东方名城",
    "左海公寓",
];

fn address(rng: &mut R) -> String {
    let Some(&(city, districts, roads)) = CITY_DISTRICTS.choose(rng) else {
        return "福建省福州市鼓楼区五四路158号".to_string();
    };
    let district = pick(rng, districts);
    let road = pick(rng, roads);
    let mut s = String::new();
    if chance(rng, 0.6) {
        s.push_str("福建省");
    }
    s.push_str(city);
    s.push_str(district);
    s.push_str(road);
    s.push_str(&format!("{}号", rng.gen_range(1..400)));
    match rng.gen_range(0..10) {
        0..=2 => {}
        3..=5 => s.push_str(&format!(
            "{}{}号楼{}单元{}{:02}室",
            pick(rng, ESTATES),
            rng.gen_range(1..30),
            rng.gen_range(1..5),
            rng.gen_range(1..33),
            rng.gen_range(1..9)
        )),
        6..=7 => s.push_str(&format!(
            "{}{:02}室",
            rng.gen_range(1..25),
            rng.gen_range(1..9)
        )),
        _ => s.push_str(&format!(
            "{}座{}楼",
            pick(rng, &["A", "B", "C", "1", "2"]),
            rng.gen_range(2..30)
        )),
    }
    s
}

// ---------------------------------------------------------------------------
// Decoys: look like PII, are not
// ---------------------------------------------------------------------------

fn yyyymmdd(rng: &mut R) -> String {
    let (y, m, d) = date(rng, 2019..=2024);
    format!("{y:04}{m:02}{d:02}")
}

/// 18 digits that are neither a resident ID nor a USCC nor a Luhn number.
fn bad_18_digits(rng: &mut R) -> String {
    loop {
        let n = digits_nz(rng, 18);
        let body: String = n.chars().take(17).collect();
        let last = n.chars().last().unwrap_or('0');
        if resident_id_check(&body) != last && uscc_check(&body) != Some(last) && !luhn_ok(&n) {
            return n;
        }
    }
}

fn luhn_failing(rng: &mut R, len: usize) -> String {
    loop {
        let n = digits_nz(rng, len);
        if !luhn_ok(&n) {
            return n;
        }
    }
}

fn decoy(rng: &mut R, b: &mut Builder) {
    let s = match rng.gen_range(0..16) {
        0 => format!("订单号{}{}{}，", colon(rng), yyyymmdd(rng), digits(rng, 12)),
        1 => format!(
            "{}{}元，",
            pick(rng, &["金额 ", "缴费金额：", "共计", "补贴金额", "罚款"]),
            pick(
                rng,
                &[
                    "13,800.50",
                    "1,250.00",
                    "3,600",
                    "256.8",
                    "12,345,678.90",
                    "98,000"
                ]
            )
        ),
        2 => {
            let (y, m, d) = date(rng, 2019..=2024);
            match rng.gen_range(0..4) {
                0 => format!("办理日期：{y}-{m:02}-{d:02}，"),
                1 => format!("日期{y}{m:02}{d:02}，"),
                2 => format!("{y}年{m}月{d}日受理，"),
                _ => format!("截止时间{y}/{m:02}/{d:02} 17:30，"),
            }
        }
        3 => format!(
            "快递单号{}{}，",
            colon(rng),
            match rng.gen_range(0..3) {
                0 => format!("SF{}", digits_nz(rng, 13)),
                1 => format!("YT{}", digits_nz(rng, 13)),
                _ => format!("JD{}", digits(rng, 13)),
            }
        ),
        4 => format!("业务单号：{}，", bad_18_digits(rng)),
        5 => {
            let prefix = pick(rng, &["154", "179", "194", "120", "111", "127", "100"]);
            format!("档案编号{}{}{}，", colon(rng), prefix, digits(rng, 8))
        }
        6 => pick(
            rng,
            &[
                "系统已升级至v2.10.3版本，",
                "请使用V3.2.1及以上版本的客户端，",
                "圆周率取3.14159，",
                "App版本 5.0.12 ，",
                "依据《条例》第3.2.4条，",
            ],
        )
        .to_string(),
        7 => pick(
            rng,
            &[
                "周末高峰期办理人数较多，建议错峰前往，",
                "黄金周期间政务大厅正常开放，",
                "材料已转林业局审核，",
                "大厅陈列了办事指南，",
                "网上办理很方便，",
                "信息如汪洋大海般繁杂，",
                "童话王国主题乐园项目已备案，",
                "马上为您转接，",
                "何时能办结？",
                "许可证已寄出，",
                "江滨公园附近停车难，",
                "白天人多，晚上人少，",
                "曾经多次反映，",
                "石狮市场监督管理局已受理，",
                "高新区管委会答复，",
                "程序合法，",
                "周一至周五上午9:00-12:00，",
            ],
        )
        .to_string(),
        8 => format!("交易流水号：{}，", luhn_failing(rng, 16)),
        9 => format!(
            "发票代码 {} 发票号码 {}，",
            luhn_failing(rng, 12),
            digits(rng, 8)
        ),
        10 => "如有疑问请拨打12345政务服务便民热线，".to_string(),
        11 => format!(
            "依据闽政办〔{}〕{}号文件，",
            rng.gen_range(2015..2025),
            rng.gen_range(1..200)
        ),
        12 => format!(
            "邮编{}，",
            pick(rng, &["350001", "361001", "362000", "350003"])
        ),
        13 => format!(
            "办理时限为{}个工作日，共{}页，",
            rng.gen_range(3..30),
            rng.gen_range(2..40)
        ),
        14 => format!("受理编号：FJZW{}{}，", yyyymmdd(rng), digits(rng, 6)),
        _ => format!(
            "车牌闽A{}，",
            pick(rng, &["12345", "D8K21", "7Q6B8", "36U92"])
        ),
    };
    b.t(&s);
}

// ---------------------------------------------------------------------------
// Documents
// ---------------------------------------------------------------------------

const MATTERS: &[&str] = &[
    "社会保障卡补办",
    "居住证办理",
    "个体工商户设立登记",
    "公积金提取",
    "不动产登记",
    "出入境证件办理",
    "最低生活保障申请",
    "营业执照变更",
    "残疾人补贴申请",
    "医保异地备案",
    "建设工程规划许可",
    "食品经营许可",
    "人才引进落户",
    "企业开办",
];

const COMPANIES: &[&str] = &[
    "福州闽江科技有限公司",
    "厦门海西物流有限公司",
    "泉州晋江鞋业有限公司",
    "福建省鼓楼区陈记餐饮店",
    "莆田市荔城区木兰溪建材经营部",
    "漳州市芗城区百信超市",
    "福建海峡环保集团股份有限公司",
    "宁德时代新能源配套服务中心",
];

const BANKS: &[&str] = &[
    "中国工商银行福州分行",
    "中国农业银行厦门分行",
    "中国建设银行泉州分行",
    "招商银行福州分行",
    "福建海峡银行",
    "兴业银行福州分行",
];

fn end_punct(rng: &mut R) -> &'static str {
    pick(rng, &["\n", "\n", "，", "。", "；", "  "])
}

/// `姓名：X` and friends, with a name label.
fn name_field(rng: &mut R, b: &mut Builder, field: &str) {
    let (_, full) = name(rng);
    let c = colon(rng);
    b.t(&format!("{field}{c}"));
    b.pii(Class::Name, &full);
}

fn application(rng: &mut R, b: &mut Builder) {
    let matter = pick(rng, MATTERS);
    b.t(&format!("【{}申请表】\n", matter.trim_end_matches("申请")));
    if chance(rng, 0.4) {
        decoy(rng, b);
        b.t("\n");
    }
    let nl = |rng: &mut R| end_punct(rng);
    let field = pick(rng, &["姓名", "姓名", "申请人姓名", "申请人", "姓 名"]);
    name_field(rng, b, field);
    b.t(&format!(
        "{}性别{}{}",
        pick(rng, &["  ", "，", "\n", "\t"]),
        colon(rng),
        pick(rng, &["男", "女"])
    ));
    b.t(nl(rng));
    if chance(rng, 0.9) {
        let f = pick(
            rng,
            &[
                "身份证号",
                "身份证号码",
                "公民身份号码",
                "证件号码",
                "身份证",
            ],
        );
        b.t(&format!("{f}{}", colon(rng)));
        b.pii(Class::CnResidentId, &resident_id(rng));
        b.t(nl(rng));
    }
    if chance(rng, 0.12) {
        b.t(&format!("港澳台居民居住证号码{}", colon(rng)));
        b.pii(Class::CnResidentId, &residence_permit_id(rng));
        b.t(nl(rng));
    }
    let f = pick(rng, &["联系电话", "手机号码", "手机", "电话", "联系方式"]);
    b.t(&format!("{f}{}", colon(rng)));
    b.pii(Class::Phone, &phone(rng));
    b.t(nl(rng));
    if chance(rng, 0.2) {
        b.t(&format!("备用电话{}", colon(rng)));
        b.pii(Class::Phone, &fixed_line(rng));
        b.t(nl(rng));
    }
    if chance(rng, 0.6) {
        b.t(&format!(
            "{}{}",
            pick(rng, &["电子邮箱", "邮箱", "E-mail", "Email"]),
            colon(rng)
        ));
        b.pii(Class::Email, &email(rng));
        b.t(nl(rng));
    }
    if chance(rng, 0.8) {
        b.t(&format!(
            "{}{}",
            pick(rng, &["地址", "住址", "联系地址", "户籍地址", "现住址"]),
            colon(rng)
        ));
        b.pii(Class::Address, &address(rng));
        b.t(nl(rng));
    }
    if chance(rng, 0.4) {
        b.t(&format!(
            "单位名称{}{}{}",
            colon(rng),
            pick(rng, COMPANIES),
            nl(rng)
        ));
        b.t(&format!("统一社会信用代码{}", colon(rng)));
        b.pii(Class::Uscc, &uscc(rng));
        b.t(nl(rng));
        let field = pick(rng, &["法定代表人", "负责人", "经营者"]);
        name_field(rng, b, field);
        b.t(nl(rng));
        if chance(rng, 0.5) {
            b.t(&format!("组织机构代码{}", colon(rng)));
            b.pii(Class::OrgCode, &org_code(rng));
            b.t(nl(rng));
        }
    }
    if chance(rng, 0.4) {
        b.t(&format!(
            "开户银行{}{}{}",
            colon(rng),
            pick(rng, BANKS),
            nl(rng)
        ));
        b.t(&format!(
            "{}{}",
            pick(rng, &["银行账号", "银行卡号", "收款账号", "账号"]),
            colon(rng)
        ));
        b.pii(Class::BankCard, &bank_card(rng));
        b.t(nl(rng));
    }
    if chance(rng, 0.2) {
        let (field, number) = passport(rng);
        b.t(&format!("{field}{}", colon(rng)));
        b.pii(Class::Passport, &number);
        b.t(nl(rng));
    }
    if chance(rng, 0.3) {
        let field = pick(rng, &["联系人", "经办人", "代理人"]);
        name_field(rng, b, field);
        b.t(&format!("，电话{}", colon(rng)));
        b.pii(Class::Phone, &phone(rng));
        b.t(nl(rng));
    }
    decoy(rng, b);
    if chance(rng, 0.5) {
        decoy(rng, b);
    }
    b.t(&format!(
        "\n申请人承诺所填信息真实有效。\n申请日期：{}\n",
        {
            let (y, m, d) = date(rng, 2020..=2024);
            format!("{y}-{m:02}-{d:02}")
        }
    ));
}

fn complaint(rng: &mut R, b: &mut Builder) {
    b.t(pick(
        rng,
        &[
            "投诉内容：",
            "【投诉】",
            "我要投诉：",
            "12345热线工单转办：\n",
        ],
    ));
    match rng.gen_range(0..5) {
        0 => {
            b.t("我叫");
            b.pii(Class::Name, &name(rng).1);
            b.t("，");
        }
        1 => {
            b.t("本人");
            b.pii(Class::Name, &name(rng).1);
            b.t(pick(rng, &["，", "（", "，"]));
            if b.text.ends_with('（') {
                b.t("身份证号");
                b.pii(Class::CnResidentId, &resident_id(rng));
                b.t("），");
            }
        }
        2 => {
            b.t("申请人");
            b.pii(Class::Name, &name(rng).1);
            b.t(pick(rng, &["于", "反映：", "称", "，"]));
        }
        3 => {
            b.t(pick(
                rng,
                &[
                    "投诉人：",
                    "来电人",
                    "反映人：",
                    "当事人",
                    "市民",
                    "我是",
                    "举报人",
                ],
            ));
            b.pii(Class::Name, &name(rng).1);
            b.t(pick(
                rng,
                &["，", "来电反映：", "反映，", "（女），", "（男）称，", " "],
            ));
        }
        _ => b.t(pick(
            rng,
            &[
                "您好，",
                "领导您好，",
                "我是一名普通市民，",
                "您好，我是本市居民，",
            ],
        )),
    }
    if chance(rng, 0.6) {
        b.t(pick(
            rng,
            &[
                "住在",
                "家住",
                "现居住在",
                "户籍在",
                "我家在",
                "租住在",
                "房屋坐落于",
                "本人住址：",
                "通讯地址为",
            ],
        ));
        b.pii(Class::Address, &address(rng));
        b.t("。");
    }
    let (y, m, d) = date(rng, 2022..=2024);
    b.t(&format!(
        "{y}年{m}月{d}日我到{}办理{}，",
        pick(
            rng,
            &[
                "市行政服务中心",
                "区政务服务大厅",
                "街道便民服务中心",
                "不动产登记中心"
            ]
        ),
        pick(rng, MATTERS)
    ));
    b.t(pick(
        rng,
        &[
            "窗口工作人员态度恶劣，材料被退回三次。",
            "排队两个小时仍未办结，系统一直显示异常。",
            "工作人员要求提供与事项无关的材料。",
            "至今没有任何答复，已超过承诺时限。",
        ],
    ));
    if chance(rng, 0.5) {
        decoy(rng, b);
    }
    if chance(rng, 0.4) {
        b.t(pick(rng, &["涉事商家为", "被投诉单位："]));
        b.t(pick(rng, COMPANIES));
        let lead = pick(
            rng,
            &["，统一社会信用代码", "（信用代码：", "，社会信用代码为"],
        );
        b.t(lead);
        b.pii(Class::Uscc, &uscc(rng));
        b.t(if lead.starts_with('（') {
            "）。"
        } else {
            "。"
        });
    }
    if chance(rng, 0.3) {
        b.t(pick(rng, &["接待我的是", "窗口工作人员", "经办人"]));
        let (s, full) = name(rng);
        if chance(rng, 0.5) {
            b.pii(Class::Name, s);
            b.t(pick(rng, &["先生", "女士", "科长", "主任"]));
        } else {
            b.pii(Class::Name, &full);
        }
        b.t("，");
    }
    if chance(rng, 0.3) {
        b.t("我的账户");
        b.t(pick(
            rng,
            &["近期出现异常登录，登录IP：", "被陌生设备登录，IP地址为"],
        ));
        b.pii(Class::Ip, &ip(rng));
        b.t("。");
    }
    if chance(rng, 0.25) {
        b.t("退款请打到我的银行卡");
        b.pii(Class::BankCard, &bank_card(rng));
        b.t("。");
    }
    decoy(rng, b);
    b.t(pick(
        rng,
        &[
            "我的联系电话是",
            "联系电话：",
            "请回电",
            "手机号",
            "有事请联系",
            "回拨",
            "打我电话",
            "微信同号",
            "电话号码为",
            "TEL:",
            "联系方式",
            "请致电",
            "我的号码",
        ],
    ));
    b.pii(Class::Phone, &phone(rng));
    b.t(pick(rng, &["，", "。", "，谢谢。", " "]));
    if chance(rng, 0.5) {
        b.t(pick(rng, &["身份证号", "身份证号码：", "证件号"]));
        b.pii(Class::CnResidentId, &resident_id(rng));
        b.t("，");
    }
    if chance(rng, 0.4) {
        b.t(pick(rng, &["邮箱", "电子邮箱：", "也可发邮件至"]));
        b.pii(Class::Email, &email(rng));
        b.t(pick(rng, &["。", "，", "\n"]));
    }
    b.t(pick(
        rng,
        &[
            "希望有关部门尽快核实处理。",
            "请给个说法！",
            "恳请领导重视。",
            "谢谢！",
        ],
    ));
}

fn comment(rng: &mut R, b: &mut Builder) {
    b.t(pick(
        rng,
        &["【留言】", "网友留言：", "意见建议：", "政民互动留言板：\n"],
    ));
    b.t(pick(
        rng,
        &[
            "建议在政务服务网增加夜间预约功能。",
            "公交站台的无障碍设施需要改善。",
            "小区附近施工噪音扰民，晚上十点后还在作业。",
            "希望延长周末办事大厅的开放时间。",
            "医保线上报销流程太复杂，希望简化。",
        ],
    ));
    if chance(rng, 0.6) {
        decoy(rng, b);
    }
    match rng.gen_range(0..5) {
        0 => {
            b.t("联系人：");
            b.pii(Class::Name, &name(rng).1);
            b.t("，电话");
            b.pii(Class::Phone, &phone(rng));
            b.t("。");
        }
        1 => {
            b.t("留言人：");
            let (s, _) = name(rng);
            b.pii(Class::Name, s);
            b.t(pick(rng, &["先生", "女士"]));
            b.t("，手机：");
            b.pii(Class::Phone, &mobile(rng));
            b.t("\n");
        }
        2 => {
            b.t("如需回复请发邮件到");
            b.pii(Class::Email, &email(rng));
            b.t(pick(rng, &["。", "，谢谢", "\n"]));
        }
        3 => {
            b.t("邮箱");
            b.pii(Class::Email, &email(rng));
            b.t("。电话");
            b.pii(Class::Phone, &phone(rng));
            b.t("。");
        }
        _ => {
            b.t("我是");
            b.pii(Class::Name, &name(rng).1);
            b.t("，住");
            b.pii(Class::Address, &address(rng));
            b.t("。");
        }
    }
    if chance(rng, 0.2) {
        b.t("（提交IP：");
        b.pii(Class::Ip, &ip(rng));
        b.t("）");
    }
    if chance(rng, 0.4) {
        decoy(rng, b);
    }
}

fn chat(rng: &mut R, b: &mut Builder) {
    let (surname, full) = name(rng);
    b.t("客服：您好，这里是福建省网上办事大厅在线客服，请问有什么可以帮您？\n");
    b.t("用户：");
    b.t(pick(
        rng,
        &[
            "我想查一下社保卡的办理进度",
            "公积金提取一直没到账",
            "营业执照变更需要什么材料",
            "我的居住证什么时候能拿",
            "黄金周大厅上班吗",
            "周末能办理吗",
            "高峰期要排多久",
            "林业局的审批怎么还没下来",
            "方便问一下不动产登记的流程吗",
            "陈列在大厅的指南是最新的吗",
            "马上要出国，护照加急怎么办",
            "王者荣耀实名认证用的是哪个身份证",
            "江西户口能在福州办吗",
        ],
    ));
    if chance(rng, 0.3) {
        b.t(pick(
            rng,
            &[
                "\n客服：您好，请稍等。\n用户：我爱人的社保也一起查",
                "\n客服：接待您的是工作人员小组，请耐心等候。\n用户：好的",
                "\n客服：您好，本人办理需要带原件。\n用户：明白",
                "\n用户：我是外地户口，家住附近",
            ],
        ));
    }
    b.t("\n客服：请提供一下您的姓名和身份证号。\n用户：");
    if chance(rng, 0.5) {
        b.pii(Class::Name, &full);
        b.t(pick(rng, &[" ", "，", "\n"]));
    } else {
        b.t("我叫");
        b.pii(Class::Name, &full);
        b.t("，身份证");
    }
    b.pii(Class::CnResidentId, &resident_id(rng));
    b.t("\n客服：");
    match rng.gen_range(0..3) {
        0 => {
            b.pii(Class::Name, surname);
            b.t(pick(rng, &["先生", "女士"]));
            b.t("您好，");
        }
        1 => {
            b.pii(Class::Name, &full);
            b.t("您好，");
        }
        _ => b.t("好的，"),
    }
    b.t("已查询到您的记录。请问预留手机号是多少？\n用户：");
    b.pii(Class::Phone, &mobile(rng));
    if chance(rng, 0.4) {
        b.t("，座机");
        b.pii(Class::Phone, &fixed_line(rng));
    }
    b.t("\n客服：");
    decoy(rng, b);
    b.t("马上为您处理，结果会发送到您的邮箱。\n用户：");
    b.pii(Class::Email, &email(rng));
    b.t(pick(rng, &["", "，谢谢", " 谢谢", "。"]));
    if chance(rng, 0.3) {
        b.t("\n用户：另外");
        b.t(pick(
            rng,
            &[
                "我爱人",
                "我母亲",
                "我父亲",
                "我儿子",
                "我女儿",
                "我同事",
                "我邻居",
                "我家老人",
            ],
        ));
        b.pii(Class::Name, &name(rng).1);
        b.t(pick(
            rng,
            &[
                "的也一起查一下，号码是",
                "也要办，手机",
                "的社保卡也丢了，电话",
                "那份也麻烦看下，联系电话",
            ],
        ));
        b.pii(Class::Phone, &mobile(rng));
    }
    if chance(rng, 0.25) {
        b.t("\n用户：退款账户");
        b.pii(Class::BankCard, &bank_card(rng));
    }
    if chance(rng, 0.3) {
        b.t("\n客服：我们这边看到您今天从");
        b.pii(Class::Ip, &ip(rng));
        b.t("登录过，是本人操作吗？");
    }
    b.t("\n客服：好的，还有其他问题吗？\n用户：没有了，谢谢。\n");
}

fn english(rng: &mut R, b: &mut Builder) {
    b.t(pick(
        rng,
        &[
            "Dear Sir/Madam,\n",
            "[Foreign Investor Service] ",
            "Ticket #",
            "Hello, ",
        ],
    ));
    if b.text.ends_with('#') {
        b.t(&format!("{}\n", digits_nz(rng, 6)));
    }
    b.t(pick(
        rng,
        &[
            "My name is ",
            "My name is ",
            "I am ",
            "Applicant: ",
            "Contact person: ",
            "This is ",
        ],
    ));
    b.pii(Class::Name, &name(rng).1);
    b.t(pick(rng, &[" and I ", ". I "]));
    b.t(pick(
        rng,
        &[
            "am applying for a work permit in Xiamen. ",
            "would like to register a company in Fuzhou. ",
            "need help with my residence permit. ",
        ],
    ));
    match rng.gen_range(0..6) {
        0 => b.t("Passport No.: "),
        1 => b.t("Passport number "),
        2 => b.t("my passport is "),
        3 => b.t("PP No. "),
        4 => b.t("Travel document: "),
        _ => b.t("护照/Passport: "),
    }
    let (_, number) = passport(rng);
    b.pii(Class::Passport, &number);
    b.t(". ");
    b.t(pick(
        rng,
        &["Tel: ", "Phone: ", "You can reach me at ", "联系电话/Tel: "],
    ));
    b.pii(Class::Phone, &phone(rng));
    b.t(pick(
        rng,
        &[", email: ", ". Email: ", " or by e-mail at ", "; E-mail: "],
    ));
    b.pii(Class::Email, &email(rng));
    b.t(pick(rng, &[".\n", "\n", ", thanks!\n", " (preferred).\n"]));
    if chance(rng, 0.5) {
        b.t(pick(rng, &["Login IP: ", "Last login from ", "Source IP "]));
        b.pii(Class::Ip, &ip(rng));
        b.t(pick(rng, &["\n", " at 14:32:05\n", ", version v2.10.3\n"]));
    }
    if chance(rng, 0.3) {
        b.t("Company: ");
        b.t(pick(rng, COMPANIES));
        b.t(", USCC ");
        b.pii(Class::Uscc, &uscc(rng));
        b.t("\n");
    }
    if chance(rng, 0.5) {
        b.t(pick(
            rng,
            &[
                "Order No. 2023110512345678901, amount CNY 13,800.50.\n",
                "Tracking number SF1234567890123.\n",
                "App version 3.14.159 on build 20231105.\n",
                "Office hours: 9:00-17:00, Mon-Fri.\n",
            ],
        ));
    }
    b.t("Thanks,\n");
}

fn ocr_form(rng: &mut R, b: &mut Builder) {
    let bar = pick(rng, &["|", "│", "｜"]);
    b.t(&format!(
        "{bar} {}申请表 {bar}\n",
        fullwidth(pick(rng, MATTERS))
    ));
    b.t(&format!(
        "{bar} {} {bar} ",
        pick(rng, &["姓 名", "姓  名", "姓名"])
    ));
    b.pii(Class::Name, &name(rng).1);
    b.t(&format!(
        " {bar} 性 别 {bar} {} {bar}\n",
        pick(rng, &["男", "女"])
    ));
    b.t(&format!(
        "{bar} {} {bar} ",
        pick(rng, &["身份证号码", "公民身份 号码", "身 份 证 号"])
    ));
    let id = resident_id(rng);
    let id = if chance(rng, 0.3) { fullwidth(&id) } else { id };
    b.pii(Class::CnResidentId, &id);
    b.t(&format!(" {bar}\n"));
    b.t(&format!(
        "{bar} {} {bar} ",
        pick(rng, &["联系电话", "电 话", "手 机"])
    ));
    b.pii(Class::Phone, &phone(rng));
    b.t(&format!(" {bar}\n"));
    if chance(rng, 0.6) {
        b.t(&format!("{bar} 住 址 {bar} "));
        b.pii(Class::Address, &address(rng));
        b.t(&format!(" {bar}\n"));
    }
    if chance(rng, 0.4) {
        b.t(&format!("{bar} 统一社会信用代码 {bar} "));
        b.pii(Class::Uscc, &uscc(rng));
        b.t(&format!(" {bar}\n"));
        if chance(rng, 0.5) {
            b.t(&format!("{bar} 组织机构代码 {bar} "));
            b.pii(Class::OrgCode, &org_code(rng));
            b.t(&format!(" {bar}\n"));
        }
    }
    if chance(rng, 0.4) {
        b.t(&format!("{bar} 银行卡号 {bar} "));
        b.pii(Class::BankCard, &bank_card(rng));
        b.t(&format!(" {bar}\n"));
    }
    if chance(rng, 0.3) {
        b.t(&format!("{bar} 电子邮箱 {bar} "));
        b.pii(Class::Email, &email(rng));
        b.t(&format!(" {bar}\n"));
    }
    b.t(&format!("{bar} 备 注 {bar} "));
    decoy(rng, b);
    b.t(&format!(" {bar}\n"));
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// A detector's answer, reduced to what scoring needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Predicted {
    pub class: Class,
    pub start: usize,
    pub end: usize,
    pub byte_start: usize,
    pub byte_end: usize,
}

impl From<&vault::detect::Finding> for Predicted {
    fn from(f: &vault::detect::Finding) -> Self {
        Predicted {
            class: f.class,
            start: f.start,
            end: f.end,
            byte_start: f.byte_start,
            byte_end: f.byte_end,
        }
    }
}

/// Counts for one class (or all of them, for the micro-average).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Labels of the class.
    pub support: usize,
    /// Findings of the class.
    pub found: usize,
    /// Exact: same class, same span.
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    /// Lenient: findings overlapping a label of the same class.
    pub lenient_tp_found: usize,
    /// Lenient: labels overlapped by a finding of the same class.
    pub lenient_tp_labels: usize,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    }
}

impl Counts {
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }
    pub fn f1(&self) -> f64 {
        f1(self.precision(), self.recall())
    }
    pub fn lenient_precision(&self) -> f64 {
        ratio(self.lenient_tp_found, self.found)
    }
    pub fn lenient_recall(&self) -> f64 {
        ratio(self.lenient_tp_labels, self.support)
    }
    pub fn lenient_f1(&self) -> f64 {
        f1(self.lenient_precision(), self.lenient_recall())
    }

    fn add(&mut self, o: &Counts) {
        self.support += o.support;
        self.found += o.found;
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.lenient_tp_found += o.lenient_tp_found;
        self.lenient_tp_labels += o.lenient_tp_labels;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    FalsePositive,
    FalseNegative,
}

/// One scoring error, with the text around it (synthetic data only).
#[derive(Clone, Debug, Serialize)]
pub struct ErrorExample {
    pub class: Class,
    pub kind: ErrorKind,
    pub doc: usize,
    pub doc_kind: DocKind,
    pub start: usize,
    pub end: usize,
    /// The text of the span.
    pub span: String,
    /// The span in context, marked `⟦…⟧`, newlines shown as `⏎`.
    pub context: String,
    /// What overlaps it on the other side (findings for a miss, labels for a
    /// false positive), e.g. `found phone ⟦138 0013⟧`.
    pub note: String,
}

/// The result of scoring a detector over a corpus.
#[derive(Clone, Debug)]
pub struct Report {
    pub docs: usize,
    pub bytes: usize,
    pub chars: usize,
    /// Wall time spent inside the detector.
    pub detect_secs: f64,
    pub per_class: BTreeMap<Class, Counts>,
    pub micro: Counts,
    /// Findings whose byte offsets do not cover the same text as their char
    /// offsets, or that are out of range or empty.
    pub bad_offsets: usize,
    /// Up to `keep` examples per class and kind, in corpus order.
    pub errors: Vec<ErrorExample>,
}

/// How many error examples per class and kind [`evaluate`] keeps.
pub const DEFAULT_KEEP: usize = 20;

/// Runs `vault::detect::detect` over `docs` and scores it.
pub fn evaluate(docs: &[Doc]) -> Report {
    evaluate_keep(docs, DEFAULT_KEEP)
}

/// [`evaluate`], keeping up to `keep` error examples per class and kind.
pub fn evaluate_keep(docs: &[Doc], keep: usize) -> Report {
    let mut predicted = Vec::with_capacity(docs.len());
    let started = Instant::now();
    for d in docs {
        predicted.push(vault::detect::detect(&d.text));
    }
    let secs = started.elapsed().as_secs_f64();
    let predicted: Vec<Vec<Predicted>> = predicted
        .iter()
        .map(|fs| fs.iter().map(Predicted::from).collect())
        .collect();
    score(docs, &predicted, secs, keep)
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn context(text: &str, start: usize, end: usize) -> String {
    const AROUND: usize = 24;
    let from = start.saturating_sub(AROUND);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate().skip(from) {
        if i >= end + AROUND {
            break;
        }
        if i == start {
            out.push('⟦');
        }
        if i == end {
            out.push('⟧');
        }
        out.push(if c == '\n' { '⏎' } else { c });
    }
    if end >= text.chars().count() {
        out.push('⟧');
    }
    out
}

fn offsets_ok(text: &str, p: &Predicted) -> bool {
    if p.start >= p.end || p.byte_start >= p.byte_end {
        return false;
    }
    match text.get(p.byte_start..p.byte_end) {
        Some(s) => s == char_span(text, p.start, p.end),
        None => false,
    }
}

/// Scores `predicted[i]` against `docs[i].labels`.
pub fn score(docs: &[Doc], predicted: &[Vec<Predicted>], detect_secs: f64, keep: usize) -> Report {
    let mut per_class: BTreeMap<Class, Counts> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut kept: BTreeMap<(Class, bool), usize> = BTreeMap::new();
    let mut bad_offsets = 0;
    let mut bytes = 0;
    let mut chars = 0;
    let empty = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        bytes += doc.text.len();
        chars += doc.text.chars().count();
        let preds = predicted.get(i).unwrap_or(&empty);
        let mut record = |class: Class, kind: ErrorKind, start: usize, end: usize, note: String| {
            let slot = kept
                .entry((class, kind == ErrorKind::FalsePositive))
                .or_insert(0);
            if *slot < keep {
                *slot += 1;
                errors.push(ErrorExample {
                    class,
                    kind,
                    doc: i,
                    doc_kind: doc.kind,
                    start,
                    end,
                    span: doc.span(start, end),
                    context: context(&doc.text, start, end),
                    note,
                });
            }
        };
        for l in &doc.labels {
            let c = per_class.entry(l.class).or_default();
            c.support += 1;
            let exact = preds
                .iter()
                .any(|p| p.class == l.class && p.start == l.start && p.end == l.end);
            let lenient = preds
                .iter()
                .any(|p| p.class == l.class && overlaps((p.start, p.end), (l.start, l.end)));
            if exact {
                c.tp += 1;
            } else {
                c.fn_ += 1;
                let note: Vec<String> = preds
                    .iter()
                    .filter(|p| overlaps((p.start, p.end), (l.start, l.end)))
                    .map(|p| format!("found {} ⟦{}⟧", p.class, doc.span(p.start, p.end)))
                    .collect();
                let note = if note.is_empty() {
                    "nothing found".to_string()
                } else {
                    note.join("; ")
                };
                record(l.class, ErrorKind::FalseNegative, l.start, l.end, note);
            }
            if lenient {
                c.lenient_tp_labels += 1;
            }
        }
        for p in preds {
            if !offsets_ok(&doc.text, p) {
                bad_offsets += 1;
            }
            let c = per_class.entry(p.class).or_default();
            c.found += 1;
            let exact = doc
                .labels
                .iter()
                .any(|l| p.class == l.class && p.start == l.start && p.end == l.end);
            let lenient = doc
                .labels
                .iter()
                .any(|l| p.class == l.class && overlaps((p.start, p.end), (l.start, l.end)));
            if !exact {
                c.fp += 1;
                let note: Vec<String> = doc
                    .labels
                    .iter()
                    .filter(|l| overlaps((p.start, p.end), (l.start, l.end)))
                    .map(|l| format!("label {} ⟦{}⟧", l.class, doc.span(l.start, l.end)))
                    .collect();
                let note = if note.is_empty() {
                    "no label here".to_string()
                } else {
                    note.join("; ")
                };
                record(p.class, ErrorKind::FalsePositive, p.start, p.end, note);
            }
            if lenient {
                c.lenient_tp_found += 1;
            }
        }
    }
    let mut micro = Counts::default();
    for c in per_class.values() {
        micro.add(c);
    }
    Report {
        docs: docs.len(),
        bytes,
        chars,
        detect_secs,
        per_class,
        micro,
        bad_offsets,
        errors,
    }
}

impl Report {
    /// The counts of `class` (all zero if it never occurred).
    pub fn class(&self, class: Class) -> Counts {
        self.per_class.get(&class).copied().unwrap_or_default()
    }

    /// Detector throughput in MB (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        if self.detect_secs > 0.0 {
            self.bytes as f64 / 1e6 / self.detect_secs
        } else {
            0.0
        }
    }

    /// Up to `k` false positives and `k` false negatives per class, with context.
    pub fn errors_text(&self, k: usize) -> String {
        let mut out = String::new();
        for class in Class::ALL {
            for kind in [ErrorKind::FalseNegative, ErrorKind::FalsePositive] {
                let examples: Vec<&ErrorExample> = self
                    .errors
                    .iter()
                    .filter(|e| e.class == class && e.kind == kind)
                    .take(k)
                    .collect();
                if examples.is_empty() {
                    continue;
                }
                let what = match kind {
                    ErrorKind::FalseNegative => "missed (FN)",
                    ErrorKind::FalsePositive => "false positives (FP)",
                };
                out.push_str(&format!("\n== {class}: {what}\n"));
                for e in examples {
                    out.push_str(&format!(
                        "  doc {} [{}] {}..{} ⟦{}⟧ — {}\n      {}\n",
                        e.doc,
                        e.doc_kind.as_str(),
                        e.start,
                        e.end,
                        e.span,
                        e.note,
                        e.context
                    ));
                }
            }
        }
        out
    }

    pub fn to_json(&self) -> serde_json::Value {
        let row = |c: &Counts| {
            serde_json::json!({
                "support": c.support,
                "found": c.found,
                "tp": c.tp,
                "fp": c.fp,
                "fn": c.fn_,
                "precision": c.precision(),
                "recall": c.recall(),
                "f1": c.f1(),
                "lenient_precision": c.lenient_precision(),
                "lenient_recall": c.lenient_recall(),
                "lenient_f1": c.lenient_f1(),
            })
        };
        let classes: serde_json::Map<String, serde_json::Value> = self
            .per_class
            .iter()
            .map(|(k, c)| (k.as_str().to_string(), row(c)))
            .collect();
        serde_json::json!({
            "docs": self.docs,
            "bytes": self.bytes,
            "chars": self.chars,
            "detect_secs": self.detect_secs,
            "mb_per_sec": self.mb_per_sec(),
            "bad_offsets": self.bad_offsets,
            "classes": classes,
            "micro": row(&self.micro),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<15} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7}",
            "class", "support", "TP", "FP", "FN", "prec", "recall", "F1", "l.prec", "l.rec", "l.F1"
        )?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, c: &Counts| {
            writeln!(
                f,
                "{:<15} {:>7} {:>6} {:>6} {:>6} {:>7.4} {:>7.4} {:>7.4} | {:>7.4} {:>7.4} {:>7.4}",
                name,
                c.support,
                c.tp,
                c.fp,
                c.fn_,
                c.precision(),
                c.recall(),
                c.f1(),
                c.lenient_precision(),
                c.lenient_recall(),
                c.lenient_f1()
            )
        };
        for (class, c) in &self.per_class {
            line(f, class.as_str(), c)?;
        }
        writeln!(f, "{}", "-".repeat(111))?;
        line(f, "micro", &self.micro)?;
        writeln!(
            f,
            "{} docs, {:.2} MB ({} chars); detection {:.3} s, {:.2} MB/s{}",
            self.docs,
            self.bytes as f64 / 1e6,
            self.chars,
            self.detect_secs,
            self.mb_per_sec(),
            if self.bad_offsets > 0 {
                format!("; {} findings with inconsistent offsets", self.bad_offsets)
            } else {
                String::new()
            }
        )
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use vault::classes::normalize;

    #[test]
    fn check_characters_match_the_worked_examples() {
        assert_eq!(resident_id_check("11010519491231002"), 'X');
        assert_eq!(resident_id_check("35010219900307123"), '4');
        assert_eq!(uscc_check("91350100M000100Y4"), Some('3'));
        assert_eq!(org_code_check("D2143569"), Some('X'));
        assert_eq!(org_code_check("12345678"), Some('8'));
        assert_eq!(luhn_digit("7992739871"), '3');
        assert!(luhn_ok("79927398713"));
        assert!(!luhn_ok("79927398714"));
    }

    #[test]
    fn deterministic_and_prefix_stable() {
        let a = generate(7, 50);
        let b = generate(7, 80);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.text, y.text);
            assert_eq!(x.labels, y.labels);
        }
        let c = generate(8, 50);
        assert!(a.iter().zip(&c).any(|(x, y)| x.text != y.text));
    }

    #[test]
    fn labels_are_exact_valid_and_disjoint() {
        let docs = generate(1, 3000);
        let mut seen: BTreeMap<Class, usize> = BTreeMap::new();
        let mut kinds: BTreeMap<DocKind, usize> = BTreeMap::new();
        for (i, d) in docs.iter().enumerate() {
            *kinds.entry(d.kind).or_default() += 1;
            let n = d.text.chars().count();
            let mut prev_end = 0;
            for l in &d.labels {
                assert!(l.start < l.end && l.end <= n, "doc {i}: bad span {l:?}");
                assert!(l.start >= prev_end, "doc {i}: overlapping labels");
                prev_end = l.end;
                let span = d.span(l.start, l.end);
                assert_eq!(span.trim(), span, "doc {i}: label with spaces at its ends");
                let norm = normalize(l.class, &span);
                assert!(
                    norm.is_ok(),
                    "doc {i}: {} ⟦{span}⟧ does not normalize: {:?}",
                    l.class,
                    norm.err()
                );
                let norm = norm.unwrap();
                // Checksummed classes must be valid, not merely accepted.
                assert!(
                    norm.flag().is_none(),
                    "doc {i}: {} ⟦{span}⟧ flagged",
                    l.class
                );
                *seen.entry(l.class).or_default() += 1;
            }
        }
        for class in Class::ALL {
            if class != Class::Text {
                assert!(
                    seen.get(&class).copied().unwrap_or(0) >= 30,
                    "{class}: only {:?}",
                    seen.get(&class)
                );
            }
        }
        for kind in DocKind::ALL {
            assert!(kinds.get(&kind).copied().unwrap_or(0) > 100, "{kind:?}");
        }
    }

    #[test]
    fn variety_of_forms() {
        let docs = generate(3, 3000);
        let spans = |class: Class| -> Vec<String> {
            docs.iter()
                .flat_map(|d| {
                    d.labels
                        .iter()
                        .filter(move |l| l.class == class)
                        .map(move |l| d.span(l.start, l.end))
                })
                .collect()
        };
        let ids = spans(Class::CnResidentId);
        assert!(ids.iter().any(|s| s.len() == 15));
        assert!(ids.iter().any(|s| s.ends_with('x')));
        assert!(ids.iter().any(|s| s.contains(' ')));
        assert!(ids.iter().any(|s| s.starts_with('３')));
        assert!(ids.iter().any(|s| s.starts_with("810000")));
        let phones = spans(Class::Phone);
        for needle in ["+86 ", "0086-", "转", "分机", "(0", "-"] {
            assert!(phones.iter().any(|s| s.contains(needle)), "{needle}");
        }
        let emails = spans(Class::Email);
        assert!(emails.iter().any(|s| s.contains('＠')));
        assert!(
            emails
                .iter()
                .any(|s| s.ends_with("@qq.com")
                    && s.split('@').next().unwrap().parse::<u64>().is_ok())
        );
        let names = spans(Class::Name);
        assert!(names
            .iter()
            .any(|s| s.starts_with("欧阳") || s.starts_with("司马")));
        assert!(names.iter().any(|s| s.chars().count() == 1));
        let ips = spans(Class::Ip);
        assert!(ips.iter().any(|s| s.contains("::")));
        let cards = spans(Class::BankCard);
        assert!(cards.iter().any(|s| s.contains(' ')));
        assert!(cards.iter().all(|s| luhn_ok(s) || !s.is_ascii()));
    }

    #[test]
    fn decoys_are_not_pii() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..2000 {
            let n = bad_18_digits(&mut rng);
            assert!(normalize(Class::CnResidentId, &n).is_err());
            assert!(!luhn_ok(&n));
            assert!(normalize(Class::Uscc, &n).unwrap().flag().is_some());
            assert!(!luhn_ok(&luhn_failing(&mut rng, 16)));
        }
        // Text outside labels never contains something that normalizes as a
        // mobile number on digit-run boundaries.
        for d in generate(11, 500) {
            let chars: Vec<char> = d.text.chars().collect();
            let mut i = 0;
            while i < chars.len() {
                if chars[i].is_ascii_digit() {
                    let j = (i..chars.len())
                        .find(|&j| !chars[j].is_ascii_digit())
                        .unwrap_or(chars.len());
                    let inside = d.labels.iter().any(|l| l.start <= i && j <= l.end);
                    let run: String = chars[i..j].iter().collect();
                    let prev_alpha = i > 0 && chars[i - 1].is_ascii_alphabetic();
                    if !inside && !prev_alpha && run.len() == 11 {
                        assert!(normalize(Class::Phone, &run).is_err(), "{run}");
                    }
                    if !inside && !prev_alpha && run.len() == 18 {
                        assert!(normalize(Class::CnResidentId, &run).is_err(), "{run}");
                    }
                    i = j;
                } else {
                    i += 1;
                }
            }
        }
    }

    #[test]
    fn scoring_a_perfect_and_a_shifted_detector() {
        let docs = generate(2, 200);
        let perfect: Vec<Vec<Predicted>> = docs
            .iter()
            .map(|d| {
                d.labels
                    .iter()
                    .map(|l| {
                        let bs: usize = d.text.chars().take(l.start).map(char::len_utf8).sum();
                        let be: usize = d.text.chars().take(l.end).map(char::len_utf8).sum();
                        Predicted {
                            class: l.class,
                            start: l.start,
                            end: l.end,
                            byte_start: bs,
                            byte_end: be,
                        }
                    })
                    .collect()
            })
            .collect();
        let r = score(&docs, &perfect, 1.0, 5);
        assert_eq!(r.micro.fp + r.micro.fn_, 0);
        assert_eq!(r.bad_offsets, 0);
        assert!((r.micro.f1() - 1.0).abs() < 1e-9);
        let shifted: Vec<Vec<Predicted>> = perfect
            .iter()
            .map(|ps| {
                ps.iter()
                    .map(|p| Predicted {
                        end: p.end - 1,
                        ..*p
                    })
                    .filter(|p| p.start < p.end)
                    .collect()
            })
            .collect();
        let r = score(&docs, &shifted, 1.0, 5);
        assert_eq!(r.micro.tp, 0);
        assert!(r.micro.lenient_recall() > 0.9);
        assert!(!r.errors.is_empty());
        let table = r.to_string();
        assert!(table.contains("micro"));
        assert!(r.errors_text(2).contains('⟦'));
    }
}
