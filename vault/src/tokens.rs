//! Which token string a caller sees for a value, and back. Every stored
//! record is keyed by the opaque token bytes (keyed HMAC of class and
//! value); a class configured `preserving` shows callers a format-preserving
//! token instead (FF1, see `crypto::fpe`), which the vault inverts to the
//! value and then to the same opaque bytes. Invariant: both styles of one
//! value lead to the one record, and a string that is neither style of any
//! value resolves to nothing.

use serde::Deserialize;

use crate::classes::{self, Class, Normalized};
use crate::crypto::fpe::PreservingKey;
use crate::crypto::{decode_token, encode_token, TokenBytes};
use crate::keys::Keyring;

/// How a class's tokens look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStyle {
    /// 32 URL-safe characters, the same for every class.
    #[default]
    Opaque,
    /// The class's own shape: a phone token looks like a mobile number.
    Preserving,
}

/// The classes that have a format-preserving shape.
pub const PRESERVING_CLASSES: [Class; 4] = [
    Class::Phone,
    Class::CnResidentId,
    Class::BankCard,
    Class::Uscc,
];

pub fn style_supported(class: Class, style: TokenStyle) -> bool {
    style == TokenStyle::Opaque || PRESERVING_CLASSES.contains(&class)
}

/// The configured style of every class.
#[derive(Clone, Debug, Default)]
pub struct TokenStyles([TokenStyle; 11]);

impl TokenStyles {
    /// From a configuration that validation found clean.
    pub fn from_config(cfg: &crate::config::Config) -> TokenStyles {
        let mut styles = [TokenStyle::Opaque; 11];
        for (name, style) in &cfg.tokens {
            if let Some(slot) = Class::parse(name).and_then(|c| styles.get_mut(slot_of(c))) {
                *slot = *style;
            }
        }
        TokenStyles(styles)
    }

    pub fn of(&self, class: Class) -> TokenStyle {
        self.0.get(slot_of(class)).copied().unwrap_or_default()
    }

    /// The record key of `norm` and the token string the caller gets. A
    /// value without a preserving form (a bank card whose Luhn digit failed,
    /// say) gets its opaque token even in a preserving class.
    pub fn issue(&self, keys: &Keyring, class: Class, norm: &Normalized) -> (TokenBytes, String) {
        let bytes = keys.token_key().token(class, norm.token_form());
        let shown = match self.of(class) {
            TokenStyle::Preserving => keys
                .token_key()
                .preserving()
                .token(class, norm.value())
                .and_then(|t| display(class, t)),
            TokenStyle::Opaque => None,
        };
        (bytes, shown.unwrap_or_else(|| encode_token(&bytes)))
    }

    /// The token string tokenize gave for the value `plain` (as stored,
    /// normalized) of class `class` stored under `stored`: its preserving
    /// form where the class is configured so and the value has one, else
    /// the opaque form of `stored`.
    pub fn shown(&self, keys: &Keyring, class: Class, stored: &TokenBytes, plain: &str) -> String {
        if self.of(class) == TokenStyle::Preserving {
            if let Ok(norm) = classes::normalize(class, plain) {
                let (bytes, shown) = self.issue(keys, class, &norm);
                if bytes == *stored {
                    return shown;
                }
            }
        }
        encode_token(stored)
    }

    /// The record key a token string stands for, in either style. A
    /// preserving token is accepted only for a class configured
    /// `preserving`: their space is dense (every mobile-shaped number is
    /// the token of some number), so an opaque class must not offer it.
    pub fn resolve(&self, keys: &Keyring, token: &str) -> Option<TokenBytes> {
        if let Some(bytes) = decode_token(token) {
            return Some(bytes);
        }
        let e164 = from_display(token);
        let token = e164.as_deref().unwrap_or(token);
        let class = PreservingKey::class_of(token)?;
        if self.of(class) != TokenStyle::Preserving {
            return None;
        }
        let value = keys.token_key().preserving().value(class, token)?;
        // Re-normalized so the record key is computed on exactly the form
        // tokenize used. A value the class no longer accepts was stored
        // under an older rule, in the form it had then: that form.
        match classes::normalize(class, &value) {
            Ok(norm) => Some(keys.token_key().token(class, norm.token_form())),
            Err(_) => Some(keys.token_key().token(class, &value)),
        }
    }
}

fn slot_of(class: Class) -> usize {
    usize::from(class.tag().saturating_sub(1))
}

/// Phone tokens come out of FF1 in E.164 like the values (`+8613812345678`);
/// callers see them as a mobile shows (`13812345678`) or a fixed line in
/// national form (`059187654321`): digits only, URL-safe, and still apart
/// from the other shapes (card tokens never start with 0 and have 12-19
/// digits, resident-ID tokens start `000`). A fixed line with an extension
/// has no such form and gets an opaque token.
fn display(class: Class, token: String) -> Option<String> {
    if class != Class::Phone {
        return Some(token);
    }
    let national = token.strip_prefix("+86")?;
    if !national.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if national.starts_with('1') && national.len() == 11 {
        Some(national.to_string())
    } else if !national.starts_with('0') {
        Some(format!("0{national}"))
    } else {
        None
    }
}

/// The E.164 form of a phone token as [`display`] shows it; `None` for any
/// string that is not one.
fn from_display(token: &str) -> Option<String> {
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if token.len() == 11 && token.starts_with('1') {
        return Some(format!("+86{token}"));
    }
    let rest = token.strip_prefix('0')?;
    if rest.starts_with('0') {
        return None;
    }
    Some(format!("+86{rest}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn phone_tokens_show_as_national_digits_and_come_back() {
        for (e164, shown) in [
            ("+8613812345678", "13812345678"),
            ("+8659187654321", "059187654321"),
            ("+861074829901", "01074829901"),
        ] {
            assert_eq!(display(Class::Phone, e164.into()).as_deref(), Some(shown));
            assert_eq!(from_display(shown).as_deref(), Some(e164));
        }
        assert_eq!(display(Class::Phone, "+8659187654321;ext=12".into()), None);
        // Resident-ID and card tokens are left alone.
        assert_eq!(from_display("000123456789012345"), None);
        assert_eq!(from_display("6222021234567890128"), None);
        assert_eq!(
            display(Class::BankCard, "6222021234567890128".into()).as_deref(),
            Some("6222021234567890128")
        );
    }
}
