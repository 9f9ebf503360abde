//! The consumers API (feature `log`): `GET /api/v1/consumers` and `DELETE
//! /api/v1/consumers/{name}` (admin), `POST /api/v1/consumers/{name}/ack`
//! (a client token: how an SSE consumer in `ack=explicit` mode
//! acknowledges).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use event_core::{Consumers, Cursor};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ServerError;

/// Most acknowledgements one request may carry.
pub const MAX_ACKS: usize = 1_000;
/// Largest ack request body, in bytes.
pub const MAX_ACK_BODY_BYTES: usize = 64 * 1024;

/// `{"seq": N}`, `{"event_id": "…"}`, or lists of either (`seqs`,
/// `event_ids`), in any combination.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    seq: Option<u64>,
    #[serde(default)]
    seqs: Vec<u64>,
    event_id: Option<event_core::Uuid>,
    #[serde(default)]
    event_ids: Vec<event_core::Uuid>,
}

impl AckBody {
    fn cursors(self) -> Vec<Cursor> {
        self.seq
            .into_iter()
            .chain(self.seqs)
            .map(Cursor::Seq)
            .chain(
                self.event_id
                    .into_iter()
                    .chain(self.event_ids)
                    .map(Cursor::Id),
            )
            .collect()
    }
}

/// The routes' state: the consumers, or `None` when the log is off.
type Shared = Option<Consumers>;

fn running(consumers: Shared) -> Result<Consumers, ServerError> {
    consumers.ok_or(ServerError::LogOff("named consumers"))
}

async fn list(State(consumers): State<Shared>) -> Result<Json<Value>, ServerError> {
    Ok(Json(
        json!({ "consumers": running(consumers)?.list().await? }),
    ))
}

async fn remove(
    State(consumers): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ServerError> {
    running(consumers)?.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn ack(
    State(consumers): State<Shared>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ServerError> {
    let consumers = running(consumers)?;
    let body: AckBody = serde_json::from_slice(&body).map_err(|e| {
        ServerError::bad_request(
            "invalid_json",
            format!("expected {{\"seq\": N}}, {{\"seqs\": [..]}}, {{\"event_id\": \"..\"}} or {{\"event_ids\": [..]}}: {e}"),
        )
    })?;
    let acks = body.cursors();
    if acks.is_empty() {
        return Err(ServerError::bad_request(
            "invalid_ack",
            "name at least one event (`seq`, `seqs`, `event_id` or `event_ids`)",
        ));
    }
    if acks.len() > MAX_ACKS {
        return Err(ServerError::bad_request(
            "too_many_acks",
            format!("at most {MAX_ACKS} acknowledgements per request"),
        ));
    }
    let acked = consumers.ack(&name, acks).await?;
    Ok(Json(json!({ "acked": acked })))
}

/// The admin routes (list, delete); without consumers (the log is off)
/// they answer `410 log_off`.
pub fn admin_router(consumers: Option<Consumers>) -> Router {
    Router::new()
        .route("/api/v1/consumers", get(list))
        .route("/api/v1/consumers/{name}", delete(remove))
        .with_state(consumers)
}

/// The client route (ack); mount it behind a body limit.
pub fn ack_router(consumers: Option<Consumers>) -> Router {
    Router::new()
        .route("/api/v1/consumers/{name}/ack", post(ack))
        .with_state(consumers)
}
