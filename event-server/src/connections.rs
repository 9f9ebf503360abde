//! `GET /api/v1/connections` and `DELETE /api/v1/connections/{id}`: list and
//! kick WebSocket and SSE clients.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use event_core::{Authenticator, ConnectionInfo, ConnectionRegistry};
use serde::Deserialize;

use crate::auth::require_admin;
use crate::error::ServerError;

/// State of the connection routes.
#[derive(Clone)]
pub struct ConnectionsState {
    /// The shared registry.
    pub registry: ConnectionRegistry,
    /// Admin check.
    pub auth: Arc<dyn Authenticator>,
}

/// `?token=`
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    /// Alternative to the bearer header.
    pub token: Option<String>,
}

/// Lists open connections.
pub async fn list(
    State(state): State<ConnectionsState>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<ConnectionInfo>>, ServerError> {
    require_admin(&state.auth, &headers, q.token.as_deref()).await?;
    Ok(Json(state.registry.list()))
}

/// Asks a connection to close; 204, or 404 when it is not open.
pub async fn kick(
    State(state): State<ConnectionsState>,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ServerError> {
    require_admin(&state.auth, &headers, q.token.as_deref()).await?;
    let id: u64 = id.parse().map_err(|_| {
        ServerError::bad_request(
            "invalid_id",
            format!("connection id {id:?} is not a number"),
        )
    })?;
    if state.registry.disconnect(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ServerError::NotFound(format!("no open connection {id}")))
    }
}

/// The connection-management routes.
pub fn router<S: Clone + Send + Sync + 'static>(state: ConnectionsState) -> axum::Router<S> {
    axum::Router::new()
        .route("/api/v1/connections", axum::routing::get(list))
        .route("/api/v1/connections/{id}", axum::routing::delete(kick))
        .with_state(state)
}
