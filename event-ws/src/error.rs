//! The error type of event-ws: why an upgrade request was refused.
//!
//! Once a connection is upgraded, problems are reported with a close code
//! ([`close_code`](crate::close_code)) instead; before that, as an HTTP
//! response with a JSON body `{"error":"<code>","message":"…"}`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Why the endpoint refused a request before the WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// The request is not a valid WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    BadUpgrade(String),
    /// Credentials were missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// A filter parameter of the upgrade request is invalid (HTTP 400).
    #[error("{0}")]
    InvalidFilter(String),
    /// Another parameter of the upgrade request is invalid (HTTP 400
    /// `invalid_parameter`).
    #[error("invalid `{param}`: {message}")]
    InvalidParameter {
        /// The query parameter.
        param: &'static str,
        /// What is wrong, with the accepted range.
        message: String,
    },
    /// The principal may not connect, or the `Origin` is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The endpoint is at its connection limit.
    #[error("too many connections (limit {0})")]
    OverCapacity(usize),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The authenticator failed for another reason.
    #[error("authentication failed: {0}")]
    Internal(String),
}

impl WsError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            WsError::BadUpgrade(_)
            | WsError::InvalidFilter(_)
            | WsError::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            WsError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WsError::Forbidden(_) => StatusCode::FORBIDDEN,
            WsError::OverCapacity(_) | WsError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            WsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            WsError::BadUpgrade(_) => "bad_upgrade",
            WsError::InvalidFilter(_) => "invalid_filter",
            WsError::InvalidParameter { .. } => "invalid_parameter",
            WsError::Unauthorized(_) => "unauthorized",
            WsError::Forbidden(_) => "forbidden",
            WsError::OverCapacity(_) => "too_many_connections",
            WsError::ShuttingDown => "shutting_down",
            WsError::Internal(_) => "internal_error",
        }
    }
}

impl From<event_core::Error> for WsError {
    fn from(e: event_core::Error) -> Self {
        match e {
            event_core::Error::Unauthorized(m) => WsError::Unauthorized(m),
            event_core::Error::Forbidden(m) => WsError::Forbidden(m),
            other => WsError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for WsError {
    fn into_response(self) -> Response {
        let mut response: Response =
            event_core::http_error::json_error(self.status(), self.code(), &self);
        if let WsError::Unauthorized(_) = self {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        if let WsError::OverCapacity(_) | WsError::ShuttingDown = self {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}
