//! The opening handshake (RFC 6455 §4.2): checking the client's upgrade
//! request and answering `101 Switching Protocols`.
//!
//! The connection itself is taken over from hyper once the 101 has gone
//! out (`hyper::upgrade::OnUpgrade`), as the raw byte stream the
//! connection's own framing runs on.

use axum::response::Response;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use hyper::upgrade::OnUpgrade;

use crate::error::WsError;

/// A request that is a valid WebSocket upgrade.
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Whether `name`'s comma-separated values include `token`
/// (case-insensitive).
fn has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl Upgrade {
    /// Checks that `parts` is a WebSocket upgrade this server can accept
    /// and takes the connection's upgrade handle out of it.
    pub(crate) fn from_request(parts: &mut Parts) -> Result<Upgrade, WsError> {
        let bad = |why: &str| Err(WsError::BadUpgrade(why.to_owned()));
        if parts.method != Method::GET {
            return bad("the method must be GET");
        }
        if !has_token(&parts.headers, CONNECTION, "upgrade") {
            return bad("the Connection header must include `upgrade`");
        }
        if !has_token(&parts.headers, UPGRADE, "websocket") {
            return bad("the Upgrade header must be `websocket`");
        }
        if parts
            .headers
            .get(SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return bad("Sec-WebSocket-Version must be 13");
        }
        let Some(key) = parts.headers.get(SEC_WEBSOCKET_KEY) else {
            return bad("the Sec-WebSocket-Key header is missing");
        };
        let accept = accept_key(key.as_bytes());
        let Ok(accept) = HeaderValue::from_str(&accept) else {
            return bad("the Sec-WebSocket-Key header is not usable");
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return bad("this connection cannot be upgraded (HTTP/1.1 is required)");
        };
        Ok(Upgrade { accept, on_upgrade })
    }

    /// The `101` answer, with `protocol` as the chosen subprotocol and
    /// `extensions` as the accepted extensions; and the handle that
    /// resolves to the connection once the answer is sent.
    pub(crate) fn accept(
        self,
        protocol: Option<HeaderValue>,
        extensions: Option<HeaderValue>,
    ) -> (Response, OnUpgrade) {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some(protocol) = protocol {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        if let Some(extensions) = extensions {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, extensions);
        }
        (response, self.on_upgrade)
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455
/// §4.2.2): base64 of the SHA-1 of the key followed by the protocol's GUID.
fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::get("/api/v1/ws");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        // Stands in for the handle hyper puts in a request on an HTTP/1.1
        // connection (this one never resolves to a connection).
        parts
            .extensions
            .insert(hyper::upgrade::on(http::Request::new(())));
        parts
    }

    const VALID: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_upgrade_is_answered_with_the_rfc_accept_key() {
        let upgrade = Upgrade::from_request(&mut parts(&VALID)).unwrap();
        let (response, _) = upgrade.accept(Some(HeaderValue::from_static("bearer.x")), None);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let h = response.headers();
        // The example of RFC 6455 §1.3.
        assert_eq!(h[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "bearer.x");
        assert!(h.get(SEC_WEBSOCKET_EXTENSIONS).is_none());
        let upgrade = Upgrade::from_request(&mut parts(&VALID)).unwrap();
        let deflate = HeaderValue::from_static("permessage-deflate; server_no_context_takeover");
        let (response, _) = upgrade.accept(None, Some(deflate.clone()));
        assert_eq!(response.headers()[SEC_WEBSOCKET_EXTENSIONS], deflate);
        assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn each_missing_piece_is_named() {
        for (drop, why) in [
            ("connection", "Connection"),
            ("upgrade", "Upgrade"),
            ("sec-websocket-version", "Version"),
            ("sec-websocket-key", "Key"),
        ] {
            let headers: Vec<_> = VALID.into_iter().filter(|(n, _)| *n != drop).collect();
            match Upgrade::from_request(&mut parts(&headers)) {
                Err(WsError::BadUpgrade(message)) => assert!(message.contains(why), "{message}"),
                _ => panic!("accepted without {drop}"),
            }
        }
        let mut old = parts(&VALID);
        old.headers
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(Upgrade::from_request(&mut old).is_err());
        let mut post = parts(&VALID);
        post.method = Method::POST;
        assert!(Upgrade::from_request(&mut post).is_err());
        let mut no_upgrade = parts(&VALID);
        no_upgrade.extensions.clear();
        assert!(Upgrade::from_request(&mut no_upgrade).is_err());
    }
}
