//! At-rest encryption of webhook secrets (`WEBHOOK_SECRET_KEY`).
//!
//! # What is stored
//!
//! With one or more keys in [`WebhookConfig::secret_keys`](crate::WebhookConfig),
//! a webhook's signing secret is stored as
//!
//! ```text
//! enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! sealed with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under
//! the first key, with a fresh random 192-bit nonce for every write and the
//! webhook's id as associated data (a sealed secret copied onto another
//! webhook's row does not open). The key id is 8 hex digits derived from the
//! key by HMAC-SHA256 — it names the key without revealing it.
//!
//! Without keys, secrets are stored as registered (plaintext), as before.
//! Rows written before encryption was turned on (plaintext) keep working:
//! they are read as they are and sealed on the next write of the webhook,
//! and [`Webhooks::new`](crate::Webhooks::new) seals them all at start-up.
//! A registered secret may not itself start with `enc:`, so the two forms
//! cannot be confused.
//!
//! # Keys
//!
//! A key is 32 random bytes, given as base64:
//!
//! ```sh
//! openssl rand -base64 32
//! # or
//! head -c32 /dev/urandom | base64
//! ```
//!
//! `WEBHOOK_SECRET_KEY` takes a comma-separated list
//! ([`SecretKey::parse_list`]): the **first key encrypts, every key
//! decrypts**.
//!
//! # Rotation
//!
//! 1. Generate a new key `NEW`; keep the current one `OLD`.
//! 2. Set `WEBHOOK_SECRET_KEY=NEW,OLD` and restart. At start-up every secret
//!    not sealed under `NEW` (sealed under `OLD`, or plaintext) is re-sealed
//!    under `NEW` (a compare-and-set per row, safe with other instances
//!    running).
//! 3. Set `WEBHOOK_SECRET_KEY=NEW` and restart. `OLD` can be destroyed.
//!
//! With several instances on one PostgreSQL database, first roll out
//! `OLD,NEW` everywhere (`NEW` decrypts but does not encrypt yet), then
//! `NEW,OLD`, then `NEW`: no instance ever meets a secret it cannot open.
//!
//! # Failures
//!
//! A secret sealed under a key that is not configured, a wrong key, or a
//! damaged value is [`WebhookError::SecretUndecryptable`] naming the
//! webhook and the key id, never the secret: at start-up (loading the
//! subscriber index fails, so the host does not start) or on use.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::Payload;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

use crate::error::{Result, WebhookError};

/// The prefix of a sealed secret (format version 1).
pub const SEALED_PREFIX: &str = "enc:v1:";
/// The prefix registered secrets may not start with.
pub const RESERVED_PREFIX: &str = "enc:";

const NONCE_LEN: usize = 24;
const AAD_CONTEXT: &[u8] = b"matric-events webhook secret v1 ";

/// A 32-byte key for sealing webhook secrets. `Debug` shows only its id.
#[derive(Clone)]
pub struct SecretKey {
    key: [u8; 32],
    id: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        // Constant-time: keys are secret material.
        let mut diff = 0u8;
        for (a, b) in self.key.iter().zip(other.key.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let id = match <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&key) {
            Ok(mut m) => {
                m.update(b"matric-events webhook secret key id");
                hex::encode(&m.finalize().into_bytes()[..4])
            }
            // HMAC takes keys of any length.
            Err(_) => String::from("00000000"),
        };
        SecretKey { key, id }
    }

    /// A key from standard base64 of exactly 32 bytes (surrounding
    /// whitespace ignored), e.g. the output of `openssl rand -base64 32`.
    /// The error never contains the input.
    pub fn from_base64(encoded: &str) -> Result<Self> {
        let bytes = B64
            .decode(encoded.trim())
            .map_err(|e| WebhookError::InvalidSecretKey {
                reason: "not valid base64".to_owned(),
                source: Some(e),
            })?;
        let key: [u8; 32] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| WebhookError::InvalidSecretKey {
                    reason: format!("decodes to {} bytes, expected 32", bytes.len()),
                    source: None,
                })?;
        Ok(SecretKey::from_bytes(key))
    }

    /// Parses `WEBHOOK_SECRET_KEY`: comma-separated base64 keys, the first
    /// one encrypting, all decrypting. An empty or blank value is no key
    /// (secrets stored as registered). A malformed entry is an error naming
    /// its position.
    pub fn parse_list(list: &str) -> Result<Vec<Self>> {
        if list.trim().is_empty() {
            return Ok(Vec::new());
        }
        list.split(',')
            .enumerate()
            .map(|(i, entry)| {
                SecretKey::from_base64(entry).map_err(|e| match e {
                    WebhookError::InvalidSecretKey { reason, source } => {
                        WebhookError::InvalidSecretKey {
                            reason: format!("key #{} of the list: {reason}", i + 1),
                            source,
                        }
                    }
                    other => other,
                })
            })
            .collect()
    }

    /// The key's id: 8 hex digits derived from the key (safe to log and
    /// stored in every value it seals).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals and opens stored secrets with the configured keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretCipher {
    keys: Vec<SecretKey>,
}

fn undecryptable(webhook_id: Uuid, reason: String) -> WebhookError {
    WebhookError::SecretUndecryptable {
        webhook_id,
        reason,
        source: None,
    }
}

fn aad(webhook_id: Uuid) -> Vec<u8> {
    let mut aad = AAD_CONTEXT.to_vec();
    aad.extend_from_slice(webhook_id.as_bytes());
    aad
}

impl SecretCipher {
    /// A cipher with `keys` (the first encrypts; none: plaintext).
    pub fn new(keys: Vec<SecretKey>) -> Self {
        SecretCipher { keys }
    }

    /// Whether secrets are sealed on write.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The stored form of `secret` for webhook `webhook_id`: sealed under
    /// the first key, or `secret` itself without keys.
    pub fn seal(&self, webhook_id: Uuid, secret: &str) -> Result<String> {
        let Some(key) = self.keys.first() else {
            return Ok(secret.to_owned());
        };
        let cipher = XChaCha20Poly1305::new(&Key::from(key.key));
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = aad(webhook_id);
        let sealed = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|e| WebhookError::SecretUndecryptable {
                webhook_id,
                reason: "encryption failed".to_owned(),
                source: Some(e),
            })?;
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}:{}", key.id, B64.encode(blob)))
    }

    /// The secret of a stored value: opened when sealed, as it is when
    /// plaintext (a row from before encryption was turned on).
    pub fn open(&self, webhook_id: Uuid, stored: &str) -> Result<String> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else {
            if stored.starts_with(RESERVED_PREFIX) {
                return Err(undecryptable(
                    webhook_id,
                    "stored in an unknown format (newer version?)".to_owned(),
                ));
            }
            return Ok(stored.to_owned());
        };
        let (key_id, b64) = rest
            .split_once(':')
            .ok_or_else(|| undecryptable(webhook_id, "malformed sealed value".to_owned()))?;
        let blob = B64
            .decode(b64)
            .map_err(|_| undecryptable(webhook_id, "malformed sealed value".to_owned()))?;
        if blob.len() < NONCE_LEN {
            return Err(undecryptable(
                webhook_id,
                "malformed sealed value".to_owned(),
            ));
        }
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| undecryptable(webhook_id, "malformed sealed value".to_owned()))?;
        let candidates: Vec<&SecretKey> = self.keys.iter().filter(|k| k.id == key_id).collect();
        if candidates.is_empty() {
            let configured: Vec<&str> = self.keys.iter().map(SecretKey::id).collect();
            return Err(undecryptable(
                webhook_id,
                if configured.is_empty() {
                    format!("sealed under key {key_id}, but no WEBHOOK_SECRET_KEY is configured")
                } else {
                    format!(
                        "sealed under key {key_id}, which is not among the configured \
                         WEBHOOK_SECRET_KEY keys ({})",
                        configured.join(", ")
                    )
                },
            ));
        }
        let aad = aad(webhook_id);
        let mut last = None;
        for key in candidates {
            let cipher = XChaCha20Poly1305::new(&Key::from(key.key));
            match cipher.decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            ) {
                Ok(plain) => {
                    return String::from_utf8(plain).map_err(|_| {
                        undecryptable(webhook_id, "opened to invalid UTF-8".to_owned())
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(WebhookError::SecretUndecryptable {
            webhook_id,
            reason: format!(
                "authentication failed under key {key_id} (wrong key, or the row was altered)"
            ),
            source: last,
        })
    }

    /// Whether a stored value should be re-sealed: plaintext while keys are
    /// configured, or sealed under a key other than the first.
    pub fn needs_reseal(&self, stored: &str) -> bool {
        let Some(primary) = self.keys.first() else {
            return false;
        };
        match stored.strip_prefix(SEALED_PREFIX) {
            Some(rest) => rest.split_once(':').map(|(id, _)| id) != Some(primary.id()),
            None => !stored.starts_with(RESERVED_PREFIX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    fn key(b64: &str) -> SecretKey {
        SecretKey::from_base64(b64).unwrap()
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        let k = key(K1);
        assert_eq!(k.id().len(), 8);
        assert_ne!(k.id(), key(K2).id());
        assert_eq!(key(&format!(" {K1}\n")), k);
        for bad in ["", "not base64!", "c2hvcnQ=", &format!("{K1}AAAA")] {
            let e = SecretKey::from_base64(bad).unwrap_err();
            assert!(matches!(e, WebhookError::InvalidSecretKey { .. }), "{e}");
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad), "{e}");
            }
        }
        assert!(format!("{k:?}").contains(k.id()));
        assert!(!format!("{k:?}").contains("key:"));
        let list = SecretKey::parse_list(&format!("{K2}, {K1}")).unwrap();
        assert_eq!(list, vec![key(K2), key(K1)]);
        assert!(SecretKey::parse_list("  ").unwrap().is_empty());
        let e = SecretKey::parse_list(&format!("{K1},oops")).unwrap_err();
        assert!(e.to_string().contains("#2"), "{e}");
    }

    #[test]
    fn seal_open_round_trip_with_fresh_nonces_and_bound_to_the_webhook() {
        let c = SecretCipher::new(vec![key(K1)]);
        let id = Uuid::now_v7();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let a = c.seal(id, secret).unwrap();
        let b = c.seal(id, secret).unwrap();
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(a.starts_with(&format!("enc:v1:{}:", key(K1).id())), "{a}");
        assert!(!a.contains(secret) && !a.contains("MfKQ9r8"));
        assert_eq!(c.open(id, &a).unwrap(), secret);
        // Another webhook's row: does not open.
        let e = c.open(Uuid::now_v7(), &a).unwrap_err().to_string();
        assert!(e.contains("authentication failed"), "{e}");
        // Tampered: does not open.
        let mut t = a.clone().into_bytes();
        let last = t.len() - 3;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        assert!(c.open(id, &String::from_utf8(t).unwrap()).is_err());
        // Plaintext legacy rows read as they are.
        assert_eq!(c.open(id, secret).unwrap(), secret);
        // No keys: plaintext in, plaintext out; a sealed row is a clear error.
        let none = SecretCipher::default();
        assert_eq!(none.seal(id, secret).unwrap(), secret);
        let e = none.open(id, &a).unwrap_err().to_string();
        assert!(e.contains("no WEBHOOK_SECRET_KEY"), "{e}");
        assert!(e.contains(&id.to_string()) && !e.contains(secret), "{e}");
        for broken in [
            "enc:v1:",
            "enc:v1:abcd",
            "enc:v1:abcd:!!",
            "enc:v1:abcd:AAAA",
            "enc:v9:x",
        ] {
            assert!(c.open(id, broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn rotation_first_key_seals_every_key_opens() {
        let id = Uuid::now_v7();
        let old = SecretCipher::new(vec![key(K1)]);
        let sealed_old = old.seal(id, "s3cret-s3cret-s3cret").unwrap();
        let rotating = SecretCipher::new(vec![key(K2), key(K1)]);
        assert_eq!(
            rotating.open(id, &sealed_old).unwrap(),
            "s3cret-s3cret-s3cret"
        );
        assert!(rotating.needs_reseal(&sealed_old));
        assert!(rotating.needs_reseal("plaintext-secret"));
        let sealed_new = rotating.seal(id, "s3cret-s3cret-s3cret").unwrap();
        assert!(!rotating.needs_reseal(&sealed_new));
        let new_only = SecretCipher::new(vec![key(K2)]);
        assert_eq!(
            new_only.open(id, &sealed_new).unwrap(),
            "s3cret-s3cret-s3cret"
        );
        let e = new_only.open(id, &sealed_old).unwrap_err().to_string();
        assert!(e.contains(key(K1).id()) && e.contains(key(K2).id()), "{e}");
        assert!(!SecretCipher::default().needs_reseal("plaintext"));
    }
}
