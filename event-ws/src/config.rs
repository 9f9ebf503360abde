//! Endpoint settings and the close codes the server uses.

use std::num::NonZeroU32;
use std::time::Duration;

use event_core::OutboxLimits;

/// The WebSocket close codes this endpoint sends (docs/protocol.md §2).
///
/// The server never closes with `1000`: HotM clients do not reconnect after a
/// normal closure, so every server-initiated close uses a code that makes them
/// come back.
pub mod close_code {
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket framing (an unmasked frame, reserved
    /// bits — RSV1 included, unless permessage-deflate was negotiated and
    /// it starts a data message —, an unknown opcode, a misplaced
    /// continuation, a close code a client may not send).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The client sent a text message (or close reason) that is not UTF-8,
    /// or a compressed message that is not valid DEFLATE data.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The connection was removed by policy: an operator kick, or a
    /// `subscribe`/`unsubscribe` over the limits (more than 64 names, or a
    /// name over 128 bytes).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// The client sent a frame or message larger than the configured limit,
    /// or a compressed message that inflates beyond it.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Something went wrong on the server.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server has no room for another connection. This endpoint refuses
    /// extra connections with `503` before the upgrade instead, so it does
    /// not send this code; it is listed for clients and other servers of the
    /// protocol.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The client stopped answering heartbeats (no pong, no frame) for the
    /// idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The client did not read: a write made no progress for the write
    /// timeout, its replies overflowed their budget, or (with
    /// [`WsConfig::close_on_overflow`](crate::WsConfig::close_on_overflow)) its outgoing budget overflowed. Also
    /// sent when the endpoint itself missed events.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The named consumer the connection read was taken over by a newer
    /// connection under its name, or deleted.
    pub const CONSUMER_CLOSED: u16 = 4009;
}

/// The path the router serves.
pub const DEFAULT_PATH: &str = "/api/v1/ws";

/// Settings of a [`WsEndpoint`](crate::WsEndpoint). `Default` gives the
/// protocol's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// The route path (`/api/v1/ws`).
    pub path: String,
    /// Allowed `Origin` values (exact, case-insensitive, e.g.
    /// `https://app.example.com`). Empty allows every origin, and so does an
    /// entry `*` (the meaning it has for CORS, so one `ALLOWED_ORIGINS`
    /// serves both). Requests without an `Origin` header (non-browser
    /// clients) are always allowed, since the check exists to stop other web
    /// pages from using a browser's credentials.
    pub allowed_origins: Vec<String>,
    /// How often the server sends a WebSocket ping (30 s).
    pub ping_interval: Duration,
    /// How long a client may stay silent (no pong, no frame) before it is
    /// closed with [`close_code::IDLE_TIMEOUT`] (90 s).
    pub idle_timeout: Duration,
    /// The largest frame or message a client may send; larger ones close the
    /// connection with [`close_code::MESSAGE_TOO_BIG`] (64 KiB). A
    /// compressed message is held to it twice: as it arrives, and once
    /// inflated.
    pub max_message_bytes: usize,
    /// Each connection's outgoing budget (1,024 messages or 1 MiB). When
    /// events come faster than the client reads, its outbox coalesces
    /// beyond it ([`event_core::OverflowPolicy::Coalesce`]): the client
    /// gets `{"type":"events.lagged","dropped_count":N}` and then the latest
    /// `JobProgress` per job, `QueueStatus` and job ends, kept within a
    /// second budget of the same size; it is not closed for it (unless
    /// [`close_on_overflow`](Self::close_on_overflow)). Replies to the
    /// client's requests have a budget of `max_bytes` of their own beside
    /// the events being written; a client that makes the server owe it
    /// more is closed with [`close_code::SLOW_CONSUMER`].
    pub outbox: OutboxLimits,
    /// Close a connection whose outbox overflows with
    /// [`close_code::SLOW_CONSUMER`] at once, as before coalescing existed,
    /// instead of coalescing (off). Under saturation, when the machine is
    /// the bottleneck and every client looks slow, this disconnects every
    /// client.
    pub close_on_overflow: bool,
    /// How long a write to a client may make no progress (the socket takes
    /// no byte) before the client counts as a slow consumer and is closed
    /// with [`close_code::SLOW_CONSUMER`] (30 s). A client that reads, however
    /// slowly, is not closed by it.
    pub write_timeout: Duration,
    /// Most simultaneous connections; beyond it the upgrade is refused with
    /// `503` (10,000).
    pub max_connections: usize,
    /// How long a close handshake may take before the socket is dropped
    /// (5 s). Bounds how long graceful shutdown waits for a client.
    pub close_timeout: Duration,
    /// How long to wait for the host's queue snapshot before falling back to
    /// the last published `QueueStatus` (800 ms; `refresh` must be answered
    /// within 1 s).
    pub snapshot_timeout: Duration,
    /// The rate limit of a connection whose client names none, in events
    /// per second (`None`: unlimited; the host's `STREAM_MAX_RATE`). A
    /// client changes its own with `subscribe`'s `max_rate` (`0` lifts
    /// it). Over the rate, `JobProgress` per job and `QueueStatus` are
    /// coalesced to the latest and the rest is counted in
    /// `{"type":"events.lagged","dropped_count":N}`; the connection is
    /// never closed for it ([`event_core::pace`]).
    pub max_rate: Option<NonZeroU32>,
    /// Whether permessage-deflate (RFC 7692) is accepted from clients that
    /// offer it, as browsers do (on; the host's `WS_COMPRESSION`). The
    /// server always answers with `server_no_context_takeover` and
    /// `client_no_context_takeover`, so every message is compressed on its
    /// own and an event's compressed frame is shared by every connection.
    pub compression: bool,
    /// The smallest data message sent compressed, in payload bytes (256;
    /// `WS_COMPRESS_MIN_BYTES`); smaller ones go plain. `0` compresses
    /// every message that shrinks.
    pub compress_min_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: DEFAULT_PATH.to_owned(),
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_message_bytes: 64 * 1024,
            outbox: OutboxLimits::default(),
            close_on_overflow: false,
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            close_timeout: Duration::from_secs(5),
            snapshot_timeout: Duration::from_millis(800),
            max_rate: None,
            compression: true,
            compress_min_bytes: 256,
        }
    }
}

impl WsConfig {
    /// Whether every `Origin` may connect: the allow-list is empty or has a
    /// `*` entry.
    pub fn allows_any_origin(&self) -> bool {
        self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|a| a.trim() == "*")
    }

    /// Whether a request with this `Origin` header value may connect.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allows_any_origin() => true,
            Some(o) => {
                let o = o.trim().trim_end_matches('/');
                self.allowed_origins
                    .iter()
                    .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(o))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_allow_list() {
        let open = WsConfig::default();
        assert!(open.origin_allowed(Some("https://evil.example")));
        let cfg = WsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..WsConfig::default()
        };
        assert!(cfg.origin_allowed(None));
        assert!(cfg.origin_allowed(Some("https://APP.example/")));
        assert!(!cfg.origin_allowed(Some("https://evil.example")));
        assert!(!cfg.origin_allowed(Some("https://app.example.evil")));
        assert!(!cfg.allows_any_origin());
        for any in [vec!["*"], vec!["https://app.example", "*"], vec![" * "]] {
            let cfg = WsConfig {
                allowed_origins: any.iter().map(|a| a.to_string()).collect(),
                ..WsConfig::default()
            };
            assert!(cfg.allows_any_origin(), "{any:?}");
            assert!(cfg.origin_allowed(Some("https://evil.example")), "{any:?}");
        }
        // Only a whole entry `*` is a wildcard.
        let pattern = WsConfig {
            allowed_origins: vec!["https://*.example".into()],
            ..WsConfig::default()
        };
        assert!(!pattern.origin_allowed(Some("https://app.example")));
    }
}
