//! The vault's layout on top of the [`Store`](crate::store::Store): key
//! shapes per space and the binary record of one stored value. Invariant: a
//! record holds ciphertext and metadata only; the subject and token it is
//! filed under are its key, and both are bound into the ciphertext's AAD
//! (the token from record format 2 on; format 1 bound the subject only),
//! and from format 3 on its header (retention clock, purpose, restriction)
//! carries a tag over itself, the subject and the token. Records of formats
//! 1 and 2 are still read; rewrap moves them to format 3.

use crate::classes::Class;
use crate::crypto::{HeaderKey, TokenBytes, HEADER_TAG_BYTES, TOKEN_BYTES};

/// Records written now: the token is in the AAD, the header is tagged.
const RECORD_FORMAT: u8 = 3;
/// Records written before headers were tagged; still read.
const RECORD_FORMAT_V2: u8 = 2;
/// Records written before the token was bound; still read.
const RECORD_FORMAT_V1: u8 = 1;
/// The header flag of a value kept only for a legal retention period
/// after its subject asked for erasure (PIPL Art. 47).
const FLAG_RESTRICTED: u8 = 1;

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
    /// Whether the ciphertext's AAD binds the token (formats 2 and 3;
    /// every record written now). `false` only for records read in
    /// format 1.
    pub token_bound: bool,
    /// Kept only for a legal retention period after an erasure request:
    /// released for nothing but a legal exception. Stored in format 3 only.
    pub restricted: bool,
    /// The header's tag, for a record of format 3 (what
    /// [`Record::encode_tagged`] wrote or [`Record::decode`] read); `None`
    /// for the older formats.
    pub tag: Option<[u8; HEADER_TAG_BYTES]>,
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
            .field("restricted", &self.restricted)
            .field("tagged", &self.tag.is_some())
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The stored bytes: format 3 with the tag the record carries, or
    /// format 2 or 1 for a record read in those (see
    /// [`Record::encode_tagged`] for a record being written).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        if let Some(tag) = &self.tag {
            out.extend_from_slice(tag);
        }
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Tags the header for the row `token`, `subject` and encodes the
    /// record in format 3: how every record is written. Its ciphertext
    /// must have been sealed with [`Record::aad`] of a tagged record
    /// (`crate::crypto::tagged_value_aad`).
    pub fn encode_tagged(&mut self, key: &HeaderKey, subject: &str, token: &TokenBytes) -> Vec<u8> {
        self.tag = Some([0; HEADER_TAG_BYTES]);
        let tag = key.tag(&[&self.header(), subject.as_bytes(), token]);
        self.tag = Some(tag);
        self.encode()
    }

    /// The bytes of a record read and then changed (its clock or
    /// restriction): format 3 tagged again, an older format as it was
    /// (its ciphertext's AAD is the older format's; rewrap moves it on).
    /// Check [`Record::header_ok`] before changing a record: this tags
    /// whatever the header now says.
    pub fn encode_changed(
        &mut self,
        key: &HeaderKey,
        subject: &str,
        token: &TokenBytes,
    ) -> Vec<u8> {
        if self.tag.is_some() {
            self.encode_tagged(key, subject, token)
        } else {
            self.encode()
        }
    }

    /// Whether the header is as the vault wrote it for this row: the tag
    /// verifies (format 3). A record of format 1 or 2 has no tag and is
    /// taken as it is (rewrap moves it to format 3).
    pub fn header_ok(&self, key: &HeaderKey, subject: &str, token: &TokenBytes) -> bool {
        match &self.tag {
            Some(tag) => key.verify(&[&self.header(), subject.as_bytes(), token], tag),
            None => true,
        }
    }

    /// The bytes before the tag: format, class, key version, collection
    /// time, expiry, then (format 3) the flags, then the purpose.
    fn header(&self) -> Vec<u8> {
        let purpose = self.purpose.as_bytes();
        let mut out =
            Vec::with_capacity(25 + purpose.len() + HEADER_TAG_BYTES + self.ciphertext.len());
        out.push(match (self.tag.is_some(), self.token_bound) {
            (true, _) => RECORD_FORMAT,
            (false, true) => RECORD_FORMAT_V2,
            (false, false) => RECORD_FORMAT_V1,
        });
        out.push(self.class.tag());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.collected_ms.to_be_bytes());
        // 0 stands for `None`, so an expiry at the epoch itself is written as
        // 1 ms after it: both are long past, and the value must not come
        // back as one that never expires.
        let expires = self.expires_ms.map_or(0, |e| e.max(1));
        out.extend_from_slice(&expires.to_be_bytes());
        if self.tag.is_some() {
            out.push(if self.restricted { FLAG_RESTRICTED } else { 0 });
        }
        out.push(u8::try_from(purpose.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(purpose.get(..255).unwrap_or(purpose));
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&[format, tag], rest) = bytes.split_first_chunk::<2>()?;
        let (token_bound, tagged) = match format {
            RECORD_FORMAT => (true, true),
            RECORD_FORMAT_V2 => (true, false),
            RECORD_FORMAT_V1 => (false, false),
            _ => return None,
        };
        let (version, rest) = rest.split_first_chunk::<4>()?;
        let (collected, rest) = rest.split_first_chunk::<8>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (restricted, rest) = if tagged {
            let (&flags, rest) = rest.split_first()?;
            match flags {
                0 => (false, rest),
                FLAG_RESTRICTED => (true, rest),
                _ => return None,
            }
        } else {
            (false, rest)
        };
        let (&plen, rest) = rest.split_first()?;
        let (purpose, rest) = rest.split_at_checked(usize::from(plen))?;
        let (header_tag, ciphertext) = if tagged {
            let (t, rest) = rest.split_first_chunk::<HEADER_TAG_BYTES>()?;
            (Some(*t), rest)
        } else {
            (None, rest)
        };
        let expires = u64::from_be_bytes(*expires);
        Some(Record {
            class: Class::from_tag(tag)?,
            key_version: u32::from_be_bytes(*version),
            collected_ms: u64::from_be_bytes(*collected),
            expires_ms: (expires != 0).then_some(expires),
            purpose: String::from_utf8(purpose.to_vec()).ok()?,
            ciphertext: ciphertext.to_vec(),
            token_bound,
            restricted,
            tag: header_tag,
        })
    }

    /// The AAD this record's ciphertext was sealed with, filed under
    /// `token` for `subject`.
    pub fn aad(&self, subject: &str, token: &TokenBytes) -> Vec<u8> {
        if self.tag.is_some() {
            return crate::crypto::tagged_value_aad(subject, self.class, self.key_version, token);
        }
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
            restricted: false,
            tag: None,
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
            restricted: false,
            tag: None,
        };
        let bytes = r.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(Record::decode(&bytes).unwrap(), r);
        // A record of format 1 (no token in its AAD) still reads, as such.
        let v1 = Record {
            token_bound: false,
            restricted: false,
            tag: None,
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
    fn format_3_round_trips_and_its_tag_binds_header_subject_and_token() {
        let key = HeaderKey::new(crate::secret::SecretKey::from_slice(&[7; 32]).unwrap());
        let other = HeaderKey::new(crate::secret::SecretKey::from_slice(&[8; 32]).unwrap());
        let t = [3u8; TOKEN_BYTES];
        let mut r = Record {
            class: Class::CnResidentId,
            key_version: 2,
            collected_ms: 10,
            expires_ms: Some(99),
            purpose: "identity_verification".into(),
            ciphertext: vec![9, 8, 7],
            token_bound: true,
            restricted: true,
            tag: None,
        };
        let bytes = r.encode_tagged(&key, "s", &t);
        assert_eq!(bytes[0], 3);
        let back = Record::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert!(back.restricted && back.tag.is_some());
        assert_eq!(back.encode(), bytes, "canonical");
        assert!(back.header_ok(&key, "s", &t));
        assert!(!back.header_ok(&other, "s", &t));
        assert!(!back.header_ok(&key, "s2", &t));
        assert!(!back.header_ok(&key, "s", &[4u8; TOKEN_BYTES]));
        // Any header field changed: the tag fails.
        for changed in [
            Record {
                expires_ms: None,
                ..back.clone()
            },
            Record {
                expires_ms: Some(100),
                ..back.clone()
            },
            Record {
                collected_ms: 11,
                ..back.clone()
            },
            Record {
                purpose: "notification".into(),
                ..back.clone()
            },
            Record {
                restricted: false,
                ..back.clone()
            },
            Record {
                key_version: 3,
                ..back.clone()
            },
            Record {
                class: Class::Phone,
                ..back.clone()
            },
        ] {
            let again = Record::decode(&changed.encode()).unwrap();
            assert!(!again.header_ok(&key, "s", &t), "{changed:?}");
        }
        // The ciphertext is not in the tag (its AAD guards it).
        let other_ct = Record {
            ciphertext: vec![1],
            ..back.clone()
        };
        assert!(other_ct.header_ok(&key, "s", &t));
        // A format-3 AAD differs from format 2's for the same fields.
        let v2 = Record {
            tag: None,
            restricted: false,
            ..back.clone()
        };
        assert_ne!(v2.aad("s", &t), back.aad("s", &t));
        // A flags byte other than 0 or 1 does not decode.
        let mut bad = bytes.clone();
        bad[22] = 2;
        assert!(Record::decode(&bad).is_none());
        // Cut anywhere before the ciphertext: nothing.
        for cut in 0..(bytes.len() - 3) {
            assert!(Record::decode(&bytes[..cut]).is_none(), "{cut}");
        }
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
