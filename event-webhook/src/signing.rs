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
//! [`verify`] (receiver side) requires the Standard Webhooks signature with
//! `webhook-timestamp` within five minutes of now, and compares in constant
//! time. The body-only HMAC is never enough on its own: it covers no
//! timestamp, so a captured delivery would verify forever. Receivers that
//! can only check it call
//! [`verify_body_hmac_without_replay_protection`], whose name says what it
//! lacks.

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

/// Verifies a received delivery against the Standard Webhooks signature
/// with a five-minute tolerance around the local clock. See
/// [`verify_with`].
pub fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_with(
        secret,
        headers,
        body,
        DEFAULT_SIGNATURE_HEADER,
        TOLERANCE,
        now,
    )
}

/// The default name of the body-only HMAC header.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Matric-Signature";

/// Verifies a received delivery.
///
/// **Required:** the Standard Webhooks headers `webhook-id`,
/// `webhook-timestamp` and `webhook-signature`, with `webhook-timestamp`
/// within `tolerance` of `now` (unix seconds, either direction) and a `v1`
/// signature over `"{id}.{timestamp}.{body}"` that matches. Because the
/// timestamp is signed, a captured delivery cannot be replayed once the
/// tolerance has passed (receivers should also drop `webhook-id`s they have
/// already processed, which covers replays inside the window).
///
/// The body-only HMAC header (`signature_header`, `X-Matric-Signature` by
/// default) is **never sufficient**: it covers neither the id nor the
/// timestamp, so it cannot tell a replay from a fresh delivery. When the
/// delivery carries it, it must match too (a mismatch is refused); when it is
/// absent, nothing is missing. For a body-only check see
/// [`verify_body_hmac_without_replay_protection`].
///
/// Comparisons are constant-time. The error is
/// [`WebhookError::Unauthorized`] with the reason (never the secret or a
/// signature).
pub fn verify_with(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    signature_header: &str,
    tolerance: Duration,
    now: i64,
) -> Result<()> {
    let id = header(headers, "webhook-id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| invalid("missing webhook-id"))?;
    let ts =
        header(headers, "webhook-timestamp").ok_or_else(|| invalid("missing webhook-timestamp"))?;
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| invalid("bad webhook-timestamp"))?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(invalid("webhook-timestamp outside the tolerance"));
    }
    let sigs =
        header(headers, "webhook-signature").ok_or_else(|| invalid("missing webhook-signature"))?;
    let key = standard_key(secret);
    let mut matched = false;
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
            matched = true;
            break;
        }
    }
    if !matched {
        return Err(invalid("no matching v1 signature"));
    }
    if !signature_header.is_empty() && headers.contains_key(signature_header) {
        verify_body_hmac_without_replay_protection(secret, headers, body, signature_header)?;
    }
    Ok(())
}

/// Checks only the body-only HMAC header `signature_header`
/// (`sha256=<hex HMAC-SHA256(secret, body)>`, what GitHub-style receivers
/// check), in constant time.
///
/// # No replay protection
///
/// This HMAC covers the body alone: no id, no timestamp. Anyone who has seen
/// one delivery (a proxy log, a leaked request capture) can send it again,
/// with any fresh `webhook-timestamp`, at any time, and it verifies forever.
/// Use [`verify`] / [`verify_with`] unless the sender cannot produce the
/// Standard Webhooks headers, and then deduplicate on the event id in the
/// body at the very least.
pub fn verify_body_hmac_without_replay_protection(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    signature_header: &str,
) -> Result<()> {
    let value = header(headers, signature_header).ok_or_else(|| invalid("missing signature"))?;
    let hex_sig = value
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| invalid("expected sha256=<hex>"))?;
    let expected = hex::decode(hex_sig).map_err(|_| invalid("bad hex"))?;
    let mut m = mac(secret.as_bytes());
    m.update(body);
    m.verify_slice(&expected)
        .map_err(|_| invalid("body HMAC mismatch"))
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

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const H: &str = DEFAULT_SIGNATURE_HEADER;

    fn check(h: &HeaderMap, body: &[u8], now: i64) -> Result<()> {
        verify_with(SECRET, h, body, H, TOLERANCE, now)
    }

    #[test]
    fn verify_requires_the_standard_signature_and_rejects_tampering() {
        let body = br#"{"a":1}"#;
        let now = 1_770_000_000;
        let h = signed(SECRET, now, body);
        check(&h, body, now).unwrap();
        assert!(check(&h, b"{}", now).is_err());
        assert!(verify_with("whsec_b3RoZXI=", &h, body, H, TOLERANCE, now).is_err());
        // Without the HMAC header: the Standard signature alone suffices.
        let mut s = h.clone();
        s.remove(H);
        check(&s, body, now).unwrap();
        // A wrong HMAC header next to a valid Standard signature: refused.
        let mut w = h.clone();
        w.insert(H, matric_signature(SECRET, b"other").parse().unwrap());
        assert!(check(&w, body, now).is_err());
        // Each Standard header is required.
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let mut m = h.clone();
            m.remove(name);
            let e = check(&m, body, now).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        // Several signatures, one valid (key rotation).
        let mut r = h.clone();
        let good = h["webhook-signature"].to_str().unwrap().to_owned();
        r.insert(
            "webhook-signature",
            format!("v1,AAAA {good}").parse().unwrap(),
        );
        check(&r, body, now).unwrap();
        // Other versions are not v1.
        let mut v = h.clone();
        v.insert(
            "webhook-signature",
            good.replacen("v1,", "v2,", 1).parse().unwrap(),
        );
        assert!(check(&v, body, now).is_err());
    }

    #[test]
    fn a_signature_outside_the_tolerance_fails() {
        let body = br#"{"a":1}"#;
        let t = 1_770_000_000;
        let h = signed(SECRET, t, body);
        for now in [t - 300, t - 1, t + 1, t + 299, t + 300] {
            check(&h, body, now).unwrap();
        }
        for now in [t + 301, t - 301, t + 86_400, 0] {
            let e = check(&h, body, now).unwrap_err().to_string();
            assert!(e.contains("tolerance"), "{e}");
        }
        let short = Duration::from_secs(10);
        assert!(verify_with(SECRET, &h, body, H, short, t + 11).is_err());
        verify_with(SECRET, &h, body, H, short, t + 10).unwrap();
    }

    #[test]
    fn a_captured_delivery_replayed_later_fails() {
        let body = br#"{"id":"e1","event":"JobQueued"}"#;
        let captured_at = 1_770_000_000;
        let captured = signed(SECRET, captured_at, body);
        let later = captured_at + 3600;
        // The attacker sends the captured body and legacy header with a
        // fresh timestamp and no Standard signature: refused.
        let mut legacy_only = HeaderMap::new();
        legacy_only.insert("webhook-id", "msg_1".parse().unwrap());
        legacy_only.insert("webhook-timestamp", later.to_string().parse().unwrap());
        legacy_only.insert(H, captured[H].clone());
        let e = check(&legacy_only, body, later).unwrap_err().to_string();
        assert!(e.contains("webhook-signature"), "{e}");
        // …nor with the captured Standard signature and a fresh timestamp
        // (the timestamp is signed)…
        let mut fresh_ts = captured.clone();
        fresh_ts.insert("webhook-timestamp", later.to_string().parse().unwrap());
        assert!(check(&fresh_ts, body, later).is_err());
        // …nor as captured (stale).
        assert!(check(&captured, body, later).is_err());
        // The body-only check, which says it has no replay protection,
        // does accept it: that is why it is not what `verify` does.
        verify_body_hmac_without_replay_protection(SECRET, &legacy_only, body, H).unwrap();
        assert!(verify_body_hmac_without_replay_protection(SECRET, &legacy_only, b"x", H).is_err());
    }

    #[test]
    fn interoperates_with_the_reference_standardwebhooks_crate() {
        let reference = standardwebhooks::Webhook::new(SECRET).unwrap();
        let body = br#"{"id":"e1","event":"JobQueued","data":{}}"#;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // The reference verifies what we sign…
        let ours = signed(SECRET, now, body);
        reference.verify(body, &ours).unwrap();
        assert!(reference.verify(b"{}", &ours).is_err());
        // …and we verify what it signs.
        let mut theirs = HeaderMap::new();
        theirs.insert("webhook-id", "msg_2".parse().unwrap());
        theirs.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let sig = reference.sign("msg_2", now, body).unwrap();
        assert_eq!(sig, standard_signature(SECRET, "msg_2", now, body));
        theirs.insert("webhook-signature", sig.parse().unwrap());
        verify(SECRET, &theirs, body).unwrap();
        assert!(verify(SECRET, &theirs, b"{}").is_err());
        // Outside the tolerance neither accepts it.
        let old = now - 301;
        let stale = signed(SECRET, old, body);
        assert!(reference.verify(body, &stale).is_err());
        assert!(verify(SECRET, &stale, body).is_err());
    }
}
