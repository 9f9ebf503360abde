//! The error type of event-sse and its HTTP form.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a request to the SSE endpoints can be refused for. Each
/// variant maps to a status code and a JSON body `{"error","message"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A filter parameter (`events`, `types`, `entity_id`, `memory`) is empty,
    /// malformed or names unknown events.
    #[error("invalid `{param}` filter {value:?}: {reason}")]
    InvalidFilter {
        /// The parameter.
        param: &'static str,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Any other query parameter with a bad value (`format`, `heartbeat`,
    /// `limit`, `since`).
    #[error("invalid `{param}` value {value:?}: {reason}")]
    InvalidParameter {
        /// The parameter.
        param: &'static str,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Credentials missing or wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The principal may not see what it asked for.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A history cursor is no longer retained.
    #[error("the events after {0:?} are no longer retained")]
    CursorExpired(String),
    /// The server is shutting down and accepts no new streams.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The endpoint has [`SseConfig::max_connections`](crate::SseConfig::max_connections)
    /// streams open (the limit). Answered `503` with `Retry-After`.
    #[error("too many connections (limit {0})")]
    OverCapacity(usize),
    /// The query string could not be decoded.
    #[error("malformed query string: {0}")]
    MalformedQuery(String),
    /// A named consumer or group refused the connection (its
    /// [`ConsumerError`](event_core::ConsumerError) code and message), or
    /// the endpoint has no consumers (`consumers_unavailable`).
    #[error("{message}")]
    Consumer {
        /// The HTTP status (the consumer error's own).
        status: StatusCode,
        /// The code of the JSON body.
        code: &'static str,
        /// The consumer's message.
        message: String,
    },
}

impl SseError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            SseError::InvalidFilter { .. } => "invalid_filter",
            SseError::InvalidParameter { .. } => "invalid_parameter",
            SseError::Unauthorized(_) => "unauthorized",
            SseError::Forbidden(_) => "forbidden",
            SseError::CursorExpired(_) => "cursor_expired",
            SseError::ShuttingDown => "shutting_down",
            SseError::OverCapacity(_) => "too_many_connections",
            SseError::MalformedQuery(_) => "malformed_query",
            SseError::Consumer { code, .. } => code,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            SseError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            SseError::Forbidden(_) => StatusCode::FORBIDDEN,
            SseError::CursorExpired(_) => StatusCode::GONE,
            SseError::ShuttingDown | SseError::OverCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            SseError::Consumer { status, .. } => *status,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub(crate) fn param(param: &'static str, value: &str, reason: impl Into<String>) -> Self {
        SseError::InvalidParameter {
            param,
            value: truncate(value),
            reason: reason.into(),
        }
    }
}

/// The `Retry-After` of a `503` (seconds), the same as the WebSocket endpoint's.
const RETRY_AFTER_SECS: &str = "5";

/// Client-supplied values are echoed in errors; keep them short.
pub(crate) fn truncate(value: &str) -> String {
    const MAX: usize = 200;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

impl From<event_core::Error> for SseError {
    fn from(e: event_core::Error) -> Self {
        match e {
            event_core::Error::InvalidFilter {
                param,
                value,
                reason,
            } => SseError::InvalidFilter {
                param,
                value: truncate(&value),
                reason,
            },
            event_core::Error::Forbidden(m) => SseError::Forbidden(m),
            event_core::Error::Unauthorized(m) => SseError::Unauthorized(m),
            // An authenticator failing for another reason is still a refusal;
            // the detail is not shown to the client.
            other => {
                tracing::warn!(error = %other, "authenticator failed");
                SseError::Unauthorized("authentication failed".to_owned())
            }
        }
    }
}

impl IntoResponse for SseError {
    fn into_response(self) -> Response {
        let mut response: Response =
            event_core::http_error::json_error(self.status(), self.code(), &self);
        if matches!(self, SseError::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(self, SseError::OverCapacity(_) | SseError::ShuttingDown) {
            // As the WebSocket endpoint answers: come back in a few seconds.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
