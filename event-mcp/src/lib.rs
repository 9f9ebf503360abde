//! # event-mcp
//!
//! matric's events for AI agents over the [Model Context Protocol]: a
//! Streamable HTTP endpoint at `/mcp`, built on the official Rust SDK
//! ([`rmcp`]), that any MCP-capable assistant can register as a server.
//!
//! * **Tools** (input schemas generated from the Rust argument types):
//!   `events_recent` (filters like SSE: `types`, `events`, `entity_id`,
//!   `memory`; a `since` cursor; `limit`), `job_status`, `wait_for_job`
//!   (progress notifications from `JobProgress`, returns on `JobCompleted`,
//!   `JobFailed` or a timeout), `queue_status`, and for the admin token only
//!   `publish_event` and `list_connections` (other principals neither see
//!   nor may call them).
//! * **Resources**: `events://recent`, `events://queue` and the templates
//!   `events://jobs/{job_id}`, `events://notes/{note_id}`. A session may
//!   `resources/subscribe` to any of them and then gets
//!   `notifications/resources/updated` when an event changes it — at most
//!   one per resource per [`McpConfig::update_interval`] (changes in between
//!   are coalesced into the next one).
//! * **Auth**: `Authorization: Bearer` through the host's
//!   [`Authenticator`](event_core::Authenticator), decided from the request
//!   head before the body is read; a session sees only the events its
//!   principal [`can_see`](event_core::Principal::can_see), and a session
//!   answers only the principal that opened it.
//! * **Sessions** appear in the connection registry with transport `mcp`
//!   and in the metrics (`matric_mcp_connections_active`,
//!   `matric_mcp_events_sent_total`).
//!
//! The protocol revisions served are those with the `initialize` handshake
//! (up to 2025-11-25): `resources/subscribe` belongs to them.
//!
//! ## Limits
//!
//! | limit | setting ([`McpConfig`]) | default | at the limit |
//! |---|---|---|---|
//! | open sessions | `max_sessions` (`MCP_MAX_SESSIONS`) | 1,000 | `initialize` answered `503` JSON with `Retry-After` |
//! | idle session | `session_idle` (`MCP_SESSION_IDLE_SECS`) | 600 s without a client request | closed; the next request gets `404`, the client initializes again |
//! | a session's queue | `session_queue` (`MCP_SESSION_QUEUE`) messages per stream, plus one pending update per subscribed resource and one pending progress value per waiting call | 16 | a client that does not read holds up only its own session; updates coalesce, nothing grows |
//! | subscriptions per session | `max_subscriptions` | 64 | `resources/subscribe` refused |
//! | `wait_for_job` calls per session | `max_waits` | 8 | the call returns an error result |
//! | request body | `max_body_bytes`, `body_timeout` | 1 MiB, 10 s | `413`, `408` |
//! | events in one answer | `max_result_bytes` | 1 MiB | the page is cut short (`truncated`, `next_since`) |
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use event_core::{AllowAnonymous, ConnectionRegistry, EventBus, SinkRunner};
//! use event_mcp::{McpConfig, McpEndpoint};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bus = EventBus::default();
//! let registry = ConnectionRegistry::new();
//! let mcp = McpEndpoint::new(bus.clone(), registry, Arc::new(AllowAnonymous), McpConfig::default());
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(mcp.sink());
//! let app: axum::Router = axum::Router::new().merge(mcp.router());
//! // axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//! # let _ = app;
//! assert_eq!(mcp.sessions(), 0);
//! runner.shutdown(std::time::Duration::from_secs(1)).await;
//! # }
//! ```
//!
//! [Model Context Protocol]: https://modelcontextprotocol.io

mod config;
mod endpoint;
mod error;
mod hub;
mod resource;
mod session;
mod views;

pub use config::McpConfig;
pub use endpoint::{MCP_PATH, McpEndpoint};
pub use error::McpError;
pub use resource::{JOB_TEMPLATE, NOTE_TEMPLATE, QUEUE, RECENT};
pub use session::{EventsRecentArgs, JobArgs, PublishArgs, WaitArgs};
