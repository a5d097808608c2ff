//! Random identifiers made from caller-supplied random bytes (the shell draws them from
//! Postgres' strong random source): API keys, batch ids, webhook ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "dt_";
/// How many leading characters of a key are stored in clear, to find and show it.
pub const STORED_PREFIX_LEN: usize = 12;

/// A new API key: `dt_` + 43 URL-safe characters from 32 random bytes.
pub fn api_key(random: &[u8; 32]) -> String {
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(random))
}

/// SHA-256 of the key's UTF-8 bytes: the only form of the secret that is stored.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The non-secret prefix kept to find and display a key; `None` if it cannot be a key.
pub fn key_prefix(key: &str) -> Option<&str> {
    if key.starts_with(KEY_PREFIX) && key.len() > STORED_PREFIX_LEN && key.is_ascii() {
        Some(&key[..STORED_PREFIX_LEN])
    } else {
        None
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The bytes of a version-4 UUID made from `random`.
pub fn uuid_v4_bytes(random: &[u8; 16]) -> [u8; 16] {
    let mut b = *random;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// A version-4 UUID in canonical text form.
pub fn uuid_v4(random: &[u8; 16]) -> String {
    let b = uuid_v4_bytes(random);
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let k = api_key(&[7u8; 32]);
        assert!(k.starts_with("dt_"));
        assert_eq!(k.len(), 3 + 43);
        assert!(k[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(key_prefix(&k), Some(&k[..12]));
        assert_eq!(key_prefix("nope"), None);
        assert_eq!(key_prefix("dt_short"), None);
    }

    #[test]
    fn key_hash_is_sha256() {
        assert_eq!(
            hex(&key_hash("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn uuid_v4_sets_version_and_variant() {
        let u = uuid_v4(&[0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4(&[0; 16]), "00000000-0000-4000-8000-000000000000");
    }
}
