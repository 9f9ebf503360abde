//! Authentication hooks for transports.
//!
//! A transport extracts [`Credentials`] from the request (the bearer header
//! or `?token=`, [`Credentials::from_headers`]; a transport with a token
//! source of its own adds it, as the WebSocket does with its
//! `bearer.<token>` subprotocol) and asks the host's [`Authenticator`] for a
//! [`Principal`]. The principal decides which
//! scoped events the connection may see: unscoped events reach everyone,
//! events with a `memory` or `tenant_id` reach only principals allowed it.
//!
//! Two authenticators ship here: [`AllowAnonymous`] (local mode: everyone is
//! admitted and sees everything) and [`StaticTokens`] (an admin token and a
//! list of client tokens, compared in constant time). matric-api plugs its
//! OAuth validation in by implementing the trait.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::Error;
use crate::event::Event;

mod one_time;

pub use one_time::{ONE_TIME_PREFIX, OneTimeTokens, WithOneTimeTokens};

/// What a client presented. The token is never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The bearer token, if any.
    pub token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Credentials with a token.
    pub fn bearer(token: impl Into<String>) -> Self {
        Credentials {
            token: Some(token.into()),
        }
    }

    /// Extracts the token from a request: `Authorization: Bearer <t>` first,
    /// then the `token` query parameter (`query_token`). Other headers are
    /// not read: the WebSocket's `Sec-WebSocket-Protocol: bearer.<t>` is
    /// the WebSocket transport's own (`event_ws::credentials`), so no other
    /// transport accepts it.
    pub fn from_headers(headers: &HeaderMap, query_token: Option<&str>) -> Self {
        Credentials::first_of([Credentials::authorization_bearer(headers), query_token])
    }

    /// The token of the `Authorization: Bearer <t>` header, if there is
    /// one (trimmed; possibly empty).
    pub fn authorization_bearer(headers: &HeaderMap) -> Option<&str> {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }

    /// The token of the first source present, in the transport's order of
    /// precedence. A source present but empty (`Authorization: Bearer `)
    /// still decides: it means no token, and later sources are not
    /// consulted.
    pub fn first_of<'a>(sources: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let token = sources
            .into_iter()
            .flatten()
            .next()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Credentials { token }
    }
}

/// The role a principal plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// No credentials were presented.
    Anonymous,
    /// A client token (UI, agent).
    Client,
    /// The admin token: may manage webhooks, publish, kick connections.
    Admin,
}

/// A set of scope values a principal may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every value.
    All,
    /// Only these values (events without a value are still visible).
    Only(BTreeSet<String>),
}

impl Access {
    /// No scoped value at all.
    pub fn none() -> Access {
        Access::Only(BTreeSet::new())
    }

    /// Whether `value` is allowed.
    pub fn allows(&self, value: &str) -> bool {
        match self {
            Access::All => true,
            Access::Only(set) => set.contains(value),
        }
    }
}

/// An authenticated (or anonymous) client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A stable, non-secret identifier for logs and the connection list
    /// (never the token itself).
    pub id: String,
    /// The role.
    pub role: Role,
    /// The memories this principal may see.
    pub memories: Access,
    /// The tenants this principal may see.
    pub tenants: Access,
    /// The connection slot this client was admitted for, when a host's
    /// connection API (`POST /api/v1/connections`) opened the stream for
    /// it: the registry records it, so the slot's status follows the
    /// connection. `None` for every other client.
    pub slot: Option<String>,
}

impl Principal {
    /// An anonymous principal that sees everything (local mode).
    pub fn anonymous() -> Self {
        Principal {
            id: "anonymous".to_owned(),
            role: Role::Anonymous,
            memories: Access::All,
            tenants: Access::All,
            slot: None,
        }
    }

    /// An admin that sees everything.
    pub fn admin(id: impl Into<String>) -> Self {
        Principal {
            id: id.into(),
            role: Role::Admin,
            memories: Access::All,
            tenants: Access::All,
            slot: None,
        }
    }

    /// Whether this principal may manage the server (webhooks, publishing,
    /// connections).
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this principal may see the event (scope check only).
    pub fn can_see(&self, event: &Event) -> bool {
        event.memory().is_none_or(|m| self.memories.allows(m))
            && event.tenant_id().is_none_or(|t| self.tenants.allows(t))
    }
}

/// Turns credentials into a principal. Implemented by the host.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Admits or refuses a client. Refusal is [`Error::Unauthorized`].
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Error>;
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Error> {
        (**self).authenticate(credentials).await
    }
}

/// Local mode: everyone is admitted as an anonymous principal that sees
/// every event and may administer. Use only on a trusted network.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAnonymous;

#[async_trait]
impl Authenticator for AllowAnonymous {
    async fn authenticate(&self, _credentials: &Credentials) -> Result<Principal, Error> {
        Ok(Principal {
            role: Role::Admin,
            ..Principal::anonymous()
        })
    }
}

/// A fixed set of tokens. Tokens are stored as SHA-256 digests and compared
/// in constant time; principals are named by a keyed hash of the token
/// ([`principal_id`]), never by the token or a plain digest of it.
#[derive(Clone, Default)]
pub struct StaticTokens {
    admin: Option<Token>,
    clients: Vec<(Token, Access)>,
    allow_anonymous: bool,
}

/// A configured token: the digest it is compared by and the tag it is named by.
#[derive(Clone)]
struct Token {
    digest: [u8; 32],
    tag: [u8; 4],
}

impl Token {
    fn new(token: &str) -> Self {
        Token {
            digest: digest(token),
            tag: id_tag(token),
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The key principal ids are derived with: 32 random bytes drawn once per
/// process, never stored or logged.
fn id_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    })
}

/// The first 32 bits of HMAC-SHA256(process key, token).
fn id_tag(token: &str) -> [u8; 4] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail here; the
    // fallback only keeps this function free of a panic path.
    let mut mac = match HmacSha256::new_from_slice(id_key()) {
        Ok(mac) => mac,
        Err(_) => <HmacSha256 as KeyInit>::new(&Default::default()),
    };
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    [tag[0], tag[1], tag[2], tag[3]]
}

/// The principal id of a token as [`StaticTokens`] names it in logs and the
/// connection list: `<prefix>:<8 hex digits>`, the first 32 bits of
/// HMAC-SHA256 of the token under a key drawn at random once per process.
///
/// The same token has the same id for the life of the process (so log lines
/// and connections of one client can be correlated), a different id in every
/// other process, and the id cannot be checked against a guessed token
/// offline, as an unkeyed digest could.
pub fn principal_id(prefix: &str, token: &str) -> String {
    format_id(prefix, &id_tag(token))
}

fn format_id(prefix: &str, tag: &[u8; 4]) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(prefix.len() + 9);
    id.push_str(prefix);
    id.push(':');
    for b in tag {
        let _ = write!(id, "{b:02x}");
    }
    id
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("admin", &self.admin.is_some())
            .field("clients", &self.clients.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl StaticTokens {
    /// No tokens, anonymous clients refused.
    pub fn new() -> Self {
        StaticTokens::default()
    }

    /// Sets the admin token.
    pub fn admin(mut self, token: &str) -> Self {
        self.admin = Some(Token::new(token));
        self
    }

    /// Adds a client token that sees every memory and tenant.
    pub fn client(self, token: &str) -> Self {
        self.client_with_memories(token, Access::All)
    }

    /// Adds a client token limited to some memories.
    pub fn client_with_memories(mut self, token: &str, memories: Access) -> Self {
        self.clients.push((Token::new(token), memories));
        self
    }

    /// Admits clients without a token as anonymous principals that see only
    /// unscoped events.
    pub fn allow_anonymous(mut self, allow: bool) -> Self {
        self.allow_anonymous = allow;
        self
    }
}

#[async_trait]
impl Authenticator for StaticTokens {
    async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, Error> {
        let Some(token) = credentials.token.as_deref() else {
            if self.allow_anonymous {
                return Ok(Principal {
                    memories: Access::none(),
                    tenants: Access::none(),
                    ..Principal::anonymous()
                });
            }
            return Err(Error::Unauthorized("a bearer token is required".to_owned()));
        };
        let d = digest(token);
        // Check every entry so timing does not reveal which one matched.
        let admin = self.admin.as_ref().filter(|a| ct_eq(&a.digest, &d));
        let mut client = None;
        for (candidate, access) in &self.clients {
            if ct_eq(&candidate.digest, &d) && client.is_none() {
                client = Some((candidate, access.clone()));
            }
        }
        if let Some(admin) = admin {
            return Ok(Principal::admin(format_id("admin", &admin.tag)));
        }
        match client {
            Some((token, memories)) => Ok(Principal {
                id: format_id("client", &token.tag),
                role: Role::Client,
                memories,
                tenants: Access::All,
                slot: None,
            }),
            None => Err(Error::Unauthorized("invalid token".to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        let token = |h: &HeaderMap, q| Credentials::from_headers(h, q).token;
        assert_eq!(token(&h, Some("q")).as_deref(), Some("q"));
        assert_eq!(token(&h, None), None);
        // The WebSocket subprotocol is not a source here.
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("json, bearer.proto"),
        );
        assert_eq!(token(&h, Some("q")).as_deref(), Some("q"));
        assert_eq!(token(&h, None), None);
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hdr"),
        );
        assert_eq!(token(&h, Some("q")).as_deref(), Some("hdr"));
        // Another scheme is no bearer token.
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic abc"),
        );
        assert_eq!(token(&h, Some("q")).as_deref(), Some("q"));
    }

    #[test]
    fn debug_redacts_token() {
        let c = Credentials::bearer("s3cret-token");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn static_tokens() {
        let auth = StaticTokens::new().admin("adm-token").client("cli-token");
        let admin = auth
            .authenticate(&Credentials::bearer("adm-token"))
            .await
            .unwrap();
        assert!(admin.is_admin());
        assert!(!admin.id.contains("adm-token"));
        let client = auth
            .authenticate(&Credentials::bearer("cli-token"))
            .await
            .unwrap();
        assert_eq!(client.role, Role::Client);
        assert!(matches!(
            auth.authenticate(&Credentials::bearer("nope")).await,
            Err(Error::Unauthorized(_))
        ));
        assert!(auth.authenticate(&Credentials::default()).await.is_err());
        let open = auth.allow_anonymous(true);
        let anon = open.authenticate(&Credentials::default()).await.unwrap();
        assert_eq!(anon.role, Role::Anonymous);
        assert_eq!(anon.memories, Access::none());
    }
}
