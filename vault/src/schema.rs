//! The vault's layout on top of the [`Store`](crate::store::Store): key
//! shapes per space and the binary record of one stored value. Invariant: a
//! record holds ciphertext and metadata only; the subject and token it is
//! filed under are its key, and both are bound into the ciphertext's AAD
//! (the token from record format 2 on; format 1 bound the subject only, and
//! rewrap moves such records to format 2).

use crate::classes::Class;
use crate::crypto::{TokenBytes, TOKEN_BYTES};

/// Records written now: the token is in the AAD.
const RECORD_FORMAT: u8 = 2;
/// Records written before the token was bound; still read.
const RECORD_FORMAT_V1: u8 = 1;

/// One stored value of one subject.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub class: Class,
    pub key_version: u32,
    pub collected_ms: u64,
    /// `None`: no clock runs yet (ends with an account event or erasure).
    pub expires_ms: Option<u64>,
    /// A policy purpose: 1-128 ASCII characters, as config validation
    /// guarantees (the encoding keeps at most 255 bytes).
    pub purpose: String,
    pub ciphertext: Vec<u8>,
    /// Whether the ciphertext's AAD binds the token (format 2; every record
    /// written now). `false` only for records read in format 1.
    pub token_bound: bool,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("class", &self.class)
            .field("key_version", &self.key_version)
            .field("collected_ms", &self.collected_ms)
            .field("expires_ms", &self.expires_ms)
            .field("purpose", &self.purpose)
            .field("token_bound", &self.token_bound)
            .finish_non_exhaustive()
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let purpose = self.purpose.as_bytes();
        let mut out = Vec::with_capacity(24 + purpose.len() + self.ciphertext.len());
        out.push(if self.token_bound {
            RECORD_FORMAT
        } else {
            RECORD_FORMAT_V1
        });
        out.push(self.class.tag());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.collected_ms.to_be_bytes());
        // 0 stands for `None`, so an expiry at the epoch itself is written as
        // 1 ms after it: both are long past, and the value must not come
        // back as one that never expires.
        let expires = self.expires_ms.map_or(0, |e| e.max(1));
        out.extend_from_slice(&expires.to_be_bytes());
        out.push(u8::try_from(purpose.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(purpose.get(..255).unwrap_or(purpose));
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&[format, tag], rest) = bytes.split_first_chunk::<2>()?;
        let token_bound = match format {
            RECORD_FORMAT => true,
            RECORD_FORMAT_V1 => false,
            _ => return None,
        };
        let (version, rest) = rest.split_first_chunk::<4>()?;
        let (collected, rest) = rest.split_first_chunk::<8>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (&plen, rest) = rest.split_first()?;
        let (purpose, ciphertext) = rest.split_at_checked(usize::from(plen))?;
        let expires = u64::from_be_bytes(*expires);
        Some(Record {
            class: Class::from_tag(tag)?,
            key_version: u32::from_be_bytes(*version),
            collected_ms: u64::from_be_bytes(*collected),
            expires_ms: (expires != 0).then_some(expires),
            purpose: String::from_utf8(purpose.to_vec()).ok()?,
            ciphertext: ciphertext.to_vec(),
            token_bound,
        })
    }

    /// The AAD this record's ciphertext was sealed with, filed under
    /// `token` for `subject`.
    pub fn aad(&self, subject: &str, token: &TokenBytes) -> Vec<u8> {
        crate::crypto::value_aad(
            subject,
            self.class,
            self.key_version,
            self.token_bound.then_some(token),
        )
    }

    /// Live at `now_ms`: expiry holds at read time, sweeper or not.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// First byte of a tombstone, never a record's format.
const TOMBSTONE_FORMAT: u8 = 0xE7;

/// How long a tombstone says `gone` before the sweeper removes it (and the
/// token, for that subject, is `unknown` like one never issued).
pub const TOMBSTONE_KEEP_MS: u64 = 366 * 86_400_000;

/// What is left in `Values` of a value that was erased, corrected away or
/// deleted at the end of its retention: its class and when it went, no
/// ciphertext. It lets detokenize answer `gone` rather than `unknown`, until
/// `keep_until` (indexed in `Expiry`, so the sweeper removes it then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub class: Class,
    pub gone_ms: u64,
    pub keep_until: u64,
}

impl Tombstone {
    pub fn new(class: Class, gone_ms: u64) -> Tombstone {
        Tombstone {
            class,
            gone_ms,
            keep_until: gone_ms.saturating_add(TOMBSTONE_KEEP_MS),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        out.push(TOMBSTONE_FORMAT);
        out.push(self.class.tag());
        out.extend_from_slice(&self.gone_ms.to_be_bytes());
        out.extend_from_slice(&self.keep_until.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Tombstone> {
        let (&[format, tag], rest) = bytes.split_first_chunk::<2>()?;
        if format != TOMBSTONE_FORMAT {
            return None;
        }
        let (gone, rest) = rest.split_first_chunk::<8>()?;
        let (keep, rest) = rest.split_first_chunk::<8>()?;
        if !rest.is_empty() {
            return None;
        }
        Some(Tombstone {
            class: Class::from_tag(tag)?,
            gone_ms: u64::from_be_bytes(*gone),
            keep_until: u64::from_be_bytes(*keep),
        })
    }
}

/// `Values` key: token then subject.
pub fn value_key(token: &TokenBytes, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(TOKEN_BYTES + subject.len());
    k.extend_from_slice(token);
    k.extend_from_slice(subject.as_bytes());
    k
}

/// The subject of a `Values` key.
pub fn subject_of_value_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(TOKEN_BYTES..)?).ok()
}

/// `Subjects` key: subject, a 0 byte (never in a subject id), token.
pub fn subject_key(subject: &str, token: &TokenBytes) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + 1 + TOKEN_BYTES);
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    k.extend_from_slice(token);
    k
}

/// `Expiry` key: expiry time (big-endian, so keys sort by time), token, subject.
pub fn expiry_key(expires_ms: u64, token: &TokenBytes, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + TOKEN_BYTES + subject.len());
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(token);
    k.extend_from_slice(subject.as_bytes());
    k
}

/// A subject id: 1-128 of `[A-Za-z0-9._:-]`.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn tombstones_round_trip_and_are_never_records() {
        let t = Tombstone::new(Class::Phone, 1_000);
        assert_eq!(t.keep_until, 1_000 + TOMBSTONE_KEEP_MS);
        let bytes = t.encode();
        assert_eq!(Tombstone::decode(&bytes), Some(t));
        assert!(Record::decode(&bytes).is_none());
        let rec = Record {
            class: Class::Phone,
            key_version: 1,
            collected_ms: 5,
            expires_ms: None,
            purpose: "p".into(),
            ciphertext: vec![1, 2, 3],
            token_bound: true,
        };
        assert!(Tombstone::decode(&rec.encode()).is_none());
        for cut in 0..bytes.len() {
            assert!(Tombstone::decode(&bytes[..cut]).is_none());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Tombstone::decode(&long).is_none());
    }

    #[test]
    fn record_round_trip_and_garbage() {
        let r = Record {
            class: Class::Phone,
            key_version: 7,
            collected_ms: 123,
            expires_ms: Some(456),
            purpose: "notification".into(),
            ciphertext: vec![1, 2, 3],
            token_bound: true,
        };
        let bytes = r.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        // A record of format 1 (no token in its AAD) still reads, as such.
        let v1 = Record {
            token_bound: false,
            ..r.clone()
        };
        assert_eq!(v1.encode()[0], 1);
        assert_eq!(Record::decode(&v1.encode()).unwrap(), v1);
        let t = [3u8; TOKEN_BYTES];
        assert_ne!(v1.aad("s", &t), r.aad("s", &t));
        assert_eq!(v1.aad("s", &t), v1.aad("s", &[4u8; TOKEN_BYTES]));
        let forever = Record {
            expires_ms: None,
            ..r.clone()
        };
        assert_eq!(Record::decode(&forever.encode()).unwrap(), forever);
        assert!(forever.is_live(u64::MAX));
        // An expiry at the epoch must not decode as "never" (found by fuzzing).
        let epoch = Record {
            expires_ms: Some(0),
            ..r.clone()
        };
        let back = Record::decode(&epoch.encode()).unwrap();
        assert_eq!(back.expires_ms, Some(1));
        assert!(!back.is_live(1));
        assert!(r.is_live(455) && !r.is_live(456));
        for cut in 0..24 {
            assert!(Record::decode(&bytes[..cut]).is_none(), "{cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(Record::decode(&bad).is_none());
        assert!(!format!("{r:?}").contains("[1, 2, 3]"));
    }

    #[test]
    fn subjects() {
        assert!(valid_subject("acct-1001"));
        assert!(valid_subject("a.b:c_d-9"));
        assert!(valid_subject(&"a".repeat(128)));
        for bad in ["", "a b", "a/b", "a\0b", "陈", &"a".repeat(129), "../x"] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
        let t = [5u8; TOKEN_BYTES];
        assert_eq!(
            subject_of_value_key(&value_key(&t, "acct-1")),
            Some("acct-1")
        );
    }
}
