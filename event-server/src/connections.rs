//! The connections API: `GET /api/v1/connections` and `DELETE
//! /api/v1/connections/{id}` list and close WebSocket and SSE clients
//! (admin); `POST /api/v1/connections`, `GET
//! /api/v1/connections/{id}/status` and `DELETE` of a slot manage
//! connection slots ([`crate::slots`]; any token, each principal its own).
//!
//! A direct connection has a number for its id; a slot has `conn_…`. Both
//! answer `/status` in the same shape.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Extension, Json};
use event_core::{ConnectionInfo, ConnectionRegistry, Principal};

use crate::error::ServerError;
use crate::slots::{SlotOptions, SlotStatus, Slots};

/// Largest `POST /api/v1/connections` body.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// State of the connection routes.
#[derive(Clone)]
pub struct ConnectionsState {
    /// The shared registry.
    pub registry: ConnectionRegistry,
    /// The connection slots.
    pub slots: Slots,
}

fn admin_only(principal: &Principal) -> Result<(), ServerError> {
    if principal.is_admin() {
        Ok(())
    } else {
        Err(ServerError::Forbidden(
            "this route needs the admin token".to_owned(),
        ))
    }
}

/// Lists open connections (admin), slot connections among them.
pub async fn list(
    State(state): State<ConnectionsState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Vec<ConnectionInfo>>, ServerError> {
    admin_only(&principal)?;
    Ok(Json(state.registry.list()))
}

/// Creates a connection slot: `201` with its status and stream URL.
pub async fn create(
    State(state): State<ConnectionsState>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<SlotStatus>), ServerError> {
    let options: SlotOptions = if body.iter().all(u8::is_ascii_whitespace) {
        SlotOptions::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServerError::bad_request("invalid_json", e.to_string()))?
    };
    let status = state.slots.create(&principal, options)?;
    Ok((StatusCode::CREATED, Json(status)))
}

/// A slot's status (its owner or an admin), or a direct connection's
/// (admin).
pub async fn status(
    State(state): State<ConnectionsState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SlotStatus>, ServerError> {
    if let Ok(number) = id.parse::<u64>() {
        admin_only(&principal)?;
        return state
            .registry
            .get(number)
            .map(|info| Json(SlotStatus::of_connection(&info)))
            .ok_or_else(|| ServerError::NotFound(format!("no open connection {id}")));
    }
    state
        .slots
        .status(&id, &principal)
        .map(Json)
        .ok_or_else(|| ServerError::NotFound(format!("no connection slot {id:?}")))
}

/// Closes a connection: by number (admin; `204`, or `404` when it is not
/// open), or a slot (its owner or an admin): the slot is deleted, its
/// ticket stops working and its connection closes.
pub async fn close(
    State(state): State<ConnectionsState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServerError> {
    if let Ok(number) = id.parse::<u64>() {
        admin_only(&principal)?;
        return if state.registry.disconnect(number) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ServerError::NotFound(format!("no open connection {id}")))
        };
    }
    if !id.starts_with("conn_") {
        return Err(ServerError::bad_request(
            "invalid_id",
            format!("connection id {id:?} is neither a number nor a slot id (conn_…)"),
        ));
    }
    if state.slots.delete(&id, &principal) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ServerError::NotFound(format!("no connection slot {id:?}")))
    }
}

/// The connection-management routes (behind the host's client guard; the
/// admin-only ones check the principal themselves).
pub fn router<S: Clone + Send + Sync + 'static>(state: ConnectionsState) -> axum::Router<S> {
    axum::Router::new()
        .route("/api/v1/connections", get(list).post(create))
        .route("/api/v1/connections/{id}", delete(close))
        .route("/api/v1/connections/{id}/status", get(status))
        .with_state(state)
}
