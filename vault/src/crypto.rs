//! The three cryptographic operations of the vault: HKDF-SHA256 subkey
//! derivation, keyed deterministic tokens (HMAC-SHA256), and AES-SIV sealing of
//! values. Invariants: no unkeyed hash of a value ever leaves this module, and
//! every ciphertext is bound by its associated data to one record, so a
//! ciphertext copied to another subject, class or key version fails to open.

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

use crate::classes::Class;
use crate::secret::SecretKey;

/// Bytes of PRF output kept in a token: 192 bits, so collisions are out of
/// reach (birthday bound 2^96) while tokens stay 32 characters.
pub const TOKEN_BYTES: usize = 24;
/// A token's length on the wire.
pub const TOKEN_CHARS: usize = 32;
const NONCE_BYTES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Wrong key, wrong associated data or tampered bytes. Deliberately says
    /// nothing more: every decryption failure looks the same to a caller.
    #[error("decryption failed")]
    Open,
    #[error("encryption failed")]
    Seal,
}

/// HKDF-SHA256 (RFC 5869) with the master key as input keying material and a
/// fixed application salt; `label` is the `info` that separates subkeys.
pub fn derive<const N: usize>(master: &SecretKey<32>, label: &[u8]) -> SecretKey<N> {
    let hk = Hkdf::<Sha256>::new(Some(b"vault/hkdf-salt/v1"), master.expose_secret());
    let mut out = SecretKey::<N>::zeroed();
    // N is at most 255 * 32 for every key we derive; a failure is impossible
    // for our sizes, and would leave an all-zero key that the tests catch.
    let _ = hk.expand(label, out.bytes_mut());
    out
}

// The keyed HMAC states kept beside the keys (cloned per token and per
// subject key, and inside HKDF) are as good as the keys, so they must wipe
// themselves when dropped. An `Hmac` is its two hash states (keyed with
// the inner and outer pads) and a block buffer; with the `zeroize`
// features of hmac and sha2 each of those zeroes itself on drop (the
// `Hmac` type itself carries no marker). This stops the build if a
// dependency change takes that away.
const _: () = {
    use hmac::digest::block_api::{Buffer, EagerHash};
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    let _ = wiped_on_drop::<<Sha256 as EagerHash>::Core>;
    let _ = wiped_on_drop::<<Sha512 as EagerHash>::Core>;
    let _ = wiped_on_drop::<Buffer<hmac::block_api::HmacCore<Sha256>>>;
    let _ = wiped_on_drop::<Buffer<hmac::block_api::HmacCore<Sha512>>>;
};

/// The key that turns normalized values into tokens. Separate from data keys
/// and never rotated, so tokens stay stable across data-key rotations.
pub struct TokenKey {
    key: SecretKey<32>,
    /// HMAC-SHA256 already keyed with `key`, cloned per token: two
    /// compressions per token instead of four.
    prf: Option<Hmac<Sha256>>,
    preserving: fpe::PreservingKey,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A token's raw bytes.
pub type TokenBytes = [u8; TOKEN_BYTES];

impl TokenKey {
    pub fn new(key: SecretKey<32>) -> Self {
        let preserving = fpe::PreservingKey::new(derive(&key, b"vault/fpe/v1"));
        let prf = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret()).ok();
        Self {
            key,
            prf,
            preserving,
        }
    }

    /// The key of format-preserving tokens, derived from this one so that
    /// they are as stable as opaque tokens.
    pub fn preserving(&self) -> &fpe::PreservingKey {
        &self.preserving
    }

    /// The token of `value` in `class`: HMAC-SHA256 over the class tag and the
    /// value's token form, truncated. The class tag keeps the same digits in
    /// two classes apart.
    pub fn token(&self, class: Class, token_form: &str) -> TokenBytes {
        let mut out = [0u8; TOKEN_BYTES];
        if let Some(mut mac) = self.prf.clone() {
            mac.update(&[class.tag(), 0]);
            mac.update(token_form.as_bytes());
            let full = mac.finalize().into_bytes();
            for (o, b) in out.iter_mut().zip(full.iter()) {
                *o = *b;
            }
        }
        out
    }
}

/// Bytes of a stored value's header tag (HMAC-SHA256, truncated).
pub const HEADER_TAG_BYTES: usize = 16;

/// Authenticates what a stored value's record holds outside its
/// ciphertext (its retention clock, purpose and restriction), so that
/// someone who can write the database but lacks the root key cannot make
/// a value outlive its retention or lift its restriction by editing it.
pub struct HeaderKey {
    key: SecretKey<32>,
    /// HMAC-SHA256 already keyed with `key`, cloned per tag.
    mac: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderKey")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl HeaderKey {
    pub fn new(key: SecretKey<32>) -> Self {
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret()).ok();
        Self { key, mac }
    }

    pub fn duplicate(&self) -> Self {
        Self::new(self.key.duplicate())
    }

    /// The tag of `parts`, each length-prefixed so no two splits of the
    /// same bytes share a tag.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; HEADER_TAG_BYTES] {
        let mut out = [0u8; HEADER_TAG_BYTES];
        if let Some(mut mac) = self.mac.clone() {
            for p in parts {
                mac.update(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
                mac.update(p);
            }
            let full = mac.finalize().into_bytes();
            for (o, b) in out.iter_mut().zip(full.iter()) {
                *o = *b;
            }
        }
        out
    }

    /// Whether `tag` is the tag of `parts`, in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8; HEADER_TAG_BYTES]) -> bool {
        use subtle::ConstantTimeEq;
        self.mac.is_some() && bool::from(self.tag(parts).ct_eq(tag))
    }
}

/// An opened value as text, in the buffer it was opened into: no copy of
/// the plaintext is left behind unwiped, whether it is UTF-8 or not.
pub fn into_text(mut plain: Zeroizing<Vec<u8>>) -> Option<Zeroizing<String>> {
    match String::from_utf8(std::mem::take(&mut *plain)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            None
        }
    }
}

/// Renders token bytes as the 32-character URL-safe string callers see.
pub fn encode_token(bytes: &TokenBytes) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Parses a token string; anything that is not exactly a token is `None`.
pub fn decode_token(token: &str) -> Option<TokenBytes> {
    if token.len() != TOKEN_CHARS {
        return None;
    }
    let mut out = [0u8; TOKEN_BYTES];
    match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut out) {
        Ok(TOKEN_BYTES) => Some(out),
        _ => None,
    }
}

/// One version of the data-encryption key (AES-256-SIV takes 64 bytes).
pub struct DataKey {
    version: u32,
    key: SecretKey<64>,
    /// HMAC-SHA512 already keyed with `key` (its inner and outer pad
    /// blocks hashed), so deriving a subject's value key costs two
    /// compressions instead of four: half the work of a rewrap's key
    /// derivations. Only on keys that derive; value keys carry `None`
    /// (boxed, so the value keys the subject-key cache holds stay small).
    prf: Option<Box<Hmac<Sha512>>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("version", &self.version)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub fn new(version: u32, key: SecretKey<64>) -> Self {
        let prf = <Hmac<Sha512> as KeyInit>::new_from_slice(key.expose_secret())
            .ok()
            .map(Box::new);
        Self { version, key, prf }
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// The key that seals one subject's values under this version:
    /// HMAC-SHA512 keyed by this data key over a label, the version and the
    /// subject's own key material (a single-block PRF-based KDF, SP 800-108
    /// style, 64 bytes out). Destroying the subject key makes every value
    /// of the subject unreadable, under every version, whatever copies of
    /// the ciphertexts survive.
    pub fn for_subject(&self, subject_key: &SecretKey<32>) -> DataKey {
        let mut out = SecretKey::<64>::zeroed();
        let keyed = match &self.prf {
            Some(prf) => Some((**prf).clone()),
            None => <Hmac<Sha512> as KeyInit>::new_from_slice(self.key.expose_secret()).ok(),
        };
        if let Some(mut mac) = keyed {
            mac.update(b"vault/value-key/v1\0");
            mac.update(&self.version.to_be_bytes());
            mac.update(subject_key.expose_secret());
            let mut full = mac.finalize().into_bytes();
            out.bytes_mut().copy_from_slice(full.as_slice());
            full.as_mut_slice().zeroize();
        }
        DataKey {
            version: self.version,
            key: out,
            prf: None,
        }
    }

    /// A copy of the key bytes, for a new keyring generation.
    pub(crate) fn duplicate_key(&self) -> SecretKey<64> {
        self.key.duplicate()
    }

    /// Encrypts `plaintext` bound to `aad`. Output: random nonce, then the
    /// SIV ciphertext. The random nonce makes equal values under equal
    /// associated data encrypt differently, so ciphertexts leak no equality.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut siv =
            Aes256Siv::new_from_slice(self.key.expose_secret()).map_err(|_| CryptoError::Seal)?;
        let sealed = siv
            .encrypt([aad, &nonce[..]], plaintext)
            .map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts what [`DataKey::seal`] produced under the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.opener()?.open(aad, sealed)
    }

    /// This key's cipher set up once, for many openings in a row (rewrap
    /// unwraps one subject key per value with the same key-encryption key).
    pub fn opener(&self) -> Result<Opener, CryptoError> {
        Aes256Siv::new_from_slice(self.key.expose_secret())
            .map(Opener)
            .map_err(|_| CryptoError::Open)
    }
}

/// A data key's AES-SIV cipher with its key schedule done; wiped on drop
/// (aes-siv's `zeroize` feature).
pub struct Opener(Aes256Siv);

impl Opener {
    /// As [`DataKey::open`].
    pub fn open(&mut self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (nonce, body) = sealed
            .split_at_checked(NONCE_BYTES)
            .ok_or(CryptoError::Open)?;
        self.0
            .decrypt([aad, nonce], body)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

/// The associated data of a stored value: subject, class, key version and,
/// for records of format 2, the token it is filed under, each unambiguous
/// (length-prefixed subject, fixed-size token). With the token bound, a
/// ciphertext moved under another token of the same subject and class no
/// longer opens; `token` is `None` only for format-1 records (written
/// before), which rewrap moves to format 2.
pub fn value_aad(
    subject: &str,
    class: Class,
    key_version: u32,
    token: Option<&TokenBytes>,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + subject.len() + TOKEN_BYTES);
    value_aad_into(&mut aad, subject, class, key_version, token);
    aad
}

/// The associated data of a record of format 3, whose header is tagged
/// ([`HeaderKey`]): as format 2's under another label, so such a record
/// rewritten as format 2 (its tag dropped, its header changed) no longer
/// opens.
pub fn tagged_value_aad(
    subject: &str,
    class: Class,
    key_version: u32,
    token: &TokenBytes,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + subject.len() + TOKEN_BYTES);
    tagged_value_aad_into(&mut aad, subject, class, key_version, token);
    aad
}

/// [`tagged_value_aad`] into a buffer the caller reuses.
pub fn tagged_value_aad_into(
    aad: &mut Vec<u8>,
    subject: &str,
    class: Class,
    key_version: u32,
    token: &TokenBytes,
) {
    aad_into(aad, b"v3", subject, class, key_version, Some(token));
}

/// [`value_aad`] into a buffer the caller reuses (rewrap builds two per
/// value).
pub fn value_aad_into(
    aad: &mut Vec<u8>,
    subject: &str,
    class: Class,
    key_version: u32,
    token: Option<&TokenBytes>,
) {
    let label = if token.is_some() { b"v2" } else { b"v1" };
    aad_into(aad, label, subject, class, key_version, token);
}

fn aad_into(
    aad: &mut Vec<u8>,
    label: &[u8; 2],
    subject: &str,
    class: Class,
    key_version: u32,
    token: Option<&TokenBytes>,
) {
    aad.clear();
    aad.extend_from_slice(label);
    aad.push(u8::try_from(subject.len()).unwrap_or(u8::MAX));
    aad.extend_from_slice(subject.as_bytes());
    aad.push(class.tag());
    aad.extend_from_slice(&key_version.to_be_bytes());
    if let Some(t) = token {
        aad.extend_from_slice(t);
    }
}

pub mod fpe;

#[cfg(test)]
mod tests;
