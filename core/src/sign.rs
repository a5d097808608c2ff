//! Webhook signatures.
//!
//! Two schemes are sent side by side (README, "Verifying signatures"):
//!
//! * `X-Dunetrace-Signature`: lowercase hex HMAC-SHA256 of the exact body bytes, keyed with the
//!   destination secret's UTF-8 bytes (the original's header, kept for existing receivers).
//! * Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//!   keyed with the base64-decoded rest of a `whsec_` secret, or the secret's UTF-8 bytes.
//!
//! The `verify_*` functions are for receivers and tests; they compare in constant time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a Standard Webhooks secret whose rest is the base64-encoded key.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Signature version tag of the Standard Webhooks `webhook-signature` header.
pub const STANDARD_WEBHOOKS_VERSION: &str = "v1";

/// How far a receiver should let `webhook-timestamp` stray from its clock, in seconds
/// (the Standard Webhooks recommendation of five minutes).
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = mac(key);
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// The `X-Dunetrace-Signature` value: lowercase hex HMAC-SHA256 of `body` with `key` (see
/// [`signing_key`]). No `sha256=` prefix.
pub fn dunetrace_signature(key: &[u8], body: &[u8]) -> String {
    crate::ids::hex(&hmac_sha256(key, &[body]))
}

/// Checks an `X-Dunetrace-Signature` value (hex, either case, surrounding whitespace ignored)
/// in constant time.
pub fn verify_dunetrace_signature(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(given) = decode_hex(signature.trim()) else {
        return false;
    };
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(&given).is_ok()
}

/// The HMAC key of both signatures (README, "Verifying signatures"): the base64 (standard alphabet) decoding of
/// what follows `whsec_` (the Standard Webhooks convention), or the secret's UTF-8 bytes when
/// there is no such prefix. A `whsec_` secret whose
/// rest is not valid base64, or decodes to nothing, is an error.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(rest) => {
            let key = STANDARD
                .decode(rest.trim())
                .map_err(|e| format!("webhook secret: invalid base64 after \"whsec_\": {e}"))?;
            if key.is_empty() {
                return Err("webhook secret: empty key after \"whsec_\"".into());
            }
            Ok(key)
        }
        None => Ok(secret.as_bytes().to_vec()),
    }
}

fn signed_content_mac(key: &[u8], webhook_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = mac(key);
    m.update(webhook_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `webhook-signature` value: `v1,` + padded standard base64 of
/// HMAC-SHA256(`key`, `"{webhook_id}.{timestamp}.{body}"`).
pub fn standard_webhooks_signature(
    key: &[u8],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let sig = signed_content_mac(key, webhook_id, timestamp, body)
        .finalize()
        .into_bytes();
    format!("{STANDARD_WEBHOOKS_VERSION},{}", STANDARD.encode(sig))
}

/// Checks a `webhook-signature` header: a space-separated list of `version,base64` entries, of
/// which at least one `v1` entry must match (in constant time). Entries of other versions are
/// ignored. Freshness of the timestamp is checked separately with [`timestamp_within`].
pub fn verify_standard_webhooks(
    key: &[u8],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
) -> bool {
    let expected = signed_content_mac(key, webhook_id, timestamp, body);
    signature_header.split_whitespace().any(|entry| {
        let Some((version, sig)) = entry.split_once(',') else {
            return false;
        };
        if version != STANDARD_WEBHOOKS_VERSION {
            return false;
        }
        match STANDARD.decode(sig) {
            Ok(given) => expected.clone().verify_slice(&given).is_ok(),
            Err(_) => false,
        }
    })
}

/// `true` when `timestamp` is within `tolerance_secs` of `now` (both epoch seconds), in either
/// direction: receivers reject older (replayed) and far-future messages.
pub fn timestamp_within(timestamp: i64, now: i64, tolerance_secs: i64) -> bool {
    now.abs_diff(timestamp) <= tolerance_secs.unsigned_abs()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with CPython's `hmac` and `base64` modules.

    #[test]
    fn dunetrace_signature_known_vector() {
        assert_eq!(
            dunetrace_signature(b"key", b"The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn dunetrace_signature_keys_with_utf8_bytes() {
        assert_eq!(
            dunetrace_signature("s3cr\u{e9}t".as_bytes(), br#"{"a":1}"#),
            "75d08454396431ededbe1fbcfa5c136d17589aaf82b9c4e897320d9054978cd0"
        );
    }

    #[test]
    fn verify_dunetrace_signature_accepts_and_rejects() {
        let body = b"The quick brown fox jumps over the lazy dog";
        let good = "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8";
        assert!(verify_dunetrace_signature(b"key", body, good));
        assert!(verify_dunetrace_signature(
            b"key",
            body,
            &good.to_ascii_uppercase()
        ));
        assert!(!verify_dunetrace_signature(b"key2", body, good));
        assert!(!verify_dunetrace_signature(b"key", b"other", good));
        assert!(!verify_dunetrace_signature(b"key", body, &good[..62]));
        assert!(!verify_dunetrace_signature(b"key", body, "zz"));
        assert!(!verify_dunetrace_signature(b"key", body, ""));
    }

    #[test]
    fn standard_webhooks_reference_example() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = standard_webhooks_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn standard_webhooks_plain_secret_uses_utf8_bytes() {
        let key = signing_key("plain-secret").unwrap();
        assert_eq!(key, b"plain-secret");
        assert_eq!(
            standard_webhooks_signature(&key, "wh_1", 1700000000, br#"{"x":1}"#),
            "v1,T/qB/4CVbjixjjDorZpn6GXg7Y8/GKWjHnkvCGqulqU="
        );
    }

    #[test]
    fn signing_key_rejects_bad_base64() {
        assert!(signing_key("whsec_not base64!").is_err());
        assert!(signing_key("whsec_").is_err());
        assert_eq!(signing_key("whsec_AAEC").unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn verify_standard_webhooks_accepts_any_matching_v1_entry() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(verify_standard_webhooks(&key, id, 1614265330, body, good));
        let several = format!("v1a,xyz v1,AAAA {good}");
        assert!(verify_standard_webhooks(
            &key, id, 1614265330, body, &several
        ));
        assert!(!verify_standard_webhooks(&key, id, 1614265331, body, good));
        assert!(!verify_standard_webhooks(
            &key, "msg_x", 1614265330, body, good
        ));
        assert!(!verify_standard_webhooks(&key, id, 1614265330, b"{}", good));
        assert!(!verify_standard_webhooks(
            &key,
            id,
            1614265330,
            body,
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        ));
        assert!(!verify_standard_webhooks(&key, id, 1614265330, body, ""));
        assert!(!verify_standard_webhooks(
            &key, id, 1614265330, body, "v1,%%%"
        ));
    }

    #[test]
    fn timestamp_tolerance() {
        assert!(timestamp_within(1000, 1300, DEFAULT_TOLERANCE_SECS));
        assert!(timestamp_within(1300, 1000, DEFAULT_TOLERANCE_SECS));
        assert!(!timestamp_within(1000, 1301, DEFAULT_TOLERANCE_SECS));
        assert!(!timestamp_within(
            i64::MIN,
            i64::MAX,
            DEFAULT_TOLERANCE_SECS
        ));
    }
}
