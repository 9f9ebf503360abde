//! The REST API of docs/protocol.md §4 under `/api/v1/webhooks`.
//!
//! Bodies are parsed by hand from JSON values so every validation error
//! names its field: malformed JSON is `400 bad_request`, a field of the
//! wrong type or value is `422 validation_error`, an unknown id is
//! `404 not_found`, a body over [`MAX_BODY_BYTES`] is
//! `413 payload_too_large`.
//!
//! Every route requires an admin principal from the host's
//! [`Authenticator`](event_core::Authenticator), decided from the request
//! head by a route layer *before any body byte is read*: an unauthenticated
//! client gets `401` (`403` for a non-admin) at once, however large the
//! `Content-Length` it announces, and never makes the server buffer a body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use event_core::{Credentials, EventKind};
use rand::RngCore;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Result, WebhookError};
use crate::model::{
    AttemptOutcome, AttemptRecord, DeliveryStatus, NewDelivery, Webhook, WebhookJson,
};
use crate::service::Shared;
use crate::ssrf::host_of;

/// Longest accepted URL.
pub const MAX_URL_LEN: usize = 2048;
/// Secret length bounds, in bytes.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=128;
/// Highest `max_retries`.
pub const MAX_RETRIES: u32 = 20;
/// Default and highest `limit` of the deliveries list.
pub const DELIVERIES_LIMIT: (u32, u32) = (50, 1000);
/// Largest request body of the webhook routes (64 KiB): a create or patch
/// body is a URL of at most [`MAX_URL_LEN`] characters, a secret, and a list
/// of event names. Larger bodies get `413 payload_too_large`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub(crate) fn router<S: Clone + Send + Sync + 'static>(shared: Arc<Shared>) -> Router<S> {
    Router::new()
        .route("/api/v1/webhooks", post(create).get(list))
        .route(
            "/api/v1/webhooks/{id}",
            get(fetch).patch(update).delete(remove),
        )
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/api/v1/webhooks/{id}/test", post(test_delivery))
        .route(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
        // Runs for matched routes only, before the handler and so before
        // its body extractor reads anything.
        .route_layer(from_fn_with_state(shared.clone(), guard_head))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// The route layer: authenticates from the head and answers `401`/`403`
/// JSON before the body is touched; then refuses a `Content-Length` over
/// [`MAX_BODY_BYTES`] (`413`) without reading it. A chunked body is cut at
/// the limit while it is read.
async fn guard_head(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if let Err(e) = authorize(&shared, request.headers()).await {
        return e.into_response();
    }
    let announced = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return WebhookError::PayloadTooLarge(MAX_BODY_BYTES).into_response();
    }
    next.run(request).await
}

/// The body of a create or patch, within [`MAX_BODY_BYTES`].
fn body_of(body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            WebhookError::PayloadTooLarge(MAX_BODY_BYTES)
        } else {
            WebhookError::BadRequest(format!("cannot read the body: {}", rejection.body_text()))
        }
    })
}

async fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<()> {
    let credentials = Credentials::from_headers(headers, None);
    match shared.auth.authenticate(&credentials).await {
        Ok(p) if p.is_admin() => Ok(()),
        Ok(_) => Err(WebhookError::Forbidden(
            "managing webhooks needs an admin principal".to_owned(),
        )),
        Err(event_core::Error::Forbidden(m)) => Err(WebhookError::Forbidden(m)),
        Err(e) => Err(WebhookError::Unauthorized(e.to_string())),
    }
}

fn parse_id(raw: &str, what: &'static str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|_| WebhookError::NotFound(what))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(WebhookError::BadRequest(
            "the body must be a JSON object".to_owned(),
        )),
        Err(e) => Err(WebhookError::BadRequest(format!("invalid JSON: {e}"))),
    }
}

/// The fields of a create or patch body, each validated.
#[derive(Default)]
struct Fields {
    url: Option<String>,
    events: Option<Vec<EventKind>>,
    secret: Option<String>,
    active: Option<bool>,
    max_retries: Option<u32>,
}

const FIELDS: [&str; 6] = [
    "url",
    "events",
    "secret",
    "active",
    "is_active",
    "max_retries",
];

fn field_name(key: &str) -> &'static str {
    FIELDS
        .iter()
        .find(|f| **f == key)
        .copied()
        .unwrap_or("body")
}

fn parse_fields(obj: Map<String, Value>) -> Result<Fields> {
    let mut f = Fields::default();
    for (key, value) in obj {
        let name = field_name(&key);
        match (key.as_str(), value) {
            ("url", Value::String(s)) => f.url = Some(s),
            ("events", Value::Array(items)) => {
                let mut kinds = Vec::new();
                for item in items {
                    let Value::String(s) = item else {
                        return Err(WebhookError::invalid(
                            "events",
                            "must be an array of event names",
                        ));
                    };
                    let kind = EventKind::from_name(&s).ok_or_else(|| {
                        WebhookError::invalid("events", format!("unknown event name {s:?}"))
                    })?;
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
                kinds.sort();
                f.events = Some(kinds);
            }
            ("events", Value::Null) => f.events = Some(Vec::new()),
            ("secret", Value::String(s)) => {
                if !SECRET_LEN.contains(&s.len()) {
                    return Err(WebhookError::invalid("secret", "must be 16 to 128 bytes"));
                }
                if s.starts_with(crate::secret_key::RESERVED_PREFIX) {
                    // Stored secrets sealed at rest start with it.
                    return Err(WebhookError::invalid(
                        "secret",
                        "must not start with `enc:` (reserved for sealed secrets)",
                    ));
                }
                f.secret = Some(s);
            }
            ("secret", Value::Null) => {}
            ("active" | "is_active", Value::Bool(b)) => {
                if f.active.is_some_and(|a| a != b) {
                    return Err(WebhookError::invalid(
                        name,
                        "`active` and `is_active` disagree",
                    ));
                }
                f.active = Some(b);
            }
            ("max_retries", Value::Number(n)) => {
                let v = n
                    .as_u64()
                    .filter(|v| *v <= u64::from(MAX_RETRIES))
                    .ok_or_else(|| {
                        WebhookError::invalid(
                            "max_retries",
                            format!("must be an integer from 0 to {MAX_RETRIES}"),
                        )
                    })?;
                f.max_retries = Some(v as u32);
            }
            ("url" | "events" | "secret" | "active" | "is_active" | "max_retries", _) => {
                return Err(WebhookError::invalid(name, "has the wrong type"));
            }
            (other, _) => {
                return Err(WebhookError::invalid(
                    "body",
                    format!("unknown field {other:?}"),
                ));
            }
        }
    }
    Ok(f)
}

async fn check_url(shared: &Shared, url: &str) -> Result<()> {
    if url.len() > MAX_URL_LEN {
        return Err(WebhookError::invalid(
            "url",
            format!("longer than {MAX_URL_LEN} characters"),
        ));
    }
    match shared.guard.check_url(url).await {
        Ok(()) => Ok(()),
        Err(WebhookError::Refused(why)) => Err(WebhookError::invalid(
            "url",
            format!("target address refused: {why}"),
        )),
        Err(e) => Err(e),
    }
}

fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

async fn create(
    State(shared): State<Arc<Shared>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_of(body)?;
    let fields = parse_fields(parse_object(&body)?)?;
    let url = fields
        .url
        .ok_or_else(|| WebhookError::invalid("url", "is required"))?;
    check_url(&shared, &url).await?;
    let _creating = shared.create_lock.lock().await;
    let max = shared.config.max_webhooks;
    if max > 0 && shared.api().count_webhooks().await? >= max as u64 {
        return Err(WebhookError::TooManyWebhooks(max));
    }
    let now = OffsetDateTime::now_utc();
    let webhook = Webhook {
        id: Uuid::now_v7(),
        url,
        events: fields.events.unwrap_or_default(),
        secret: fields.secret.unwrap_or_else(generate_secret),
        active: fields.active.unwrap_or(true),
        max_retries: fields
            .max_retries
            .unwrap_or(shared.config.default_max_retries()),
        created_at: now,
        updated_at: now,
        last_triggered_at: None,
        failure_count: 0,
        disabled_reason: None,
    };
    shared.api().create_webhook(&webhook).await?;
    shared.refresh_index().await;
    tracing::info!(webhook_id = %webhook.id, host = %host_of(&webhook.url), "webhook created");
    Ok((
        StatusCode::CREATED,
        Json(WebhookJson::with_secret(&webhook)),
    )
        .into_response())
}

async fn list(State(shared): State<Arc<Shared>>) -> Result<Response> {
    let all = shared.api().list_webhooks().await?;
    let items: Vec<_> = all.iter().map(WebhookJson::public).collect();
    Ok(Json(items).into_response())
}

async fn load(shared: &Shared, raw_id: &str) -> Result<Webhook> {
    let id = parse_id(raw_id, "webhook")?;
    shared
        .api()
        .get_webhook(id)
        .await?
        .ok_or(WebhookError::NotFound("webhook"))
}

async fn fetch(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response> {
    let w = load(&shared, &id).await?;
    Ok(Json(WebhookJson::public(&w)).into_response())
}

async fn update(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = body_of(body)?;
    let fields = parse_fields(parse_object(&body)?)?;
    let mut w = load(&shared, &id).await?;
    if let Some(url) = fields.url {
        check_url(&shared, &url).await?;
        w.url = url;
    }
    if let Some(events) = fields.events {
        w.events = events;
    }
    if let Some(secret) = fields.secret {
        w.secret = secret;
    }
    if let Some(max_retries) = fields.max_retries {
        w.max_retries = max_retries;
    }
    if let Some(active) = fields.active {
        if active && !w.active {
            // Re-enabled by hand: forget why it was disabled.
            w.failure_count = 0;
            w.disabled_reason = None;
        }
        w.active = active;
    }
    w.updated_at = OffsetDateTime::now_utc();
    if !shared.api().update_webhook(&w).await? {
        return Err(WebhookError::NotFound("webhook"));
    }
    shared.refresh_index().await;
    // Re-enabled, its waiting rows come first.
    shared.worker.note_behind([w.id]);
    shared.wake.notify_one();
    tracing::info!(webhook_id = %w.id, host = %host_of(&w.url), "webhook updated");
    Ok(Json(WebhookJson::public(&w)).into_response())
}

async fn remove(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Response> {
    let id = parse_id(&id, "webhook")?;
    if !shared.api().delete_webhook(id).await? {
        return Err(WebhookError::NotFound("webhook"));
    }
    shared.refresh_index().await;
    tracing::info!(webhook_id = %id, "webhook deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn deliveries(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let limit = match query.get("limit") {
        None => DELIVERIES_LIMIT.0,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=DELIVERIES_LIMIT.1).contains(n))
            .ok_or_else(|| {
                WebhookError::BadRequest(format!(
                    "`limit` must be an integer from 1 to {}",
                    DELIVERIES_LIMIT.1
                ))
            })?,
    };
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            WebhookError::BadRequest(
                "`status` must be pending, failed, succeeded or dead".to_owned(),
            )
        })?),
    };
    let w = load(&shared, &id).await?;
    let list = shared.api().list_deliveries(w.id, status, limit).await?;
    Ok(Json(list).into_response())
}

async fn redeliver(
    State(shared): State<Arc<Shared>>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<Response> {
    let w = load(&shared, &id).await?;
    let delivery_id = parse_id(&delivery_id, "delivery")?;
    let d = shared
        .api()
        .redeliver(w.id, delivery_id, OffsetDateTime::now_utc())
        .await?
        .ok_or(WebhookError::NotFound("delivery"))?;
    shared.worker.note_behind([w.id]);
    shared.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(d)).into_response())
}

/// Sends a real, signed delivery of a synthetic `QueueStatus` event right
/// away (one attempt, not retried) and reports the outcome honestly.
async fn test_delivery(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response> {
    let w = load(&shared, &id).await?;
    let event = event_core::Event::new(
        0,
        Uuid::now_v7(),
        OffsetDateTime::now_utc(),
        event_core::EventMeta::default(),
        event_core::ServerEvent::QueueStatus(event_core::QueueStatus::new(0, 0)),
    );
    let body = crate::deliver::body_for(&event);
    let now = OffsetDateTime::now_utc();
    let row = NewDelivery {
        id: Uuid::now_v7(),
        webhook_id: w.id,
        event_id: event.id(),
        event_type: event.kind().type_name(),
        body: body.clone(),
        created_at: now,
        next_attempt_at: None,
        trace: None,
    };
    let token = Uuid::new_v4();
    let lease = time::Duration::try_from(shared.config.lease).unwrap_or(time::Duration::minutes(5));
    shared
        .api()
        .enqueue_claimed(&row, token, now + lease)
        .await?;
    let exchange = crate::deliver::send(
        &shared,
        &w,
        row.id,
        row.event_id,
        row.event_type,
        String::from_utf8_lossy(&body).into_owned(),
        None,
    )
    .await;
    let record = AttemptRecord {
        delivery_id: row.id,
        webhook_id: w.id,
        claim_token: token,
        attempt: 1,
        started_at: exchange.started_at,
        duration_ms: exchange.duration.as_millis() as u64,
        status_code: exchange.status,
        error: exchange.error.clone(),
        outcome: if exchange.succeeded() {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::FailedOnce
        },
        disable_after_dead: shared.config.disable_after_dead,
    };
    shared.api().complete_attempt(&record).await?;
    let d = shared
        .api()
        .get_delivery(w.id, row.id)
        .await?
        .ok_or(WebhookError::NotFound("delivery"))?;
    Ok(Json(d).into_response())
}
