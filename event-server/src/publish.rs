//! `POST /api/v1/events`: publishing from producers that are not written in Rust.
//!
//! The body is one flat `ServerEvent` object (docs/protocol.md §1) or an array of
//! them. Every event is parsed and validated before any is published, so a
//! bad batch publishes nothing; a good one is published in order and answered
//! `202 {"events":[{"seq":…,"event_id":…}]}`. With the event log
//! (feature `log`, `EVENT_LOG`), `202` comes only once the events are
//! committed to it: an acknowledged event survives a crash.
//!
//! In a NATS cluster (the bus has an upstream) `202` comes once JetStream
//! acknowledged every event (within `NATS_PUBLISH_TIMEOUT_MS`, else `503
//! nats_unavailable`), with the bus sequence the stream gave each; while
//! NATS is unreachable, once the events were delivered on this instance
//! only (`"local_only": true`), as for in-process publishers. There
//! the stream deduplicates, so a retry is recognised on every instance: an
//! event may carry its producer's `event_id` (a UUIDv7, the message's
//! `Nats-Msg-Id`), and an `Idempotency-Key` request's events get message
//! ids derived from the producer, the key and their place in the request
//! ([`dedup_key`]). A repeat is answered with the original's `seq` and
//! `event_id` and `"duplicate": true`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use event_core::{
    AckedEvent, Authenticator, DedupKey, EventBus, EventMeta, ServerEvent, TraceContext,
};
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
    /// In cluster mode, how long a request waits for JetStream's
    /// acknowledgements (`NATS_PUBLISH_TIMEOUT_MS`).
    pub ack_timeout: Duration,
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
    /// The bus sequence number (in a NATS cluster, the stream sequence ×
    /// 1,000,000). Absent only where none is known yet (an instance
    /// shutting down while it publishes).
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
    /// A repeat (of an `Idempotency-Key` request, or in a cluster of
    /// events whose `event_id`s the stream already had): these are the
    /// events the first one published, and nothing was published now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Cluster mode while NATS is unreachable: (some of) the events were
    /// delivered on this instance only (their `seq` is a local one between
    /// two stream sequences); other instances never see them, and a retry
    /// is not recognised elsewhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// Parses and validates a request body into events, naming the first problem.
pub fn parse_events(body: Value) -> Result<Vec<ServerEvent>, ServerError> {
    Ok(parse_request(body)?.into_iter().map(|(e, _)| e).collect())
}

/// Like [`parse_events`], with each event's producer-chosen `event_id` (a
/// UUIDv7, at most once per request) taken out of its object.
pub fn parse_request(body: Value) -> Result<Vec<(ServerEvent, Option<uuid::Uuid>)>, ServerError> {
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
    let mut ids = HashSet::new();
    items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            let invalid = |e: &dyn std::fmt::Display| {
                ServerError::bad_request("invalid_event", format!("{}{e}", at(i)))
            };
            let id = match item.as_object_mut().and_then(|o| o.remove("event_id")) {
                None => None,
                Some(raw) => {
                    let id = raw
                        .as_str()
                        .and_then(|t| uuid::Uuid::try_parse(t).ok())
                        .filter(|id| id.get_version_num() == 7)
                        .ok_or_else(|| invalid(&"`event_id` must be a UUIDv7"))?;
                    if !ids.insert(id) {
                        return Err(invalid(&"`event_id` appears twice in this request"));
                    }
                    Some(id)
                }
            };
            let event: ServerEvent = serde_json::from_value(item).map_err(|e| invalid(&e))?;
            event.validate().map_err(|e| invalid(&e))?;
            Ok((event, id))
        })
        .collect()
}

/// The JetStream message id of event `index` of an `Idempotency-Key`
/// request: the same for a retry on any instance, distinct per producer,
/// key and place. A digest, so neither the principal nor the key is
/// readable in the stream.
pub fn dedup_key(principal: &str, key: &str, index: usize, fingerprint: &str) -> DedupKey {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [principal.as_bytes(), key.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update((index as u64).to_be_bytes());
    DedupKey {
        id: format!("idem-{}", hex(&hash.finalize()[..16])),
        fingerprint: fingerprint.to_owned(),
    }
}

/// A digest of what an `Idempotency-Key` covers (the body, `memory` and
/// `topic`): the same on every instance, so a key reused with another
/// request is told from a retry wherever it arrives.
pub fn request_fingerprint(body: &[u8], memory: Option<&str>, topic: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        Some(body),
        memory.map(str::as_bytes),
        topic.map(str::as_bytes),
    ] {
        match part {
            Some(p) => {
                hash.update([1]);
                hash.update((p.len() as u64).to_be_bytes());
                hash.update(p);
            }
            None => hash.update([0]),
        }
    }
    hex(&hash.finalize()[..16])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
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
    let events = parse_request(value)?;
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
    let clustered = state.bus.has_upstream();
    if !clustered && events.iter().any(|(_, id)| id.is_some()) {
        return Err(ServerError::bad_request(
            "event_id_unsupported",
            "a producer `event_id` is taken in cluster mode only (NATS_URL), where the stream \
             deduplicates on it; use an Idempotency-Key header here",
        ));
    }
    let claim = match (&state.dedup, key) {
        (Some(dedup), Some(key)) => {
            let request = (&body[..], query.memory.as_deref(), query.topic.as_deref());
            match dedup.check(&principal.id, key, request)? {
                Decision::Repeat(events) => {
                    let answer = PublishResponse {
                        events,
                        duplicate: true,
                        local_only: false,
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
    if clustered {
        // The key counts only where this instance remembers keys (the same
        // DEDUP_WINDOW_SECS switches both).
        let key = key.filter(|_| claim.is_some());
        let answer = publish_clustered(&state, &principal.id, key, &body, &query, events, &meta)
            .instrument(span)
            .await?;
        if let Some(claim) = claim {
            claim.remember(&answer.events);
        }
        return Ok((StatusCode::ACCEPTED, Json(answer)));
    }
    let events = events.into_iter().map(|(event, _)| event);
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
        local_only: false,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Cluster mode: publishes through JetStream and answers with what the
/// stream stored. With a key, the first event goes alone first: if the
/// stream already had it under another request's fingerprint the key was
/// reused (`422`), and the rest is not published; otherwise the rest
/// follows (as duplicates too, for a retry).
async fn publish_clustered(
    state: &PublishState,
    principal: &str,
    key: Option<&str>,
    body: &[u8],
    query: &PublishQuery,
    events: Vec<(ServerEvent, Option<uuid::Uuid>)>,
    meta: &EventMeta,
) -> Result<PublishResponse, ServerError> {
    let fingerprint =
        key.map(|_| request_fingerprint(body, query.memory.as_deref(), query.topic.as_deref()));
    let mut acked: Vec<AckedEvent> = events
        .into_iter()
        .enumerate()
        .map(|(i, (payload, id))| AckedEvent {
            payload,
            id,
            dedup: key
                .zip(fingerprint.as_deref())
                .map(|(key, f)| dedup_key(principal, key, i, f)),
        })
        .collect();
    let rest = match key {
        Some(_) if acked.len() > 1 => acked.split_off(1),
        _ => Vec::new(),
    };
    let mut stored = state
        .bus
        .publish_acked(acked, meta, state.ack_timeout)
        .await?;
    let reused = |s: &event_core::Stored| {
        s.duplicate && s.fingerprint.is_some() && s.fingerprint != fingerprint
    };
    if stored.iter().any(reused) {
        return Err(key_reused());
    }
    if !rest.is_empty() {
        stored.extend(
            state
                .bus
                .publish_acked(rest, meta, state.ack_timeout)
                .await?,
        );
        if stored.iter().any(reused) {
            return Err(key_reused());
        }
    }
    Ok(PublishResponse {
        duplicate: stored.iter().all(|s| s.duplicate),
        local_only: stored.iter().any(|s| s.local_only),
        events: stored
            .into_iter()
            .map(|s| Published {
                seq: (s.seq != 0).then_some(s.seq),
                event_id: s.event_id,
            })
            .collect(),
    })
}

fn key_reused() -> ServerError {
    ServerError::Unprocessable {
        code: "idempotency_key_reused",
        message: "this Idempotency-Key was used with a different request within \
                  DEDUP_WINDOW_SECS; use a new key for a new request"
            .to_owned(),
    }
}
