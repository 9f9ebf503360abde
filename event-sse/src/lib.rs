//! # event-sse
//!
//! Server-Sent Events for matric's real-time events (docs/protocol.md §3):
//! `GET /api/v1/events` (alias `/api/v1/events/stream`) with replay,
//! filters and lag signalling, and `GET /api/v1/events/history`. The same
//! machinery serves any other event type through [`SseChannel`], so a
//! third-party axum service can stream its own enum.
//!
//! ## Model
//!
//! ```text
//!  EventBus ─► SinkRunner ─► FanoutHub (SseEndpoint::sink)
//!                               │ filter + scope per connection
//!                               ▼
//!                  Outbox (bounded, drop-and-count) ─► body stream ─► client
//!  replay ring ─► (Last-Event-ID) ──────────────────────┘
//! ```
//!
//! * A resuming connection reads its replay from the ring a page at a time,
//!   as much as fits its byte budget beside the replay bytes the server has
//!   not written yet, so a client that reads nothing holds at most that
//!   budget however much the ring holds. When it has caught up it
//!   subscribes to the hub, reads what was published since its last page,
//!   and drops live events it already replayed (by sequence): a publish
//!   during the hand-over is neither lost nor duplicated. A client so slow
//!   that the ring overwrites events it has not had yet gets
//!   `resync_required` (naming the last event it got) and continues live.
//!   A connection without a cursor subscribes at once.
//! * A cursor older than the ring gets `resync_required` — unless the host
//!   set a longer history with [`SseEndpoint::with_replay_source`] (e.g. the
//!   NATS JetStream stream of a cluster, `event-nats`): then that history is
//!   asked, after the live subscription as well, and only its miss is a
//!   resync.
//! * The body is a plain stream of `Bytes`: each poll drains everything
//!   pending and writes it as one chunk. Each event's frame is rendered
//!   byte-exactly once per format, from its cached JSON, and shared by
//!   every connection (a lone frame is passed on without a copy).
//! * A connection that falls behind loses the excess and receives
//!   `event: events.lagged` with the exact count, then the latest state of
//!   what it missed — the latest `JobProgress` per job, `QueueStatus`, and
//!   each job's `JobCompleted`/`JobFailed` — kept while its queue was full
//!   ([`OverflowPolicy::Coalesce`](event_core::OverflowPolicy::Coalesce));
//!   one whose queue stays full for [`SseConfig::stall_timeout`] is dropped. A client that stops reading
//!   altogether is only visible at the socket: serve with `event-http`
//!   (which aborts a stalled write on every connection) or through
//!   [`write_timeout`], so that its connection is aborted too.
//! * A client that accepts it (`Accept-Encoding`) gets the stream in gzip,
//!   br or zstd ([`SseConfig::compression`], `?compression=false` for
//!   plain). Each event is compressed once per format and encoding into
//!   pieces that any decoder reads as one stream, cached beside its frame
//!   and shared by every connection as the plain frame is; a connection
//!   keeps no compressor, and every chunk decodes as it arrives (the
//!   model: the `compress` module, docs/protocol.md §3 "Compression").
//! * A kick or `ConnectionRegistry::shutdown()` ends the stream at once, so
//!   a graceful shutdown completes (a client that stopped reading holds it
//!   up until the write-stall timeout aborts its connection); the registry
//!   entry goes away when the body is dropped, however the client left.
//!
//! ## Wire
//!
//! First `retry: 3000`, then — if the client's cursor cannot be served —
//! `event: resync_required`, then the `QueueStatus` confirmation, then
//! replayed and live events, with a `: keepalive` comment on idle streams
//! (`?heartbeat=5..300` seconds, default 15). Frames in `v1` are
//! `id:`/`event:`/`data:`, in `envelope` `event:`/`id:`/`data:` (choose with
//! `?format=`). Filters: `events=`, `types=`, `entity_id=`, `memory=` (or
//! `X-Fortemi-Memory`); bad values are a `400` JSON error naming them.
//!
//! ## Limits
//!
//! | limit | setting ([`SseConfig`] field; host setting) | default | what a client gets |
//! |---|---|---|---|
//! | open streams | `max_connections`; `MAX_CONNECTIONS` | 10,000 | beyond it `503`, `Retry-After: 5`, `{"error":"too_many_connections","message":"too many connections (limit N)"}` (as the WebSocket upgrade) |
//! | a connection's queue | `outbox`; — | 1,024 events or 1 MiB, raised to hold two of the bus's largest events ([`OutboxLimits::fit_event`](event_core::OutboxLimits::fit_event)) | the excess is dropped and counted: `events.lagged` with the number missed, followed by the latest `JobProgress` per job, `QueueStatus` and job ends, kept within a second budget of the same size |
//! | a replay in flight | the same byte budget | 1 MiB, in chunks of at most 256 KiB | the replay waits for the client to read; if the ring overwrites what it has not had yet, `resync_required`, then live |
//! | a full queue | `stall_timeout`; — | 30 s | the connection is aborted (it must reconnect and resume) |
//! | a consumer's rate | `max_rate`; `STREAM_MAX_RATE` (the client's `?max_rate=`, 0–10,000, overrides it) | unlimited | over it, live events are held and coalesced (latest `JobProgress` per job, latest `QueueStatus`), the rest counted in `events.lagged`; never disconnected ([`event_core::pace`]) |
//! | one event | the bus's [`max_event_bytes`](event_core::EventBus::max_event_bytes); `EVENT_MAX_BYTES` | 256 KiB | larger events are refused at publish and never reach a stream |
//! | `?compression=` | `true`/`false` ([`SseConfig::compression`]; `SSE_COMPRESSION` offers `on`, `off` or a list of `gzip`, `br`, `zstd`) | on, all three | a bad value is `400 invalid_parameter`; a client accepting nothing offered gets plain. A compressed connection keeps 24 bytes of state; its own text is compressed for it only from [`TEXT_COMPRESS_MIN`] bytes |
//!
//! [`SseEndpoint::buffered_bytes`] reports what the endpoint holds for its
//! clients (queued live events and replay in flight).
//!
//! ## Serving
//!
//! Serve the router with `event_http::serve` (crate `event-http`, the
//! serving edge `event-server` is measured with) and pass it
//! [`SseEndpoint::STREAM_PATHS`] and the registry: one call gives
//! `TCP_NODELAY`, the write-stall timeout, connection caps, a shutdown that
//! ends the streams, and the direct event-stream path that holds an idle
//! SSE connection in about a third of what hyper keeps for it.
//! `examples/src/bin/embed-axum.rs` mounts this endpoint, the WebSocket and
//! webhooks into an existing axum app that way.
//!
//! ```text
//! event_http::serve(listener, app)
//!     .stream_paths(&event_sse::SseEndpoint::STREAM_PATHS)
//!     .registry(registry)
//!     .with_graceful_shutdown(signal)
//!     .await;
//! ```
//!
//! ## Example
//!
//! With plain `axum::serve` instead, three steps are yours: `TCP_NODELAY`,
//! [`write_timeout`], and `registry.shutdown()` in the shutdown signal.
//!
//! ```
//! use std::sync::Arc;
//! use event_core::{AllowAnonymous, ConnectionRegistry, EventBus, QueueStatus, SinkRunner};
//! use event_sse::{SseConfig, SseEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bus = EventBus::default();
//! let registry = ConnectionRegistry::new();
//! let sse = SseEndpoint::new(bus.clone(), registry.clone(), Arc::new(AllowAnonymous), SseConfig::default());
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(sse.sink());
//!
//! let app: axum::Router = axum::Router::new()
//!     .merge(sse.router())
//!     .layer(event_sse::cors_layer(["http://localhost:5173"]));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! // Events are small writes: without TCP_NODELAY, Nagle's algorithm and
//! // the client's delayed ACK hold one back for up to ~40 ms.
//! use axum::serve::ListenerExt;
//! let listener = listener.tap_io(|tcp| {
//!     let _ = tcp.set_nodelay(true);
//! });
//! // Clients that stop reading are cut off after the stall timeout.
//! let listener = event_sse::write_timeout(listener, sse.config().stall_timeout);
//! let server = tokio::spawn(async move {
//!     axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//!         .with_graceful_shutdown(async move { registry.shutdown() })
//!         .await
//! });
//! bus.publish(QueueStatus::new(1, 0));
//! // … clients connect to http://{addr}/api/v1/events …
//! # let _ = addr;
//! server.await.unwrap().unwrap();
//! # }
//! ```
//!
//! For another event type, implement [`SseEvent`] and use [`SseChannel`]
//! (see its documentation and `examples/src/bin/third-party-sse.rs`).

mod channel;
mod compress;
mod config;
mod consumer;
mod cors;
mod endpoint;
mod error;
mod event;
mod feed;
pub mod frame;
mod listener;
mod params;
mod scratch;
mod stream;

pub use channel::SseChannel;
pub use compress::{Compression, Encoding, TEXT_COMPRESS_MIN};
pub use config::{MAX_HEARTBEAT_SECS, MAX_HISTORY_LIMIT, MIN_HEARTBEAT_SECS, SseConfig};
pub use cors::{ALLOWED_HEADERS, cors_layer};
pub use endpoint::SseEndpoint;
pub use error::SseError;
pub use event::{Format, SseEvent, SseId};
pub use listener::{WriteTimeout, WriteTimeoutIo, WriteTimeoutListener, write_timeout};
pub use params::MEMORY_HEADER;

/// Re-exported for [`SseEvent`] implementations.
pub use bytes;
