//! The topics API (feature `log`, admin): `GET /api/v1/topics` lists the
//! topics in the event log with their sizes and retention;
//! `GET/PUT/DELETE /api/v1/topics/{name}` reads, sets and removes one
//! topic's own retention (docs/protocol.md §11). Without a log: `410
//! log_off`. In cluster mode the listing covers the stream's newest events
//! (`NATS_TOPIC_SCAN`), the retentions are shared by every instance (a
//! JetStream key-value bucket). A log that cannot apply a bound answers
//! `409 topic_retention_unsupported` (none of the shipped ones).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use event_core::{EventLog, MAX_TOPIC_RETENTIONS, Retention, TopicRetention, TopicStats};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ServerError;

/// Largest body of a `PUT`.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

type Shared = Option<Arc<dyn EventLog>>;

fn log_of(log: Shared) -> Result<Arc<dyn EventLog>, ServerError> {
    log.ok_or(ServerError::LogOff("the topics API"))
}

fn unreadable(e: event_core::LogError) -> ServerError {
    ServerError::Unavailable(format!("the event log cannot be read: {e}"))
}

/// A write of a topic's retention that failed: `409
/// topic_retention_unsupported` for what the log cannot do (the message
/// says why), else `503`.
fn unwritable(e: event_core::LogError) -> ServerError {
    match e {
        event_core::LogError::Unsupported { log, what } => ServerError::Conflict {
            code: "topic_retention_unsupported",
            message: format!("the {log} event log does not support {what}"),
        },
        other => unreadable(other),
    }
}

fn retention_json(r: &Option<Retention>) -> Value {
    match r {
        None => Value::Null,
        Some(r) => json!({
            "max_age_secs": r.max_age.map(|d| d.as_secs()),
            "max_events": r.max_events,
            "max_bytes": r.max_bytes,
        }),
    }
}

fn topic_json(name: &str, stats: Option<&TopicStats>, own: Option<&TopicRetention>) -> Value {
    json!({
        "name": name,
        "events": stats.map_or(0, |s| s.events),
        "bytes": stats.map_or(0, |s| s.bytes),
        "first_seq": stats.map_or(0, |s| s.first_seq),
        "last_seq": stats.map_or(0, |s| s.last_seq),
        "retention": retention_json(&own.and_then(|o| o.retention)),
        "pruned_through": own.map_or(0, |o| o.pruned_through),
    })
}

async fn list(State(log): State<Shared>) -> Result<Json<Value>, ServerError> {
    let log = log_of(log)?;
    let stats = log.topics().await.map_err(unreadable)?;
    let own = log.topic_retentions().await.map_err(unreadable)?;
    let mut names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
    names.extend(
        own.iter()
            .filter(|o| o.retention.is_some())
            .map(|o| o.topic.as_str()),
    );
    names.sort_unstable();
    names.dedup();
    let topics: Vec<Value> = names
        .into_iter()
        .map(|name| {
            topic_json(
                name,
                stats.iter().find(|s| s.name == name),
                own.iter().find(|o| o.topic == name),
            )
        })
        .collect();
    Ok(Json(json!({ "topics": topics })))
}

fn checked(name: &str) -> Result<(), ServerError> {
    event_core::validate_topic(name)
        .map_err(|e| ServerError::bad_request("invalid_topic", e.to_string()))
}

async fn show(
    State(log): State<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServerError> {
    checked(&name)?;
    let log = log_of(log)?;
    let stats = log.topics().await.map_err(unreadable)?;
    let own = log.topic_retentions().await.map_err(unreadable)?;
    let stats = stats.iter().find(|s| s.name == name);
    let own = own.iter().find(|o| o.topic == name);
    if stats.is_none() && own.is_none_or(|o| o.retention.is_none()) {
        return Err(ServerError::NotFound(format!(
            "no events and no retention for topic {name:?}"
        )));
    }
    Ok(Json(topic_json(&name, stats, own)))
}

/// The body of a `PUT`: each bound, or `null` for none on that axis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    #[serde(default)]
    max_age_secs: Option<u64>,
    #[serde(default)]
    max_events: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

async fn put(
    State(log): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ServerError> {
    checked(&name)?;
    let log = log_of(log)?;
    let body: RetentionBody = serde_json::from_slice(&body).map_err(|e| {
        ServerError::bad_request(
            "invalid_retention",
            format!("expected {{\"max_age_secs\", \"max_events\", \"max_bytes\"}} (each a positive integer or null): {e}"),
        )
    })?;
    let bounds = [body.max_age_secs, body.max_events, body.max_bytes];
    if bounds.iter().all(Option::is_none) || bounds.iter().flatten().any(|v| *v == 0) {
        return Err(ServerError::bad_request(
            "invalid_retention",
            "give at least one of max_age_secs, max_events, max_bytes, each at least 1",
        ));
    }
    let own = log.topic_retentions().await.map_err(unreadable)?;
    let existing = own.iter().find(|o| o.topic == name);
    if existing.is_none_or(|o| o.retention.is_none())
        && own.iter().filter(|o| o.retention.is_some()).count() >= MAX_TOPIC_RETENTIONS
    {
        return Err(ServerError::Conflict {
            code: "topic_limit",
            message: format!(
                "at most {MAX_TOPIC_RETENTIONS} topics may have a retention of their own"
            ),
        });
    }
    let record = TopicRetention {
        topic: name.clone(),
        retention: Some(Retention {
            max_age: body.max_age_secs.map(Duration::from_secs),
            max_events: body.max_events,
            max_bytes: body.max_bytes,
        }),
        pruned_through: existing.map_or(0, |o| o.pruned_through),
    };
    log.set_topic_retention(&record).await.map_err(unwritable)?;
    tracing::info!(topic = %name, "topic retention set");
    Ok(Json(topic_json(&name, None, Some(&record))))
}

async fn remove(
    State(log): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ServerError> {
    checked(&name)?;
    let log = log_of(log)?;
    let own = log.topic_retentions().await.map_err(unreadable)?;
    let Some(mut record) = own
        .into_iter()
        .find(|o| o.topic == name && o.retention.is_some())
    else {
        return Err(ServerError::NotFound(format!(
            "topic {name:?} has no retention of its own"
        )));
    };
    // The watermark stays: replays still know what was pruned.
    record.retention = None;
    log.set_topic_retention(&record).await.map_err(unwritable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/topics` and `GET/PUT/DELETE /api/v1/topics/{name}` over
/// `log` (`None`: the log is off). Mount behind the admin guard and a
/// [`MAX_BODY_BYTES`] body limit.
pub fn router(log: Option<Arc<dyn EventLog>>) -> Router {
    Router::new()
        .route("/api/v1/topics", get(list))
        .route("/api/v1/topics/{name}", get(show).put(put).delete(remove))
        .with_state(log)
}
