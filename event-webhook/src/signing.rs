//! Request signing and the receiver-side [`verify`] helper.
//!
//! # Two schemes, one secret
//!
//! Every delivery carries two signatures over the same body:
//!
//! * `X-Matric-Signature: sha256=<hex>` (header name configurable): lowercase
//!   hex HMAC-SHA256 of the raw body. **Key: the secret string's UTF-8 bytes
//!   exactly as registered**, `whsec_` prefix included — what the upstream
//!   server and GitHub-style receivers do.
//! * Standard Webhooks: `webhook-id` (the event id, constant across
//!   retries), `webhook-timestamp` (unix seconds of this attempt) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
//!   **Key: the base64-decoded part after `whsec_`**, as the Standard
//!   Webhooks libraries expect. A secret that is not `whsec_<base64>` is used
//!   as raw bytes.
//!
//! [`verify`] checks either scheme (Standard Webhooks when its headers are
//! present), requires `webhook-timestamp` within five minutes of now, and
//! compares in constant time.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::error::{Result, WebhookError};

type HmacSha256 = Hmac<Sha256>;

/// The default timestamp tolerance of [`verify`].
pub const TOLERANCE: Duration = Duration::from_secs(300);

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // Unreachable (HMAC takes any key length); an empty key keeps this
    // total without a panic path.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// The Standard Webhooks key of a secret: the decoded base64 after
/// `whsec_`, else the secret's bytes.
pub fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| B64.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `sha256=<hex>`: the `X-Matric-Signature` value for `body`.
pub fn matric_signature(secret: &str, body: &[u8]) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// `v1,<base64>`: the `webhook-signature` value.
pub fn standard_signature(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(&standard_key(secret));
    m.update(msg_id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("v1,{}", B64.encode(m.finalize().into_bytes()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn invalid(reason: &str) -> WebhookError {
    WebhookError::Unauthorized(format!("webhook signature: {reason}"))
}

/// Verifies a received delivery with the default header name and a
/// five-minute tolerance. See [`verify_with`].
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_with(secret, headers, body, "X-Matric-Signature", TOLERANCE, now)
}

/// Verifies a received delivery: the Standard Webhooks signature when
/// `webhook-signature` is present, else the HMAC header `signature_header`;
/// either way `webhook-timestamp` must be within `tolerance` of `now` (unix
/// seconds). Comparisons are constant-time. The error is
/// [`WebhookError::Unauthorized`] with the reason.
pub fn verify_with(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    signature_header: &str,
    tolerance: Duration,
    now: i64,
) -> Result<()> {
    let ts = header(headers, "webhook-timestamp").ok_or_else(|| invalid("missing timestamp"))?;
    let ts: i64 = ts.trim().parse().map_err(|_| invalid("bad timestamp"))?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(invalid("timestamp outside the tolerance"));
    }
    if let Some(sigs) = header(headers, "webhook-signature") {
        let id = header(headers, "webhook-id").ok_or_else(|| invalid("missing webhook-id"))?;
        let key = standard_key(secret);
        for sig in sigs.split_whitespace() {
            let Some(b64) = sig.strip_prefix("v1,") else {
                continue;
            };
            let Ok(expected) = B64.decode(b64) else {
                continue;
            };
            let mut m = mac(&key);
            m.update(id.as_bytes());
            m.update(b".");
            m.update(ts.to_string().as_bytes());
            m.update(b".");
            m.update(body);
            if m.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        return Err(invalid("no matching v1 signature"));
    }
    let value = header(headers, signature_header).ok_or_else(|| invalid("missing signature"))?;
    let hex_sig = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| invalid("expected sha256=<hex>"))?;
    let expected = hex::decode(hex_sig).map_err(|_| invalid("bad hex"))?;
    let mut m = mac(secret.as_bytes());
    m.update(body);
    m.verify_slice(&expected)
        .map_err(|_| invalid("signature mismatch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-computed vector: HMAC-SHA256(key="key",
    // "The quick brown fox jumps over the lazy dog") — the RFC 4231-style
    // example published on Wikipedia's HMAC page.
    #[test]
    fn matric_signature_known_vector() {
        assert_eq!(
            matric_signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn standard_key_decodes_whsec() {
        assert_eq!(standard_key("whsec_a2V5"), b"key");
        assert_eq!(standard_key("plain-secret"), b"plain-secret");
        // Not base64 after the prefix: raw bytes.
        assert_eq!(standard_key("whsec_!!"), b"whsec_!!");
    }

    fn signed(secret: &str, ts: i64, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert(
            "webhook-signature",
            standard_signature(secret, "msg_1", ts, body)
                .parse()
                .unwrap(),
        );
        h.insert(
            "X-Matric-Signature",
            matric_signature(secret, body).parse().unwrap(),
        );
        h
    }

    #[test]
    fn verify_accepts_both_schemes_and_rejects_tampering() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"a":1}"#;
        let now = 1_770_000_000;
        let h = signed(secret, now, body);
        verify_with(secret, &h, body, "X-Matric-Signature", TOLERANCE, now).unwrap();
        assert!(verify_with(secret, &h, b"{}", "X-Matric-Signature", TOLERANCE, now).is_err());
        assert!(
            verify_with(
                "whsec_b3RoZXI=",
                &h,
                body,
                "X-Matric-Signature",
                TOLERANCE,
                now
            )
            .is_err()
        );
        // Only the HMAC header.
        let mut m = h.clone();
        m.remove("webhook-signature");
        verify_with(secret, &m, body, "X-Matric-Signature", TOLERANCE, now).unwrap();
        assert!(verify_with(secret, &m, b"x", "X-Matric-Signature", TOLERANCE, now).is_err());
        // Stale or future timestamps.
        assert!(verify_with(secret, &h, body, "X-Matric-Signature", TOLERANCE, now + 301).is_err());
        assert!(verify_with(secret, &h, body, "X-Matric-Signature", TOLERANCE, now - 301).is_err());
        verify_with(secret, &h, body, "X-Matric-Signature", TOLERANCE, now + 299).unwrap();
        // Several signatures, one valid (key rotation).
        let mut r = h.clone();
        let good = h
            .get("webhook-signature")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        r.insert(
            "webhook-signature",
            format!("v1,AAAA {good}").parse().unwrap(),
        );
        verify_with(secret, &r, body, "X-Matric-Signature", TOLERANCE, now).unwrap();
    }
}
