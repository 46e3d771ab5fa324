//! Character classes for the scanner, width-folded: full-width digits,
//! letters and punctuation (U+FF01..U+FF5E) fold to their ASCII forms, the
//! ideographic space, the invisible characters and spaces normalization
//! strips, and the dashes U+2010..U+2015 and U+2212 to separators. Invariant:
//! `at` never reads past the end of the text and always returns a width of
//! at least one byte for a non-empty rest, so every loop over it advances.

/// A character as the scanner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ch {
    /// An ASCII digit or its full-width form; the value is the ASCII byte.
    Digit(u8),
    /// An ASCII letter or its full-width form; the value is the ASCII byte.
    Letter(u8),
    /// Whitespace inside a number: space, tab, ideographic space.
    Space,
    /// A hyphen or dash.
    Dash,
    /// Other ASCII punctuation (folded from full width), as the ASCII byte.
    Punct(u8),
    /// A currency sign: `¥`, `￥`, `$`, `€`, `£`.
    Currency,
    /// A CJK ideograph.
    Han,
    /// A line break.
    Newline,
    /// Anything else.
    Other,
}

impl Ch {
    pub(super) fn is_alnum(self) -> bool {
        matches!(self, Ch::Digit(_) | Ch::Letter(_))
    }

    pub(super) fn is_digit(self) -> bool {
        matches!(self, Ch::Digit(_))
    }
}

/// The class and byte width of the character at byte `i` of `text`
/// (`(Ch::Other, 0)` at the end; a position inside a character reads as a
/// one-byte `Other`, which never happens when the caller steps by widths).
#[inline]
pub(super) fn at(bytes: &[u8], i: usize) -> (Ch, usize) {
    let Some(&b) = bytes.get(i) else {
        return (Ch::Other, 0);
    };
    if b < 0x80 {
        return (ascii(b), 1);
    }
    match b {
        // The Han blocks U+3400..U+9FFF have lead bytes E3 (from U+3400) to E9.
        0xE4..=0xE9 => (Ch::Han, 3),
        0xE3 => {
            let c = decode3(bytes, i);
            let ch = match c {
                0x3000 => Ch::Space,
                0x3400..=0x4DBF => Ch::Han,
                _ => Ch::Other,
            };
            (ch, 3)
        }
        0xE2 => {
            let c = decode3(bytes, i);
            let ch = match c {
                // Superscript and subscript minus: NFKC makes them U+2212.
                0x2010..=0x2015 | 0x2212 | 0x207B | 0x208B => Ch::Dash,
                0x2028 | 0x2029 => Ch::Newline,
                // The invisible characters normalization drops (zero-width
                // spaces and joiners, bidirectional marks and overrides,
                // invisible operators), pasted or planted inside a number
                // (`138\u{200B}0013...`), and the spaces NFKC makes plain:
                // they group its digits as a space would. The detector
                // reads through whatever the normalizer strips, or a value
                // `normalize` takes would pass deidentify in clear.
                0x2000..=0x200F | 0x202A..=0x202F | 0x205F..=0x2064 | 0x2066..=0x2069 => Ch::Space,
                0x20AC => Ch::Currency,
                _ => Ch::Other,
            };
            (ch, 3)
        }
        0xEF => {
            let c = decode3(bytes, i);
            let ch = match c {
                0xF900..=0xFAFF => Ch::Han,
                // Ideographic commas and semicolons end clauses; they never
                // group digits as ASCII commas do.
                0xFF0C | 0xFF1B => Ch::Other,
                0xFF01..=0xFF5E => {
                    // Full width: U+FF01 + k is ASCII 0x21 + k.
                    ascii(u8::try_from(c - 0xFF01 + 0x21).unwrap_or(0))
                }
                0xFE6B => Ch::Punct(b'@'),
                // Small and vertical dashes, small hyphen-minus (NFKC: a
                // dash).
                0xFE31 | 0xFE32 | 0xFE58 | 0xFE63 => Ch::Dash,
                // The byte-order mark, used as a zero-width no-break space.
                0xFEFF => Ch::Space,
                0xFFE0 | 0xFFE1 | 0xFFE5 => Ch::Currency,
                _ => Ch::Other,
            };
            (ch, 3)
        }
        0xC2 => {
            let ch = match bytes.get(i + 1) {
                Some(0xA3 | 0xA5) => Ch::Currency,
                // The no-break space, and the soft hyphen (invisible).
                Some(0xA0 | 0xAD) => Ch::Space,
                Some(0x85) => Ch::Newline,
                _ => Ch::Other,
            };
            (ch, 2)
        }
        0xC0..=0xDF => (Ch::Other, 2),
        // The Ogham space mark, a space to NFKC.
        0xE1 if decode3(bytes, i) == 0x1680 => (Ch::Space, 3),
        0xE0..=0xEF => (Ch::Other, 3),
        0xF0 => {
            // U+20000..U+3FFFF, the supplementary ideographic planes.
            let ch = match bytes.get(i + 1) {
                Some(0xA0..=0xBF) => Ch::Han,
                _ => Ch::Other,
            };
            (ch, 4)
        }
        0xF1..=0xF7 => (Ch::Other, 4),
        _ => (Ch::Other, 1),
    }
}

#[inline]
fn ascii(b: u8) -> Ch {
    match b {
        b'0'..=b'9' => Ch::Digit(b),
        b'a'..=b'z' | b'A'..=b'Z' => Ch::Letter(b),
        b' ' | b'\t' => Ch::Space,
        b'\n' | b'\r' | 0x0B | 0x0C => Ch::Newline,
        b'-' => Ch::Dash,
        b'$' => Ch::Currency,
        0x21..=0x7E => Ch::Punct(b),
        _ => Ch::Other,
    }
}

/// The scalar value of the three-byte sequence at `i` (0 if cut short).
#[inline]
fn decode3(bytes: &[u8], i: usize) -> u32 {
    match bytes.get(i..i + 3) {
        Some(&[a, b, c]) => {
            (u32::from(a & 0x0F) << 12) | (u32::from(b & 0x3F) << 6) | u32::from(c & 0x3F)
        }
        _ => 0,
    }
}

/// Whether `c` is a CJK ideograph (BMP blocks, compatibility ideographs and
/// the supplementary planes, where rare name characters live).
pub(super) fn is_han(c: char) -> bool {
    matches!(c,
        '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}'
        | '\u{20000}'..='\u{3FFFF}')
}
