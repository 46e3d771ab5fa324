//! Every piece of key material lives in a type from this module, so that each
//! use of a secret is one `grep expose_secret` away. The invariant: a secret is
//! a fixed-size heap array that is zeroized on drop, cannot be cloned or
//! serialized by accident, and prints as `[REDACTED]`.

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// `N` bytes of key material.
pub struct SecretKey<const N: usize> {
    // Boxed so moves never leave stray copies of the bytes on the stack.
    bytes: Box<[u8; N]>,
}

impl<const N: usize> SecretKey<N> {
    /// Fresh key material from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Self::zeroed();
        rand::rngs::OsRng.fill_bytes(key.bytes.as_mut_slice());
        key
    }

    /// Takes ownership of `bytes` and wipes the caller's copy.
    pub fn from_array(bytes: &mut [u8; N]) -> Self {
        let mut key = Self::zeroed();
        key.bytes.copy_from_slice(bytes);
        bytes.zeroize();
        key
    }

    /// A key from a slice of exactly `N` bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != N {
            return None;
        }
        let mut key = Self::zeroed();
        key.bytes.copy_from_slice(bytes);
        Some(key)
    }

    pub(crate) fn zeroed() -> Self {
        let key = Self {
            bytes: Box::new([0u8; N]),
        };
        // Before any secret byte is written: keep the page out of swap.
        crate::hardening::lock_in_memory(key.bytes.as_slice());
        key
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.bytes
    }

    /// A second copy of the key, for a holder with its own lifetime (the
    /// key-encryption key kept by each keyring generation). Explicit, never
    /// `Clone`, so a copy is always a decision.
    pub fn duplicate(&self) -> Self {
        let mut key = Self::zeroed();
        key.bytes.copy_from_slice(self.bytes.as_slice());
        key
    }

    /// The raw bytes. Every caller is a place where key material is used.
    pub fn expose_secret(&self) -> &[u8; N] {
        &self.bytes
    }

    /// Constant-time equality, for comparing keys and shares.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.bytes.as_slice().ct_eq(other.bytes.as_slice()).into()
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl<const N: usize> std::fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let key = SecretKey::<32>::from_slice(&[0xAB; 32]).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(shown, "[REDACTED] [REDACTED]");
        assert!(!shown.to_lowercase().contains("ab"));
    }

    #[test]
    fn from_array_wipes_the_source() {
        let mut raw = [7u8; 32];
        let key = SecretKey::from_array(&mut raw);
        assert_eq!(raw, [0u8; 32]);
        assert_eq!(key.expose_secret(), &[7u8; 32]);
    }

    #[test]
    fn generated_keys_differ_and_compare_in_constant_time() {
        let a = SecretKey::<32>::generate();
        let b = SecretKey::<32>::generate();
        assert!(!a.ct_eq(&b));
        let a2 = SecretKey::<32>::from_slice(a.expose_secret()).unwrap();
        assert!(a.ct_eq(&a2));
        assert!(SecretKey::<32>::from_slice(&[0; 31]).is_none());
    }
}
