//! `name`: a person's name, Chinese or Latin. Invariant: a value that leaves
//! here is NFKC, trimmed, without invisible formatting characters, with
//! single spaces, every middle-dot look-alike turned into U+00B7 (minority
//! names join their parts with it), no space beside one nor between two
//! Chinese characters, 1-64 characters, no digits and no control characters. No
//! simplified/traditional conversion: those are different names on paper.

use super::{collapse_spaces, Invalid, FULL_MASK};

const MAX_CHARS: usize = 64;
const MIDDLE_DOT: char = '\u{00B7}';

/// Two-character surnames, which the mask keeps whole; traditional forms too,
/// since names are not converted.
pub(crate) const COMPOUND_SURNAMES: [&str; 60] = [
    "欧阳", "上官", "皇甫", "令狐", "诸葛", "司徒", "司马", "申屠", "夏侯", "慕容", "尉迟", "东方",
    "独孤", "南宫", "万俟", "闻人", "长孙", "宇文", "轩辕", "澹台", "公孙", "端木", "呼延", "钟离",
    "西门", "公冶", "太叔", "濮阳", "淳于", "单于", "赫连", "百里", "东郭", "仲孙", "拓跋", "司空",
    "司寇", "第五", "羊舌", "微生", "梁丘", "左丘", "公羊", "谷梁", "乐正", "漆雕", "公良", "巫马",
    "鲜于", "闾丘", "歐陽", "諸葛", "司馬", "東方", "獨孤", "南宮", "聞人", "長孫", "軒轅", "鍾離",
];

pub(super) fn normalize(raw: &str) -> Result<String, Invalid> {
    // Four bytes is the widest a character can be in UTF-8.
    let spaced = collapse_spaces(raw, MAX_CHARS * 4)?;
    let mut out = String::with_capacity(spaced.len());
    let mut count = 0usize;
    let mut chars = spaced.chars().map(unify_dot).peekable();
    while let Some(c) = chars.next() {
        // U+3007 `〇` is numeric to Unicode yet appears in real names.
        if c.is_numeric() && c != '〇' {
            return Err(Invalid::Charset);
        }
        // `阿依古丽 · 买买提` and `阿依古丽·买买提` are one name, and so
        // are `陈 明` and `陈明`: Chinese names have no spaces.
        if c == ' '
            && (out.ends_with(MIDDLE_DOT)
                || chars.peek() == Some(&MIDDLE_DOT)
                || out.chars().next_back().is_some_and(is_han)
                    && chars.peek().copied().is_some_and(is_han))
        {
            continue;
        }
        count += 1;
        if count > MAX_CHARS {
            return Err(Invalid::TooLong);
        }
        out.push(c);
    }
    Ok(out)
}

/// Whether `c` is a CJK ideograph (the BMP blocks, compatibility
/// ideographs, and the supplementary planes where rare name characters
/// live).
fn is_han(c: char) -> bool {
    matches!(c,
        '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{3FFFF}')
}

/// Middle-dot look-alikes that IMEs and fonts produce for U+00B7: katakana
/// middle dot (also what NFKC makes of the half-width one), bullet,
/// hyphenation point and bullet operator.
fn unify_dot(c: char) -> char {
    match c {
        '\u{30FB}' | '\u{2022}' | '\u{2027}' | '\u{2219}' => MIDDLE_DOT,
        c => c,
    }
}

/// A Chinese name keeps its surname (compound surnames whole) and stars every
/// other character (`陈*`, `欧阳**`); a Latin name keeps the first letter of
/// each word (of a name of initials only, just the first: `J *`). Spaces
/// and middle dots stay, to keep the shape readable. At least one character
/// is always starred, so a lone surname or initial is `*`.
pub(super) fn mask(name: &str) -> String {
    if name.bytes().any(|b| b.is_ascii_alphabetic()) {
        return mask_latin(name);
    }
    let n = name.chars().filter(|&c| !is_word_break(c)).count();
    if n == 0 {
        return FULL_MASK.to_string();
    }
    let surname = if COMPOUND_SURNAMES.iter().any(|s| name.starts_with(s)) {
        2
    } else {
        1
    };
    let keep = surname.min(n - 1);
    name.chars()
        .enumerate()
        .map(|(i, c)| if i < keep || is_word_break(c) { c } else { '*' })
        .collect()
}

fn mask_latin(name: &str) -> String {
    let mut word_start = true;
    let mut hidden = 0usize;
    let masked = name
        .chars()
        .map(|c| {
            if is_word_break(c) {
                word_start = true;
                c
            } else if std::mem::replace(&mut word_start, false) {
                c
            } else {
                hidden += 1;
                '*'
            }
        })
        .collect();
    if hidden > 0 {
        return masked;
    }
    // Every word is one letter (`J`, `J K`): the initials are the whole name,
    // so only the first is kept, and a lone initial is starred like a lone
    // surname.
    let letters = name.chars().filter(|&c| !is_word_break(c)).count();
    let mut kept = letters < 2;
    name.chars()
        .map(|c| {
            if is_word_break(c) || !std::mem::replace(&mut kept, true) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

fn is_word_break(c: char) -> bool {
    matches!(c, ' ' | '-' | MIDDLE_DOT)
}
