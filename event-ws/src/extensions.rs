//! Negotiating permessage-deflate (RFC 7692 §5, §7.1) from the client's
//! `Sec-WebSocket-Extensions` offers.
//!
//! # Model
//!
//! A client lists offers in order of preference, each an extension name
//! and parameters (`permessage-deflate; client_max_window_bits, …`), in
//! one or several header lines (RFC 6455 §9.1). The server accepts at
//! most one `permessage-deflate` offer: the first it can honour. An offer
//! it cannot use — an unknown or repeated parameter, a value where none
//! belongs, a window size outside 8–15, broken syntax — is declined on its
//! own: the next offer is considered and the handshake never fails over
//! extensions (§5.1). Offers of other extensions are ignored.
//!
//! The server always answers with
//!
//! * `server_no_context_takeover`: every message the server sends is
//!   compressed on its own, so one compressed frame of an event can be
//!   written to every connection, like the plain one ([`crate::deflate`]);
//! * `client_no_context_takeover` (RFC 7692 §7.1.1.2 lets a server add it
//!   to any offer): every client message is inflated on its own too, so a
//!   connection keeps no inflater — no 32 KiB window — between messages;
//! * `server_max_window_bits=N`, only when the offer named it (§7.1.2.1
//!   forbids it otherwise), with the offered `N`. The server honours it by
//!   sending compressed only messages of at most 2^N bytes: compressed
//!   alone, such a message cannot refer further back than its own length.
//!
//! `client_max_window_bits` needs nothing from the server: its inflater
//! reads windows up to 2^15, the most a client may use, so the response
//! leaves it out (the client then keeps what it offered, §7.1.2.2).

use http::{HeaderMap, HeaderValue};

/// The extension's name.
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What the server agreed with a client for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The client's `server_max_window_bits` (15 when it named none): the
    /// server sends compressed only messages of at most 2^N bytes.
    pub(crate) server_max_window_bits: u8,
    /// Whether the offer carried `server_max_window_bits`, which the
    /// response must then repeat (and otherwise must not carry).
    window_offered: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the `101` response.
    pub(crate) fn response(self) -> HeaderValue {
        let base = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        if self.window_offered {
            let value = format!(
                "{base}; server_max_window_bits={}",
                self.server_max_window_bits
            );
            HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static(base))
        } else {
            HeaderValue::from_static(base)
        }
    }
}

/// The first `permessage-deflate` offer of the request's
/// `Sec-WebSocket-Extensions` headers that the server can honour, if any.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<Agreed> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        // A line that is not visible ASCII offers nothing usable.
        .filter_map(|line| line.to_str().ok())
        .flat_map(split_outside_quotes::<b','>)
        .find_map(accept)
}

/// `Some` when `element` (one extension of the list) is a
/// `permessage-deflate` offer the server can honour.
fn accept(element: &str) -> Option<Agreed> {
    let mut parts = split_outside_quotes::<b';'>(element);
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
        return None;
    }
    // Which parameters were seen: each may appear once (RFC 7692 §7).
    let mut seen = [false; 4];
    let mut agreed = Agreed {
        server_max_window_bits: 15,
        window_offered: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(param_value(value.trim())?)),
            None => (param.trim(), None),
        };
        let index = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        match (index, value) {
            // The two no-context-takeover flags take no value.
            (0 | 1, None) => {}
            (2, Some(value)) => {
                agreed.server_max_window_bits = window_bits(&value)?;
                agreed.window_offered = true;
            }
            // The client's window: a hint the inflater needs none of, but
            // it must be well formed.
            (3, None) => {}
            (3, Some(value)) => {
                window_bits(&value)?;
            }
            _ => return None,
        }
    }
    Some(agreed)
}

/// A window size: `8` to `15`, decimal without leading zeros (RFC 7692
/// §7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    match value.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// A parameter's value: a token, or a quoted string whose content is a
/// token (RFC 7692 §7: the value must be a token either way).
fn param_value(raw: &str) -> Option<String> {
    let value = match raw.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
        None => raw.to_owned(),
    };
    is_token(&value).then_some(value)
}

/// Whether `s` is an HTTP token (RFC 7230 §3.2.6).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The pieces of `s` between `SEP`s that are not inside a quoted string.
fn split_outside_quotes<const SEP: u8>(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b if b == SEP && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(lines: &[&str]) -> Option<Agreed> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(line).unwrap(),
            );
        }
        negotiate(&headers)
    }

    fn response(lines: &[&str]) -> Option<String> {
        offer(lines).map(|a| a.response().to_str().unwrap().to_owned())
    }

    const PLAIN: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn what_browsers_offer_is_accepted_with_both_no_context_takeovers() {
        // Chromium and Firefox.
        assert_eq!(
            response(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PLAIN)
        );
        assert_eq!(response(&["permessage-deflate"]).as_deref(), Some(PLAIN));
        // Python websockets' default offer.
        assert_eq!(
            response(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(PLAIN)
        );
        // Names and parameters are case-insensitive; spaces are allowed
        // around `;` and `=`.
        assert_eq!(
            response(&[
                "PerMessage-Deflate ;Client_No_Context_Takeover ; client_max_window_bits = 10"
            ])
            .as_deref(),
            Some(PLAIN)
        );
    }

    #[test]
    fn no_offer_or_another_extension_is_no_compression() {
        assert_eq!(offer(&[]), None);
        assert_eq!(offer(&["x-webkit-deflate-frame"]), None);
        assert_eq!(offer(&["permessage-bzip2; level=9"]), None);
        assert_eq!(offer(&[""]), None);
        assert_eq!(offer(&[" , ,"]), None);
    }

    #[test]
    fn server_max_window_bits_is_honoured_and_repeated_only_when_offered() {
        for bits in 8..=15u8 {
            let line = format!("permessage-deflate; server_max_window_bits={bits}");
            let agreed = offer(&[&line]).unwrap();
            assert_eq!(agreed.server_max_window_bits, bits);
            assert_eq!(
                agreed.response(),
                format!("{PLAIN}; server_max_window_bits={bits}").as_str()
            );
        }
        // A quoted token is the same value.
        assert_eq!(
            offer(&[r#"permessage-deflate; server_max_window_bits="9""#])
                .unwrap()
                .server_max_window_bits,
            9
        );
        let agreed = offer(&["permessage-deflate"]).unwrap();
        assert_eq!(agreed.server_max_window_bits, 15);
        assert!(!agreed.response().to_str().unwrap().contains("window"));
    }

    #[test]
    fn an_invalid_offer_is_declined_and_the_next_one_considered() {
        let invalid = [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=9.0",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; server_no_context_takeover=1",
            r#"permessage-deflate; client_no_context_takeover="""#,
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; mystery",
            "permessage-deflate; ;",
            r#"permessage-deflate; server_max_window_bits="1 0""#,
        ];
        for bad in invalid {
            assert_eq!(offer(&[bad]), None, "{bad}");
            // Declined on its own: a valid offer after it, in the same
            // line or the next one, is accepted.
            let both = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            let agreed = offer(&[&both]).unwrap_or_else(|| panic!("{both}"));
            assert_eq!(agreed.server_max_window_bits, 12, "{both}");
            let agreed = offer(&[bad, "permessage-deflate; server_max_window_bits=11"])
                .unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(agreed.server_max_window_bits, 11, "{bad}");
        }
        // An unterminated quote runs to the end of its line, taking what
        // follows with it; the next line still counts.
        let open = r#"permessage-deflate; server_max_window_bits="10, permessage-deflate"#;
        assert_eq!(offer(&[open]), None);
        assert_eq!(
            offer(&[open, "permessage-deflate"]).map(|a| a.server_max_window_bits),
            Some(15)
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins() {
        let agreed = offer(&[
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=10, permessage-deflate",
        ])
        .unwrap();
        assert_eq!(agreed.server_max_window_bits, 10);
        let agreed = offer(&[
            "permessage-deflate",
            "permessage-deflate; server_max_window_bits=9",
        ])
        .unwrap();
        assert_eq!(agreed.server_max_window_bits, 15);
    }

    #[test]
    fn commas_and_semicolons_inside_quotes_do_not_split() {
        // A quoted value with a comma is not a token: that offer is
        // declined, and the split did not cut it into a valid one.
        assert_eq!(
            offer(&[r#"permessage-deflate; server_max_window_bits="9, permessage-deflate""#]),
            None
        );
        assert_eq!(
            offer(&[r#"foo; bar="a,b;c", permessage-deflate; server_max_window_bits=9"#])
                .unwrap()
                .server_max_window_bits,
            9
        );
        let pieces: Vec<&str> = split_outside_quotes::<b','>(r#"a="x,\"y,z", b"#).collect();
        assert_eq!(pieces, [r#"a="x,\"y,z""#, " b"]);
    }

    #[test]
    fn a_header_that_is_not_ascii_offers_nothing_but_does_not_hide_other_lines() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_bytes(b"permessage-deflate; \xff").unwrap(),
        );
        assert_eq!(negotiate(&headers), None);
        headers.append(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(negotiate(&headers).is_some());
    }
}
