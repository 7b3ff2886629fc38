//! The store's cryptography: which key is derived from which secret, how a value is sealed and
//! what its ciphertext is bound to, and how a recipient address becomes a blind-index entry.
//!
//! Everything here is pure computation over keys in memory (ring's AES-256-GCM, HKDF-SHA256 and
//! HMAC-SHA256); it never writes a file and never logs. It must never hand out raw key bytes.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of every secret the keystore holds (the master key and each data-key secret):
/// AES-256 and HMAC-SHA256 both want 256 bits.
pub const SECRET_LEN: usize = 32;

/// First byte of every sealed value, so the format can change without guessing.
const SEALED_FORMAT_V1: u8 = 1;

/// Bytes of a sealed value that are not ciphertext: format byte, nonce, GCM tag.
const SEALED_OVERHEAD: usize = 1 + aead::NONCE_LEN + AES_256_GCM_TAG_LEN;
const AES_256_GCM_TAG_LEN: usize = 16;

/// HKDF salt of every derivation in the store. Public and fixed: it separates this store's keys
/// from anything else that might ever be derived from the same master key.
const HKDF_SALT: &[u8] = b"mxnode metadata store v1";
/// HKDF info of the key that wraps data-key secrets in the keystore (derived from the master key).
const INFO_WRAP: &[u8] = b"keystore wrapping key";
/// HKDF info of a data key's value-encryption key (derived from the data-key secret).
const INFO_VALUES: &[u8] = b"value encryption key";
/// HKDF info of a data key's blind-index key (derived from the data-key secret).
const INFO_INDEX: &[u8] = b"recipient blind index key";

/// Bytes of a blind-index entry for one address (HMAC-SHA256 output).
pub const BLIND_LEN: usize = 32;

/// Derives the key that wraps every data-key secret in the keystore. The master key itself is
/// never used directly, so it could later also key other things without key reuse.
pub fn wrapping_key(master_key: &[u8; SECRET_LEN]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(master_key);
    let okm = prk
        .expand(&[INFO_WRAP], &aead::AES_256_GCM)
        .expect("HKDF-SHA256 can always expand to 32 bytes");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// The keys derived from one random data-key secret: one per record hour, one per audit day,
/// and the standing key of API keys and settings. Destroying the secret (removing it from the
/// keystore) makes every value sealed with it, and every blind-index entry made with it,
/// meaningless: that is crypto-shredding.
pub struct DataKey {
    /// AES-256-GCM key of the values.
    values: LessSafeKey,
    /// HMAC-SHA256 key of the recipient blind index. Per bucket, so the same address gives
    /// unrelated index entries in different hours, and an entry outlives its bucket's key only
    /// as random-looking bytes nobody can test a guessed address against.
    index: hmac::Key,
}

impl DataKey {
    pub fn from_secret(secret: &[u8; SECRET_LEN]) -> DataKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
        let values = prk
            .expand(&[INFO_VALUES], &aead::AES_256_GCM)
            .expect("HKDF-SHA256 can always expand to 32 bytes");
        let index = prk
            .expand(&[INFO_INDEX], hmac::HMAC_SHA256)
            .expect("HKDF-SHA256 can always expand to 32 bytes");
        DataKey {
            values: LessSafeKey::new(UnboundKey::from(values)),
            index: hmac::Key::from(index),
        }
    }

    /// Encrypts `plaintext` bound to `aad` (the value's column family and key).
    pub fn seal(&self, rng: &SystemRandom, aad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
        seal(&self.values, rng, aad, plaintext)
    }

    /// Decrypts a value sealed with this key and the same `aad`; `None` if anything differs.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open(&self.values, aad, sealed)
    }

    /// The blind-index entry of an address: HMAC-SHA256 of its lower-cased form, so lookups
    /// are case-insensitive and the address itself never reaches a RocksDB key.
    pub fn blind(&self, address: &str) -> [u8; BLIND_LEN] {
        let tag = hmac::sign(&self.index, address.to_lowercase().as_bytes());
        let mut out = [0u8; BLIND_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Seals with a fresh random 96-bit nonce: `format ‖ nonce ‖ ciphertext ‖ tag`. `None` only if
/// the system RNG fails, which the caller reports as an engine error.
pub fn seal(
    key: &LessSafeKey,
    rng: &SystemRandom,
    aad: &[u8],
    plaintext: &[u8],
) -> Option<Vec<u8>> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    rng.fill(&mut nonce).ok()?;
    let mut in_out = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut in_out,
    )
    .ok()?;
    let mut sealed = Vec::with_capacity(SEALED_OVERHEAD + plaintext.len());
    sealed.push(SEALED_FORMAT_V1);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&in_out);
    Some(sealed)
}

/// Opens what [`seal`] made with the same key and `aad`; `None` for a wrong key, a different
/// `aad` (a value moved to another key), a tampered or truncated value, or an unknown format.
pub fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < SEALED_OVERHEAD || sealed[0] != SEALED_FORMAT_V1 {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + aead::NONCE_LEN]).ok()?;
    let mut in_out = sealed[1 + aead::NONCE_LEN..].to_vec();
    let plaintext_len = key
        .open_in_place(nonce, Aad::from(aad), &mut in_out)
        .ok()?
        .len();
    in_out.truncate(plaintext_len);
    Some(in_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_key(byte: u8) -> DataKey {
        DataKey::from_secret(&[byte; SECRET_LEN])
    }

    #[test]
    fn sealed_value_opens_only_with_its_key_and_its_aad() {
        let rng = SystemRandom::new();
        let key = data_key(1);
        let sealed = key.seal(&rng, b"records\0k1", b"hello").expect("rng works");
        assert_eq!(
            key.open(b"records\0k1", &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            key.open(b"records\0k2", &sealed),
            None,
            "moved to another key"
        );
        assert_eq!(
            data_key(2).open(b"records\0k1", &sealed),
            None,
            "another bucket's key"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(key.open(b"records\0k1", &tampered), None, "tampered");
        assert_eq!(key.open(b"records\0k1", &sealed[..10]), None, "truncated");
        assert_eq!(key.open(b"records\0k1", &[]), None, "empty");
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let rng = SystemRandom::new();
        let key = data_key(1);
        let a = key.seal(&rng, b"x", b"same").expect("rng works");
        let b = key.seal(&rng, b"x", b"same").expect("rng works");
        assert_ne!(a, b, "a random nonce per value");
    }

    #[test]
    fn blind_index_is_case_insensitive_and_per_key() {
        let key = data_key(1);
        assert_eq!(key.blind("Bob@Example.TEST"), key.blind("bob@example.test"));
        assert_ne!(
            key.blind("bob@example.test"),
            key.blind("alice@example.test")
        );
        assert_ne!(
            key.blind("bob@example.test"),
            data_key(2).blind("bob@example.test")
        );
    }
}
