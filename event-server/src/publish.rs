//! `POST /api/v1/events`: publishing from producers that are not written in Rust.
//!
//! The body is one flat `ServerEvent` object (docs/protocol.md §1) or an array of
//! them. Every event is parsed and validated before any is published, so a
//! bad batch publishes nothing; a good one is published in order and answered
//! `202 {"events":[{"seq":…,"event_id":…}]}` (`seq` is absent in a NATS
//! cluster, where JetStream assigns it after the answer). With the event log
//! (feature `log`, `EVENT_LOG`), `202` comes only once the events are
//! committed to it: an acknowledged event survives a crash.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use event_core::{Authenticator, EventBus, EventMeta, ServerEvent, TraceContext};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::auth::require_admin;
use crate::dedup::{Decision, Dedup};
use crate::error::ServerError;

/// Most events accepted in one request.
pub const MAX_BATCH: usize = 1000;

/// State of the publish route.
#[derive(Clone)]
pub struct PublishState {
    /// Where events go.
    pub bus: EventBus,
    /// Who may publish (admin only when auth is on).
    pub auth: Arc<dyn Authenticator>,
    /// Answers remembered for `Idempotency-Key` (`None`: keys ignored).
    pub dedup: Option<Arc<Dedup>>,
}

/// Query parameters.
#[derive(Debug, Deserialize)]
pub struct PublishQuery {
    /// Scope every event to this memory.
    pub memory: Option<String>,
    /// File every event under this topic (default: each event's type
    /// family).
    pub topic: Option<String>,
    /// Alternative to the bearer header.
    pub token: Option<String>,
}

/// One published event's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct Published {
    /// The bus sequence number. Absent in a NATS cluster, where JetStream
    /// assigns it when the event comes back from the stream (the id is final
    /// at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The event UUID.
    pub event_id: uuid::Uuid,
}

/// The 202 answer.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct PublishResponse {
    /// In request order.
    pub events: Vec<Published>,
    /// A repeat of an `Idempotency-Key` request: these are the events the
    /// first one published, and nothing was published now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Parses and validates a request body into events, naming the first problem.
pub fn parse_events(body: Value) -> Result<Vec<ServerEvent>, ServerError> {
    let (items, single) = match body {
        Value::Array(items) => (items, false),
        obj @ Value::Object(_) => (vec![obj], true),
        other => {
            return Err(ServerError::bad_request(
                "invalid_body",
                format!(
                    "expected an event object or an array of events, got {}",
                    json_kind(&other)
                ),
            ));
        }
    };
    if items.is_empty() {
        return Err(ServerError::bad_request(
            "invalid_body",
            "the array holds no events",
        ));
    }
    if items.len() > MAX_BATCH {
        return Err(ServerError::bad_request(
            "invalid_body",
            format!(
                "at most {MAX_BATCH} events per request, got {}",
                items.len()
            ),
        ));
    }
    let at = |i: usize| {
        if single {
            String::new()
        } else {
            format!("event {i}: ")
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let event: ServerEvent = serde_json::from_value(item)
                .map_err(|e| ServerError::bad_request("invalid_event", format!("{}{e}", at(i))))?;
            event
                .validate()
                .map_err(|e| ServerError::bad_request("invalid_event", format!("{}{e}", at(i))))?;
            Ok(event)
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The handler.
pub async fn publish(
    State(state): State<PublishState>,
    Query(query): Query<PublishQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<PublishResponse>), ServerError> {
    let principal = require_admin(&state.auth, &headers, query.token.as_deref()).await?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ServerError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let events = parse_events(value)?;
    if let Some(m) = &query.memory
        && m.trim().is_empty()
    {
        return Err(ServerError::bad_request(
            "invalid_memory",
            "`memory` must not be empty",
        ));
    }
    if let Some(topic) = &query.topic {
        event_core::validate_topic(topic)
            .map_err(|e| ServerError::bad_request("invalid_topic", e.to_string()))?;
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ServerError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be visible ASCII",
            )
        })?),
    };
    let claim = match (&state.dedup, key) {
        (Some(dedup), Some(key)) => {
            let request = (&body[..], query.memory.as_deref(), query.topic.as_deref());
            match dedup.check(&principal.id, key, request)? {
                Decision::Repeat(events) => {
                    let answer = PublishResponse {
                        events,
                        duplicate: true,
                    };
                    return Ok((StatusCode::ACCEPTED, Json(answer)));
                }
                Decision::Publish(claim) => Some(claim),
            }
        }
        _ => None,
    };
    // W3C trace context: the events join the producer's trace, as
    // children of this request's `publish` span.
    let incoming = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|parent| {
            let state = headers.get("tracestate").and_then(|v| v.to_str().ok());
            TraceContext::parse(parent, state)
        });
    // A span only when traces are exported: without export it would cost
    // every request a span and carry nothing anywhere.
    let span = if event_core::trace::enabled() {
        tracing::info_span!(target: "matric::publish", "publish", "events" = events.len())
    } else {
        tracing::Span::none()
    };
    if let Some(context) = &incoming {
        event_core::trace::link(&span, context);
    }
    let meta = EventMeta {
        memory: query.memory.clone(),
        topic: query.topic.clone(),
        trace: event_core::trace::outgoing(&span, incoming.as_ref()),
        ..EventMeta::default()
    };
    // All or nothing: one event over EVENT_MAX_BYTES refuses the request
    // (and its key is not remembered: the claim is dropped unused). With
    // the event log, the answer waits for the commit (group commit); if
    // the log does not confirm in time the key is not remembered either, so
    // a retry publishes again (at least once, never lost).
    let published: Vec<Published> = state
        .bus
        .publish_durable(events, &meta)
        .instrument(span)
        .await?
        .iter()
        .map(|ev| Published {
            seq: (ev.seq() != 0).then_some(ev.seq()),
            event_id: ev.id(),
        })
        .collect();
    if let Some(claim) = claim {
        claim.remember(&published);
    }
    let answer = PublishResponse {
        events: published,
        duplicate: false,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}
