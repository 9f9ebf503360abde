//! `GET /api/v1/connections/{id}/stream?ticket=…`: opens a slot's stream
//! through the transport's own route.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use tower::ServiceExt as _;

use super::{Slots, StatusError, StreamKind};
use crate::error::ServerError;

/// Most bytes of a transport's refusal read to learn its `error` code.
const MAX_REFUSAL_BYTES: usize = 8 * 1024;

/// The stream route's state: the slots and the transports' routers.
#[derive(Clone)]
pub struct StreamRoutes {
    /// The slot store.
    pub slots: Slots,
    /// The SSE transport's router, when the build has it.
    pub sse: Option<Router>,
    /// The WebSocket transport's router, when the build has it.
    pub ws: Option<Router>,
}

/// The route. It takes no token: the ticket is the credential.
pub fn router(state: StreamRoutes) -> Router {
    Router::new()
        .route("/api/v1/connections/{id}/stream", get(open))
        .with_state(state)
}

async fn open(
    State(state): State<StreamRoutes>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match forward(&state, &id, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward(
    state: &StreamRoutes,
    id: &str,
    request: Request,
) -> Result<Response, ServerError> {
    let ticket = axum::extract::Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.get("ticket").cloned())
        .ok_or_else(|| {
            ServerError::Unauthorized("the stream URL needs its `ticket` parameter".to_owned())
        })?;
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let admission = state.slots.admit(id, &ticket, upgrade)?;
    let (router, path) = match admission.transport {
        StreamKind::Sse => (state.sse.clone(), "/api/v1/events"),
        StreamKind::Ws => (state.ws.clone(), "/api/v1/ws"),
    };
    let Some(router) = router else {
        state.slots.answered(id, &admission.grant, None);
        return Err(ServerError::NotFound(
            "this build has no such transport".to_owned(),
        ));
    };
    let (mut parts, body) = request.into_parts();
    let uri = match admission.query.as_str() {
        "" => path.to_owned(),
        q => format!("{path}?{q}"),
    };
    parts.uri = uri
        .parse()
        .map_err(|e| ServerError::Internal(format!("slot query: {e}")))?;
    // The slot's options and principal are the stream's; nothing the
    // opener sends may widen or replace them.
    for name in [header::AUTHORIZATION, header::COOKIE] {
        parts.headers.remove(name);
    }
    parts.headers.remove("x-fortemi-memory");
    if !admission.compression {
        parts.headers.remove(header::ACCEPT_ENCODING);
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    let bearer = HeaderValue::from_str(&format!("Bearer {}", admission.grant))
        .map_err(|e| ServerError::Internal(format!("grant header: {e}")))?;
    parts.headers.insert(header::AUTHORIZATION, bearer);
    let response: Result<Response, Infallible> =
        router.oneshot(Request::from_parts(parts, body)).await;
    let Ok(response) = response;
    let status = response.status();
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
        state.slots.answered(id, &admission.grant, None);
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_REFUSAL_BYTES)
        .await
        .unwrap_or_default();
    let refusal = serde_json::from_slice::<StatusError>(&bytes).unwrap_or_else(|_| StatusError {
        error: "refused".to_owned(),
        message: format!("the transport answered {status}"),
    });
    state.slots.answered(id, &admission.grant, Some(refusal));
    Ok(Response::from_parts(parts, Body::from(bytes)))
}
