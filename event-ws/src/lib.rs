//! # event-ws
//!
//! The HotM WebSocket endpoint `GET /api/v1/ws` (docs/protocol.md §2): the channel the
//! original HotM UI uses for every real-time feature.
//!
//! ## Model
//!
//! ```text
//!  EventBus ─► SinkRunner ─► FanoutHub (the endpoint's sink)
//!                               │ filter + scope per connection, shared Arc<Event>
//!                               ▼
//!                  Outbox (bounded) ─► drain all, queue each event's shared frame,
//!                                      one vectored write
//!  client ◄─────────────────────────────────────────────────────────┘
//!  client ──► refresh / subscribe / unsubscribe / ping, pongs, heartbeat deadline
//! ```
//!
//! * The endpoint registers **one** sink on the bus, a [`FanoutHub`](event_core::FanoutHub).
//!   Each connection gets an outbox holding only the events it may see (the
//!   principal's scope) and asked for (`subscribe`). Events travel as shared
//!   `Arc<Event>`s whose flat §1 JSON is rendered once, whatever the number
//!   of clients.
//! * The WebSocket framing is this crate's own (RFC 6455):
//!   an event's text frame is rendered once, cached in the event, and the
//!   same bytes are written to every socket, so fan-out copies no payload
//!   per connection.
//! * The one extension is permessage-deflate (RFC 7692), accepted when the
//!   client offers it (browsers do) and [`WsConfig::compression`] is on.
//!   The server always agrees `server_no_context_takeover` and
//!   `client_no_context_takeover`: every message is compressed on its own,
//!   so an event's compressed frame is rendered once too and shared by
//!   every compressing connection, and no connection keeps a compressor or
//!   inflater between messages. Data messages of at least
//!   [`WsConfig::compress_min_bytes`] (256) go compressed, unless longer
//!   than the client's `server_max_window_bits` window; a client's
//!   compressed message is held to `max_message_bytes` inflated too. A connection wakes once per batch and writes every
//!   pending frame with one vectored write. A client that does not keep up fills its outbox
//!   (default 1,024 messages or 1 MiB), which then coalesces: the client
//!   gets `events.lagged` with the count it missed and the latest
//!   `JobProgress` per job, `QueueStatus` and job ends, and stays
//!   connected — under saturation every client looks slow, and none is
//!   dropped for it. A client whose socket takes no byte for
//!   [`WsConfig::write_timeout`] is closed with **4008**
//!   ([`WsConfig::close_on_overflow`] closes on overflow instead). The bus
//!   and the other clients never wait for it. Replies to the client's own
//!   requests (pongs, `subscribed`, queue statuses) have a byte budget of
//!   the outbox's size beside the events, and its messages are not read
//!   while 64 KiB wait to be written, so a client that sends without
//!   reading is held back by TCP.
//! * Right after the upgrade a client receives one `QueueStatus` (the host's
//!   [`QueueSnapshot`](event_core::QueueSnapshot) if configured, else the
//!   last published one). The text `refresh` asks for another, answered to
//!   that client only.
//! * `{"type":"subscribe","events":[…]}` narrows the stream (names in either
//!   scheme, or `types=`-style prefixes such as `job`), `unsubscribe` removes
//!   kinds; both are answered with `{"type":"subscribed","events":[…]}`.
//!   Either may carry at most 64 names of at most 128 bytes each; more
//!   closes the connection with 1008.
//!   `subscribe` may also carry `topics` and `filter` (the SSE `topics=` and
//!   `filter=`, same rules and limits; each replaces the previous one, ANDed
//!   with the kinds and the upgrade's filters) and `max_rate` (events per
//!   second, `0` lifts it; [`WsConfig::max_rate`] is the default): over the
//!   rate the connection coalesces and sends
//!   `{"type":"events.lagged","dropped_count":N}` ([`event_core::pace`]),
//!   never closes. A bad `topics`, `filter` or `max_rate` is answered with
//!   `{"type":"error","error":…,"message":…}` and nothing is applied.
//!   `{"type":"ping"}` is answered with `{"type":"pong"}`. Anything else is
//!   ignored.
//! * The server pings every 30 s and closes a client silent for 90 s
//!   ([`close_code::IDLE_TIMEOUT`]); a message over 64 KiB closes with 1009.
//! * Authentication goes through the host's
//!   [`Authenticator`](event_core::Authenticator) before the upgrade (`401`;
//!   token from `Authorization: Bearer`, `Sec-WebSocket-Protocol:
//!   bearer.<token>` — echoed back — or `?token=`); a disallowed `Origin` is
//!   `403`; beyond `max_connections` the upgrade is `503`.
//! * Every connection is in the [`ConnectionRegistry`](event_core::ConnectionRegistry)
//!   while it lives, however it ends. `registry.shutdown()` (or the
//!   token given to [`WsEndpoint::with_shutdown`]) closes every socket with
//!   **1001** within the close timeout. The server never closes with 1000.
//! * Metrics go through [`TransportMetrics`](event_core::TransportMetrics):
//!   the connection gauge, events sent per type, drops, close reasons and the
//!   publish-to-socket latency (one sample per write to the socket, for the
//!   oldest event in it). Each connection runs in a `ws_connection`
//!   tracing span with its id, peer address and principal id (never a token).
//!
//! ## Configuration and close codes
//!
//! [`WsConfig::default()`] is the protocol's defaults: path `/api/v1/ws`, ping
//! every 30 s, idle timeout 90 s, 64 KiB messages, outbox 1,024 messages or
//! 1 MiB, write stall 30 s, 10,000 connections, close handshake 5 s, queue
//! snapshot 800 ms, every `Origin` allowed, permessage-deflate on for
//! messages of 256 bytes or more.
//!
//! | code | when |
//! |---|---|
//! | 1001 | server shutdown (`registry.shutdown()`, the host's token, [`WsEndpoint::shutdown`]) |
//! | *echo* | the client closed: its code is echoed (never 1005, 1006 or 1015: those, and every code a client may not send, fail the connection with 1002) |
//! | 1002 | the client broke the framing (unmasked frame, reserved bits — RSV1 without permessage-deflate, or on a control frame or continuation —, unknown opcode, misplaced continuation, a close code it may not send) |
//! | 1007 | the client sent text (or a close reason) that is not UTF-8, or a compressed message that is not valid DEFLATE |
//! | 1008 | removed by an operator (`registry.disconnect(id)`), or a `subscribe`/`unsubscribe` over 64 names or with a name over 128 bytes |
//! | 1009 | the client sent more than `max_message_bytes`, or a compressed message inflating to more |
//! | 1011 | internal error |
//! | 4000 | no pong or frame from the client within `idle_timeout` |
//! | 4008 | slow consumer: a write made no progress for `write_timeout`, replies over their budget, outbox overflow with `close_on_overflow`, or the endpoint itself missed events |
//!
//! Refusals before the upgrade are HTTP errors with a JSON body
//! `{"error":"<code>","message":"…"}` ([`WsError`]): `400` not an upgrade,
//! `401` credentials, `403` origin or principal, `503` over capacity or
//! shutting down.
//!
//! ## Mounting it in a host
//!
//! The example serves with plain `axum::serve` and sets `TCP_NODELAY` by
//! hand; `event_http::serve` (crate `event-http`) does that, the connection
//! caps, the write-stall timeout and a shutdown that closes every WebSocket
//! with 1001 in one call (see `examples/src/bin/embed-axum.rs`).
//!
//! ```
//! use std::{net::SocketAddr, sync::Arc};
//! use event_core::{AllowAnonymous, ConnectionRegistry, EventBus, SinkRunner};
//! use event_ws::{WsConfig, WsEndpoint};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (bus, registry) = (EventBus::default(), ConnectionRegistry::new());
//! let ws = WsEndpoint::new(bus.clone(), registry.clone(), Arc::new(AllowAnonymous), WsConfig::default());
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(ws.sink());
//! let app: axum::Router = axum::Router::new().merge(ws.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! // Events are small writes: without TCP_NODELAY, Nagle's algorithm and
//! // the client's delayed ACK hold one back for up to ~40 ms.
//! use axum::serve::ListenerExt;
//! let listener = listener.tap_io(|tcp| {
//!     let _ = tcp.set_nodelay(true);
//! });
//! tokio::spawn(async move {
//!     axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! });
//!
//! // A client receives the queue status first.
//! use futures_util::StreamExt;
//! let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/ws")).await?;
//! let first = client.next().await.ok_or("closed")??;
//! assert_eq!(first.to_text()?, r#"{"type":"QueueStatus","total_jobs":0,"running":0,"pending":0}"#);
//!
//! registry.shutdown(); // every socket closes with 1001
//! # Ok(()) }
//! ```

mod auth;
mod config;
mod connection;
mod consumer;
mod deflate;
mod echo;
mod endpoint;
mod error;
mod extensions;
mod frame;
mod handshake;
mod protocol;
mod scratch;
mod socket;

pub use auth::{bearer_protocol, credentials};
pub use config::{DEFAULT_PATH, WsConfig, close_code};
pub use echo::echo_router;
pub use endpoint::WsEndpoint;
pub use error::WsError;
