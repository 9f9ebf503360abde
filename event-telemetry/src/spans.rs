//! Spans and log helpers for connections and deliveries.
//!
//! # Model
//!
//! Transports wrap work in spans so every log line written inside carries
//! its context (and, with OTLP on, becomes a trace):
//!
//! * [`connection_span`] — the life of one WebSocket or SSE connection
//!   (`connection.transport`, `connection.id`), target
//!   [`CONNECTIONS_TARGET`]. [`connection_opened`] / [`connection_closed`]
//!   log the two ends with `event.type` `ConnectionOpened` /
//!   `ConnectionClosed`, the names UC-005's connection-count query uses.
//! * [`delivery_span`] — one event being written to a client, carrying the
//!   event's `event.seq`, `event.id`, `event.type` and
//!   `event.correlation_id`.
//! * [`webhook_attempt_span`] — one webhook HTTP attempt: the same event
//!   fields plus `webhook.endpoint_id` and `webhook.attempt`; the webhook
//!   crate records `webhook.status` (HTTP status) and `webhook.outcome`
//!   (`success`, `retry`, `failed`) on it when the attempt ends. Endpoint
//!   *ids* only: URLs and secrets never go into a span.

use event_core::{Event, Transport};
use tracing::Span;
use tracing::field::Empty;

/// The `tracing` target of connection spans and logs.
pub const CONNECTIONS_TARGET: &str = "matric::connections";

/// The `tracing` target of webhook attempt spans.
pub const WEBHOOKS_TARGET: &str = "matric::webhooks";

/// The span of one client connection.
pub fn connection_span(transport: Transport, connection_id: u64) -> Span {
    tracing::info_span!(
        target: CONNECTIONS_TARGET,
        "connection",
        "connection.transport" = transport.as_str(),
        "connection.id" = connection_id,
    )
}

/// Logs that a connection opened (INFO, `event.type = "ConnectionOpened"`).
pub fn connection_opened(transport: Transport, connection_id: u64) {
    tracing::info!(
        target: CONNECTIONS_TARGET,
        {
            "event.type" = "ConnectionOpened",
            "connection.transport" = transport.as_str(),
            "connection.id" = connection_id,
        },
        "Connection opened"
    );
}

/// Logs that a connection closed (INFO, `event.type = "ConnectionClosed"`),
/// with a short fixed `reason` and the number of events it was sent.
pub fn connection_closed(
    transport: Transport,
    connection_id: u64,
    reason: &'static str,
    events_sent: u64,
) {
    tracing::info!(
        target: CONNECTIONS_TARGET,
        {
            "event.type" = "ConnectionClosed",
            "connection.transport" = transport.as_str(),
            "connection.id" = connection_id,
            "connection.reason" = reason,
            "connection.events_sent" = events_sent,
        },
        "Connection closed"
    );
}

/// The span of delivering `event` to one client (DEBUG: one per event and
/// client, so off unless asked for).
pub fn delivery_span(event: &Event) -> Span {
    tracing::debug_span!(
        target: CONNECTIONS_TARGET,
        "deliver",
        "event.type" = event.kind().type_name(),
        "event.seq" = event.seq(),
        "event.id" = display(event.id()),
        "event.correlation_id" = event.meta().correlation_id.map(display),
    )
}

/// The span of one webhook attempt for `event` to the endpoint
/// `endpoint_id` (attempt 1 is the first try).
pub fn webhook_attempt_span(event: &Event, endpoint_id: &str, attempt: u32) -> Span {
    tracing::info_span!(
        target: WEBHOOKS_TARGET,
        "webhook.attempt",
        "event.type" = event.kind().type_name(),
        "event.seq" = event.seq(),
        "event.id" = display(event.id()),
        "event.correlation_id" = event.meta().correlation_id.map(display),
        "webhook.endpoint_id" = endpoint_id,
        "webhook.attempt" = attempt,
        "webhook.status" = Empty,
        "webhook.outcome" = Empty,
    )
}
