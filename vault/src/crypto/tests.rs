#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::*;
use aes_siv::siv::Aes128Siv;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

/// RFC 5297 appendix A.1: deterministic AES-SIV-CMAC-256.
#[test]
fn rfc5297_a1_known_answer() {
    let key = unhex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
    let ad = unhex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
    let pt = unhex("11223344 55667788 99aabbcc ddee");
    let expected = unhex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
    let mut siv = Aes128Siv::new_from_slice(&key).unwrap();
    let ct = siv.encrypt([&ad], &pt).unwrap();
    assert_eq!(ct, expected);
    let mut siv = Aes128Siv::new_from_slice(&key).unwrap();
    assert_eq!(siv.decrypt([&ad], &ct).unwrap(), pt);
}

/// RFC 5869 test case 1, checked through the same `hkdf` crate the vault uses.
#[test]
fn rfc5869_case1_known_answer() {
    let ikm = unhex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
    let salt = unhex("000102030405060708090a0b0c");
    let info = unhex("f0f1f2f3f4f5f6f7f8f9");
    let mut okm = [0u8; 42];
    Hkdf::<Sha256>::new(Some(&salt), &ikm)
        .expand(&info, &mut okm)
        .unwrap();
    assert_eq!(
        okm.to_vec(),
        unhex(
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        )
    );
}

/// Tokens and value keys stay what stored data was written with, across
/// crate upgrades: both pinned to values computed outside this code (Python's
/// `hmac`: HMAC-SHA256 over the class tag, 0 and the token form, truncated;
/// HMAC-SHA512 over the label, the version and the subject key).
#[test]
fn token_and_value_key_constructions_are_pinned() {
    let tk = TokenKey::new(SecretKey::from_slice(&[7u8; 32]).unwrap());
    assert_eq!(
        tk.token(Class::Phone, "+8613800138000").to_vec(),
        unhex("b522366236dfb514434f7756887153b2b80a339790e39ca1")
    );
    let dk = DataKey::new(3, SecretKey::from_slice(&[9u8; 64]).unwrap());
    let vk = dk.for_subject(&SecretKey::from_slice(&[5u8; 32]).unwrap());
    assert_eq!(vk.version(), 3);
    assert_eq!(
        vk.key.expose_secret().to_vec(),
        unhex(
            "a372f9dbab12eec67d3ad652d6fead1b620a1646ea088d138164fa082c1b9826\
             40494b577dd357ffcc6dd808ce3072c745d02abf3024cfc49f85f7dd3aa12443"
        )
    );
}

fn master() -> SecretKey<32> {
    SecretKey::from_slice(&[42u8; 32]).unwrap()
}

#[test]
fn derived_keys_are_separated_by_label_and_nonzero() {
    let a: SecretKey<32> = derive(&master(), b"token");
    let b: SecretKey<32> = derive(&master(), b"data/1");
    assert!(!a.ct_eq(&b));
    assert_ne!(a.expose_secret(), &[0u8; 32]);
    let a2: SecretKey<32> = derive(&master(), b"token");
    assert!(a.ct_eq(&a2));
}

#[test]
fn tokens_are_deterministic_keyed_and_class_separated() {
    let k = TokenKey::new(derive(&master(), b"token"));
    let t1 = k.token(Class::Phone, "+8613800138000");
    assert_eq!(t1, k.token(Class::Phone, "+8613800138000"));
    assert_ne!(t1, k.token(Class::Text, "+8613800138000"));
    let other = TokenKey::new(derive(
        &SecretKey::from_slice(&[1u8; 32]).unwrap(),
        b"token",
    ));
    assert_ne!(t1, other.token(Class::Phone, "+8613800138000"));
    // Not a plain hash of the value.
    use sha2::Digest;
    let plain = Sha256::digest(b"+8613800138000");
    assert_ne!(&t1[..], &plain[..TOKEN_BYTES]);
    let s = encode_token(&t1);
    assert_eq!(s.len(), TOKEN_CHARS);
    assert!(s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(decode_token(&s), Some(t1));
}

#[test]
fn decode_token_rejects_anything_else() {
    for bad in [
        "",
        "short",
        &"A".repeat(33),
        &"!".repeat(32),
        "../../etc/passwd",
    ] {
        assert_eq!(decode_token(bad), None, "{bad}");
    }
}

#[test]
fn seal_open_round_trip_and_binding() {
    let dk = DataKey::new(1, derive(&master(), b"data/1"));
    let (t1, t2) = ([1u8; TOKEN_BYTES], [2u8; TOKEN_BYTES]);
    let aad = value_aad("acct-1", Class::Phone, 1, Some(&t1));
    let ct = dk.seal(&aad, b"+8613800138000").unwrap();
    assert_eq!(&dk.open(&aad, &ct).unwrap()[..], b"+8613800138000");
    // Random nonce: the same value seals differently.
    assert_ne!(ct, dk.seal(&aad, b"+8613800138000").unwrap());
    // Any other subject, class, version or token fails, and so does the
    // format-1 AAD (no token) of the same value.
    for other in [
        value_aad("acct-2", Class::Phone, 1, Some(&t1)),
        value_aad("acct-1", Class::Email, 1, Some(&t1)),
        value_aad("acct-1", Class::Phone, 2, Some(&t1)),
        value_aad("acct-1", Class::Phone, 1, Some(&t2)),
        value_aad("acct-1", Class::Phone, 1, None),
    ] {
        assert_eq!(dk.open(&other, &ct), Err(CryptoError::Open));
    }
    let mut tampered = ct.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(dk.open(&aad, &tampered), Err(CryptoError::Open));
    assert_eq!(dk.open(&aad, &ct[..5]), Err(CryptoError::Open));
    let dk2 = DataKey::new(1, derive(&master(), b"data/2"));
    assert_eq!(dk2.open(&aad, &ct), Err(CryptoError::Open));
}

#[test]
fn ciphertext_does_not_contain_plaintext() {
    let dk = DataKey::new(1, derive(&master(), b"data/1"));
    let ct = dk.seal(b"", b"350102199003071234").unwrap();
    assert!(!ct.windows(6).any(|w| w == b"350102"));
}

/// An opened value becomes text in its own buffer (no second copy to
/// leave unwiped), and bytes that are not UTF-8 are no text.
#[test]
fn opened_values_become_text_in_place() {
    let plain = Zeroizing::new(b"13800138000".to_vec());
    let at = plain.as_ptr();
    let text = into_text(plain).unwrap();
    assert_eq!(text.as_str(), "13800138000");
    assert_eq!(text.as_ptr(), at, "the plaintext was copied");
    assert!(into_text(Zeroizing::new(vec![0xff, 0xfe])).is_none());
}
