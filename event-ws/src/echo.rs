//! An echo server on the endpoint's own WebSocket implementation, for
//! protocol conformance suites (the Autobahn|Testsuite, through
//! `cargo xtask conformance`; see `examples/autobahn-echo.rs`).

use std::sync::Arc;

use event_core::{AllowAnonymous, ConnectionRegistry, EventBus};

use crate::{WsConfig, WsEndpoint};

/// A router serving `GET <config.path>` with exactly the machinery of
/// [`WsEndpoint::router`] — the same upgrade handshake, framing, connection
/// state machine, limits and close handshake — except that the connection
/// sends no initial `QueueStatus` and sends every text and binary message
/// back to the client unchanged instead of reading it as a protocol
/// request. Anonymous; it is connected to no event bus.
///
/// Its replies count against the outbox budget like any reply, so to echo
/// messages of up to `max_message_bytes`, `config.outbox.max_bytes` must be
/// larger than that.
///
/// Not meant for production: a conformance suite needs a server that
/// answers with what it received, and this one shows how the endpoint's
/// framing behaves.
pub fn echo_router(config: WsConfig) -> axum::Router {
    let endpoint = WsEndpoint::new(
        EventBus::default(),
        ConnectionRegistry::new(),
        Arc::new(AllowAnonymous),
        config,
    )
    .into_echo();
    endpoint.router()
}
