//! Single-use tokens: credentials a host issues in-process for one
//! connection, such as the ticket of a connection slot's stream URL.
//!
//! A [`OneTimeTokens`] store remembers, for each token it issued, the
//! [`Principal`] the token admits and until when. [`WithOneTimeTokens`]
//! wraps the host's own [`Authenticator`]: a token with the
//! [`ONE_TIME_PREFIX`] is redeemed from the store — it admits its principal
//! once and is gone — and every other credential goes to the wrapped
//! authenticator unchanged. Tokens are kept as SHA-256 digests, never in
//! clear, and the store is bounded: issuing into a full store fails rather
//! than growing it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;

use super::{Authenticator, Credentials, Principal, ct_eq, digest};
use crate::Error;

/// How every one-time token starts, so it is told apart from the host's
/// own tokens without a lookup.
pub const ONE_TIME_PREFIX: &str = "ott_";

struct Issued {
    /// The digest again, compared in constant time after the map's lookup.
    digest: [u8; 32],
    principal: Principal,
    expires: Instant,
}

/// Issued single-use tokens. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct OneTimeTokens {
    issued: Arc<Mutex<HashMap<[u8; 32], Issued>>>,
    max: usize,
}

impl std::fmt::Debug for OneTimeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneTimeTokens")
            .field("issued", &self.lock().len())
            .field("max", &self.max)
            .finish()
    }
}

impl OneTimeTokens {
    /// A store holding at most `max` unredeemed, unexpired tokens.
    pub fn new(max: usize) -> Self {
        OneTimeTokens {
            issued: Arc::default(),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Issued>> {
        // Map operations cannot leave it inconsistent; ignore poisoning.
        self.issued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new token admitting `principal` once within `ttl`. Fails with
    /// [`Error::Full`] when `max` live tokens are outstanding.
    pub fn issue(&self, principal: Principal, ttl: Duration) -> Result<String, Error> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let mut token = String::with_capacity(ONE_TIME_PREFIX.len() + 64);
        token.push_str(ONE_TIME_PREFIX);
        for b in secret {
            let _ = write!(token, "{b:02x}");
        }
        let now = Instant::now();
        let mut issued = self.lock();
        if issued.len() >= self.max {
            issued.retain(|_, t| t.expires > now);
            if issued.len() >= self.max {
                return Err(Error::Full(format!(
                    "{} one-time tokens are outstanding, the most this server keeps",
                    self.max
                )));
            }
        }
        let d = digest(&token);
        issued.insert(
            d,
            Issued {
                digest: d,
                principal,
                expires: now + ttl,
            },
        );
        Ok(token)
    }

    /// The principal `token` would admit, without redeeming it.
    pub fn peek(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let issued = self.lock();
        issued
            .get(&d)
            .filter(|t| ct_eq(&t.digest, &d) && t.expires > Instant::now())
            .map(|t| t.principal.clone())
    }

    /// Redeems `token`: its principal, once; `None` when it is unknown,
    /// used or expired.
    pub fn redeem(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let t = self.lock().remove(&d)?;
        (ct_eq(&t.digest, &d) && t.expires > Instant::now()).then_some(t.principal)
    }

    /// Forgets `token` unredeemed (its slot was deleted).
    pub fn revoke(&self, token: &str) {
        self.lock().remove(&digest(token));
    }

    /// Forgets every unredeemed token whose principal `matches` (a deleted
    /// slot's ticket).
    pub fn revoke_where(&self, matches: impl Fn(&Principal) -> bool) {
        self.lock().retain(|_, t| !matches(&t.principal));
    }

    /// Tokens issued and neither redeemed, revoked nor expired.
    pub fn outstanding(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|t| t.expires > now).count()
    }
}

/// An [`Authenticator`] that redeems [`OneTimeTokens`] and passes every
/// other credential to `inner`.
#[derive(Debug, Clone)]
pub struct WithOneTimeTokens<A> {
    inner: A,
    tokens: OneTimeTokens,
}

impl<A> WithOneTimeTokens<A> {
    /// `inner`, also admitting the tokens of `tokens`.
    pub fn new(inner: A, tokens: OneTimeTokens) -> Self {
        WithOneTimeTokens { inner, tokens }
    }
}

#[async_trait]
impl<A: Authenticator> Authenticator for WithOneTimeTokens<A> {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Error> {
        match credentials.token.as_deref() {
            Some(token) if token.starts_with(ONE_TIME_PREFIX) => {
                self.tokens.redeem(token).ok_or_else(|| {
                    Error::Unauthorized("the one-time token is unknown, used or expired".to_owned())
                })
            }
            _ => self.inner.authenticate(credentials).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::StaticTokens;

    #[tokio::test]
    async fn a_token_admits_its_principal_once_and_others_reach_the_inner() {
        let tokens = OneTimeTokens::new(4);
        let auth = WithOneTimeTokens::new(StaticTokens::new().client("c1"), tokens.clone());
        let p = Principal {
            slot: Some("conn_x".to_owned()),
            ..Principal::anonymous()
        };
        let t = tokens.issue(p.clone(), Duration::from_secs(60)).unwrap();
        assert!(t.starts_with(ONE_TIME_PREFIX) && t.len() == ONE_TIME_PREFIX.len() + 64);
        assert_eq!(tokens.peek(&t), Some(p.clone()));
        assert_eq!(
            auth.authenticate(&Credentials::bearer(&t)).await.unwrap(),
            p
        );
        assert!(auth.authenticate(&Credentials::bearer(&t)).await.is_err());
        assert!(tokens.peek(&t).is_none());
        let client = auth.authenticate(&Credentials::bearer("c1")).await.unwrap();
        assert!(client.slot.is_none());
        assert!(
            auth.authenticate(&Credentials::bearer("ott_nope"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn expired_and_revoked_tokens_admit_nobody_and_the_store_is_bounded() {
        let tokens = OneTimeTokens::new(2);
        let gone = tokens
            .issue(Principal::anonymous(), Duration::ZERO)
            .unwrap();
        assert!(tokens.redeem(&gone).is_none());
        let a = tokens
            .issue(Principal::anonymous(), Duration::from_secs(60))
            .unwrap();
        let b = tokens
            .issue(Principal::anonymous(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(tokens.outstanding(), 2);
        assert!(matches!(
            tokens.issue(Principal::anonymous(), Duration::from_secs(60)),
            Err(Error::Full(_))
        ));
        tokens.revoke(&a);
        assert!(tokens.redeem(&a).is_none());
        assert!(tokens.redeem(&b).is_some());
        assert!(
            tokens
                .issue(Principal::anonymous(), Duration::from_secs(60))
                .is_ok()
        );
    }
}
