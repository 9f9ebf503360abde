//! The WebSocket's own token source: the `bearer.<token>` subprotocol.
//!
//! Browsers cannot set headers on a WebSocket, so the handshake also takes
//! the token as a subprotocol (`Sec-WebSocket-Protocol: bearer.<token>`),
//! which the server echoes back to accept it. Only this transport reads it:
//! event-core's [`Credentials::from_headers`] (what SSE and the HTTP API
//! use) does not.

use event_core::Credentials;
use http::HeaderMap;

/// Finds a `bearer.<token>` entry in `Sec-WebSocket-Protocol`, returning the
/// whole protocol name (which the server must echo back to accept it) and
/// the token.
pub fn bearer_protocol(headers: &HeaderMap) -> Option<(&str, &str)> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("bearer.").map(|t| (p, t)))
}

/// The credentials of a WebSocket handshake: `Authorization: Bearer <t>`
/// first, then the `bearer.<t>` subprotocol, then the `token` query
/// parameter (`query_token`).
pub fn credentials(headers: &HeaderMap, query_token: Option<&str>) -> Credentials {
    Credentials::first_of([
        Credentials::authorization_bearer(headers),
        bearer_protocol(headers).map(|(_, token)| token),
        query_token,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        let token = |h: &HeaderMap| credentials(h, Some("q")).token;
        assert_eq!(token(&h).as_deref(), Some("q"));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("json, bearer.proto"),
        );
        assert_eq!(token(&h).as_deref(), Some("proto"));
        // The other transports' extraction does not see it.
        assert_eq!(
            Credentials::from_headers(&h, Some("q")).token.as_deref(),
            Some("q")
        );
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hdr"),
        );
        assert_eq!(token(&h).as_deref(), Some("hdr"));
        assert_eq!(bearer_protocol(&h), Some(("bearer.proto", "proto")));
    }

    #[test]
    fn the_protocol_is_found_in_any_header_line() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_protocol(&h), None);
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("json"),
        );
        h.append(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(" bearer.t2 , x"),
        );
        assert_eq!(bearer_protocol(&h), Some(("bearer.t2", "t2")));
        assert_eq!(credentials(&h, None).token.as_deref(), Some("t2"));
    }
}
