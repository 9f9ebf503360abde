//! `/health` for builds without the `telemetry` feature.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use event_core::{ConnectionRegistry, Transport};
use serde_json::{Value, json};

use crate::db::Db;

/// State of the plain health route.
#[derive(Clone, Debug)]
pub struct PlainHealth {
    /// Connection counts come from here.
    pub registry: ConnectionRegistry,
    /// Checked with a ping.
    pub db: Db,
}

/// `200` with component status and connection counts, `503` when the
/// database does not answer: the shape of `event-telemetry`'s `/health`
/// (`components.<name>.status`), so a client reads every build alike.
pub async fn plain(State(state): State<PlainHealth>) -> (StatusCode, Json<Value>) {
    let db = state.db.ping().await;
    let status = if db.is_ok() { "ok" } else { "down" };
    let code = if db.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": status,
        "components": {
            "database": match &db {
                Ok(()) => json!({"status": "up"}),
                Err(e) => json!({"status": "down", "detail": e.to_string()}),
            }
        },
        "connections": {
            "ws": state.registry.count(Transport::WebSocket),
            "sse": state.registry.count(Transport::Sse),
            "total": state.registry.total(),
        }
    });
    (code, Json(body))
}
