//! What the host checks before a route's handler runs.
//!
//! # The model
//!
//! A request meets the guards in this order, each deciding from the request
//! head alone, so nothing of a body is read for a request that is refused:
//!
//! 1. [`check_site`] (whole router): in anonymous local mode a request must
//!    name a loopback `Host` (or one of `PUBLIC_HOSTS`) — a DNS-rebinding page
//!    cannot reach the server under its own name — and a browser `Origin`
//!    must be loopback, the server's own host, or one of `ALLOWED_ORIGINS`, so
//!    a web page the operator visits cannot drive the API. With tokens, the
//!    `Host` check applies when `PUBLIC_HOSTS` is set; the tokens do the rest.
//! 2. [`require_json`] (whole router): `POST`, `PUT` and `PATCH` need
//!    `Content-Type: application/json` (`415` otherwise; a request with no
//!    body and no `Content-Type` at all passes), in every mode: a
//!    browser sends a cross-origin JSON request only after a CORS preflight,
//!    so a form or `text/plain` post from another site never gets through.
//! 3. [`authorize`] (per route, through [`RouteGuard`]): the principal is
//!    decided from the head (`401` without valid credentials, `403` with a
//!    client token on an admin route) before any body byte is read.
//! 4. [`read_body`] (per route, through [`BodyLimits`]): the whole body must
//!    fit the route's limit (`413`, decided from `Content-Length` when it is
//!    sent) and arrive within `HTTP_BODY_TIMEOUT_SECS` (`408`, connection
//!    closed).
//!
//! Every refusal is the JSON error body of [`ServerError`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use event_core::{Authenticator, Credentials};
use http::{HeaderMap, Method, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ServerError;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any authenticated principal (a client token).
    Client,
    /// The admin token.
    Admin,
    /// Reads (`GET`, `HEAD`) need a client token, everything else the admin
    /// token.
    AdminToWrite,
}

/// The state of [`authorize`]: the host's authenticator and what the routes
/// behind it need.
#[derive(Clone)]
pub struct RouteGuard {
    auth: Arc<dyn Authenticator>,
    need: Need,
}

impl RouteGuard {
    /// A guard asking `auth` for a principal that meets `need`.
    pub fn new(auth: Arc<dyn Authenticator>, need: Need) -> RouteGuard {
        RouteGuard { auth, need }
    }
}

/// The `token` query parameter, if any (the same alternative to the bearer
/// header the transports accept).
pub(crate) fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "token")
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes and `+` of a query value (tokens are usually plain
/// ASCII; a malformed escape is kept as it is).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Middleware: decides the principal from the request head and refuses the
/// request (`401`/`403`) before its body is read. The principal is left in
/// the request's extensions for the handler.
pub async fn authorize(
    State(guard): State<RouteGuard>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = query_token(request.uri().query());
    let credentials = Credentials::from_headers(request.headers(), token.as_deref());
    let principal = match guard.auth.authenticate(&credentials).await {
        Ok(p) => p,
        Err(e) => return ServerError::from(e).into_response(),
    };
    let admin_needed = match guard.need {
        Need::Client => false,
        Need::Admin => true,
        Need::AdminToWrite => !matches!(*request.method(), Method::GET | Method::HEAD),
    };
    if admin_needed && !principal.is_admin() {
        return ServerError::Forbidden("this route needs the admin token".to_owned())
            .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The state of [`read_body`]: a route's body limit and the time the whole
/// body may take.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Time from the handler's turn to the body's last byte.
    pub timeout: Duration,
}

/// Middleware: reads the whole body within [`BodyLimits`] before the handler
/// runs, answering `413` (over the limit; from `Content-Length` alone when it
/// is sent) or `408` (too slow; the connection is closed).
pub async fn read_body(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let too_large = || {
        ServerError::TooLarge(format!(
            "the request body is over this route's limit of {} bytes",
            limits.max_bytes
        ))
        .into_response()
    };
    let (parts, body) = request.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large();
    }
    let read = tokio::time::timeout(
        limits.timeout,
        Limited::new(body, limits.max_bytes).collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return ServerError::bad_request(
                "invalid_body",
                format!("the request body could not be read: {e}"),
            )
            .into_response();
        }
        Err(_) => {
            return ServerError::BodyTimeout(format!(
                "the request body did not arrive within {} s (HTTP_BODY_TIMEOUT_SECS)",
                limits.timeout.as_secs()
            ))
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Middleware: `POST`, `PUT` and `PATCH` must say
/// `Content-Type: application/json` (parameters such as `charset` allowed);
/// only a request with no body and no `Content-Type` at all (an action such
/// as `POST /api/v1/webhooks/{id}/test`) may leave it out.
pub async fn require_json(request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if mutating && !is_json(request.headers()) && !bodiless_without_type(request.headers()) {
        return ServerError::UnsupportedMediaType(
            "this request needs `Content-Type: application/json`".to_owned(),
        )
        .into_response();
    }
    next.run(request).await
}

/// A request with neither a body nor a `Content-Type` (`curl -X POST` of an
/// action such as a test delivery): nothing to mistake for JSON.
fn bodiless_without_type(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_TYPE)
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && content_length(headers).is_none_or(|n| n == 0)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Which origins a browser request may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `ALLOWED_ORIGINS=*`.
    Any,
    /// These exact origins (lowercase `scheme://host[:port]`).
    List(Vec<String>),
}

impl Origins {
    /// The configured list (already checked by [`check_origins`]).
    pub fn from_config(origins: &[String]) -> Origins {
        if origins.iter().any(|o| o.trim() == "*") {
            Origins::Any
        } else {
            Origins::List(
                origins
                    .iter()
                    .map(|o| o.trim().to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )
        }
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// The state of [`check_site`].
#[derive(Debug, Clone)]
pub struct SiteGuard {
    /// Whether the `Host` header is checked.
    pub check_host: bool,
    /// Whether a browser `Origin` is checked (anonymous mode).
    pub check_origin: bool,
    /// `PUBLIC_HOSTS`, lowercase, without port.
    pub public_hosts: Vec<String>,
    /// `ALLOWED_ORIGINS`.
    pub origins: Origins,
}

impl SiteGuard {
    /// The guard the configuration asks for.
    pub fn from_config(config: &crate::config::Config) -> SiteGuard {
        let anonymous = !config.auth_enabled();
        SiteGuard {
            check_host: anonymous || !config.public_hosts.is_empty(),
            check_origin: anonymous,
            public_hosts: config
                .public_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            origins: Origins::from_config(&config.allowed_origins),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        is_loopback_name(&name) || self.public_hosts.contains(&name)
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.origins.allows(origin) {
            return true;
        }
        let Some((_, authority)) = origin.split_once("://") else {
            // `null` (sandboxed frames, files) and anything malformed.
            return false;
        };
        is_loopback_name(&host_name(authority))
            || host.is_some_and(|h| h.eq_ignore_ascii_case(authority))
    }
}

/// Middleware: refuses requests for a `Host` this server does not answer to
/// and, in anonymous mode, browser requests from foreign origins (`403`).
pub async fn check_site(
    State(guard): State<Arc<SiteGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if guard.check_host
        && let Some(host) = host
        && !guard.host_allowed(host)
    {
        return ServerError::Refused {
            code: "host_not_allowed",
            message: format!(
                "this server does not answer to host {:?}; add it to PUBLIC_HOSTS",
                host_name(host)
            ),
        }
        .into_response();
    }
    if guard.check_origin
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let allowed = origin.to_str().is_ok_and(|o| guard.origin_allowed(o, host));
        if !allowed {
            return ServerError::Refused {
                code: "origin_not_allowed",
                message: "in anonymous local mode only loopback and same-host browser origins \
                          (or ALLOWED_ORIGINS) may use this server"
                    .to_owned(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

/// The host name of a `Host` header or URL authority: lowercase, without
/// port, IPv6 literals keep their brackets.
fn host_name(authority: &str) -> String {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let name = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => authority,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `localhost`, `*.localhost`, `127.0.0.0/8` and `[::1]`.
fn is_loopback_name(name: &str) -> bool {
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Checks `ALLOWED_ORIGINS`: each entry `*` (alone) or `scheme://host[:port]`
/// with an `http`/`https` scheme and nothing after the authority.
pub fn check_origins(origins: &[String]) -> Result<(), String> {
    let entries: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if entries.contains(&"*") && entries.len() > 1 {
        return Err("ALLOWED_ORIGINS: `*` (any origin) cannot be combined with others".to_owned());
    }
    for origin in entries.iter().filter(|o| **o != "*") {
        let valid = origin.split_once("://").is_some_and(|(scheme, authority)| {
            matches!(scheme, "http" | "https")
                && !authority.is_empty()
                && !authority.contains(['/', '?', '#', ' '])
        });
        if !valid {
            return Err(format!(
                "ALLOWED_ORIGINS: {origin:?} is not an origin (expected `*` or scheme://host[:port], e.g. https://app.example.com)"
            ));
        }
    }
    Ok(())
}

/// Checks one `PUBLIC_HOSTS` entry: a host name or IP address, no port.
pub fn check_host_name(host: &str) -> Result<(), String> {
    let host = host.trim();
    let valid = !host.is_empty()
        && host.len() <= 253
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!("{host:?} is not a host name (no scheme, no port)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(host_name("LocalHost:3000"), "localhost");
        assert_eq!(host_name("[::1]:3000"), "[::1]");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("example.com."), "example.com");
        for loopback in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "[::1]",
        ] {
            assert!(is_loopback_name(loopback), "{loopback}");
        }
        for other in [
            "rebind.attacker.example",
            "10.0.0.1",
            "[::2]",
            "localhost.example",
        ] {
            assert!(!is_loopback_name(other), "{other}");
        }
    }

    #[test]
    fn origins_are_validated() {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(check_origins(&list(&["*"])).is_ok());
        assert!(check_origins(&list(&["https://a.example", "http://localhost:5173"])).is_ok());
        assert!(check_origins(&list(&["*", "https://a.example"])).is_err());
        assert!(check_origins(&list(&["a.example"])).is_err());
        assert!(check_origins(&list(&["https://a.example/path"])).is_err());
        assert!(check_origins(&list(&["ftp://a.example"])).is_err());
    }

    #[test]
    fn site_guard_in_anonymous_mode() {
        let guard = SiteGuard {
            check_host: true,
            check_origin: true,
            public_hosts: vec!["events.example".to_owned()],
            origins: Origins::List(vec!["https://ui.example".to_owned()]),
        };
        assert!(guard.host_allowed("127.0.0.1:3000"));
        assert!(guard.host_allowed("events.example:443"));
        assert!(!guard.host_allowed("rebind.attacker.example:3000"));
        assert!(guard.origin_allowed("http://localhost:5173", Some("127.0.0.1:3000")));
        assert!(guard.origin_allowed("http://events.example:3000", Some("events.example:3000")));
        assert!(guard.origin_allowed("https://ui.example", Some("127.0.0.1:3000")));
        assert!(!guard.origin_allowed("https://evil.example", Some("127.0.0.1:3000")));
        assert!(!guard.origin_allowed("null", Some("127.0.0.1:3000")));
    }

    #[test]
    fn query_tokens() {
        assert_eq!(
            query_token(Some("a=1&token=abc%2Bd")),
            Some("abc+d".to_owned())
        );
        assert_eq!(query_token(Some("tokenx=1")), None);
        assert_eq!(query_token(None), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().expect("header value"));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
