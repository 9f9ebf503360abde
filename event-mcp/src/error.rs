//! The error type of event-mcp and its two forms: an HTTP refusal (before a
//! request reaches the MCP session) and an MCP error (inside one).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::ErrorData;

/// Everything a request to `/mcp` can be refused for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
    /// Credentials missing or wrong (`401`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The principal may not do this (a client token calling an admin tool,
    /// another principal's session).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// [`McpConfig::max_sessions`](crate::McpConfig::max_sessions) sessions
    /// are open (`503`, `Retry-After`).
    #[error("too many MCP sessions (limit {0}, MCP_MAX_SESSIONS)")]
    TooManySessions(usize),
    /// The server is shutting down (`503`).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request body is over [`McpConfig::max_body_bytes`](crate::McpConfig::max_body_bytes) (`413`).
    #[error("the request body is over the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The body did not arrive within [`McpConfig::body_timeout`](crate::McpConfig::body_timeout) (`408`).
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// The body could not be read.
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    /// A tool argument or resource URI is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such resource.
    #[error("no such resource: {0}")]
    UnknownResource(String),
    /// A per-session limit was hit.
    #[error("{0}")]
    Limit(String),
    /// The session has been closed (kicked, shut down).
    #[error("the session is closed")]
    SessionClosed,
    /// Something that should not fail did.
    #[error("internal error: {0}")]
    Internal(String),
}

impl McpError {
    /// The machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            McpError::Unauthorized(_) => "unauthorized",
            McpError::Forbidden(_) => "forbidden",
            McpError::TooManySessions(_) => "too_many_sessions",
            McpError::ShuttingDown => "shutting_down",
            McpError::BodyTooLarge(_) => "payload_too_large",
            McpError::BodyTimeout(_) => "request_timeout",
            McpError::BodyUnreadable(_) => "invalid_body",
            McpError::InvalidArgument(_) => "invalid_argument",
            McpError::UnknownResource(_) => "not_found",
            McpError::Limit(_) => "limit",
            McpError::SessionClosed => "session_closed",
            McpError::Internal(_) => "internal_error",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            McpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            McpError::Forbidden(_) => StatusCode::FORBIDDEN,
            McpError::TooManySessions(_) | McpError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            McpError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            McpError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            McpError::BodyUnreadable(_) | McpError::InvalidArgument(_) | McpError::Limit(_) => {
                StatusCode::BAD_REQUEST
            }
            McpError::UnknownResource(_) | McpError::SessionClosed => StatusCode::NOT_FOUND,
            McpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<event_core::Error> for McpError {
    fn from(e: event_core::Error) -> Self {
        match e {
            event_core::Error::Unauthorized(m) => McpError::Unauthorized(m),
            event_core::Error::Forbidden(m) => McpError::Forbidden(m),
            event_core::Error::Provider(m) => McpError::Internal(m),
            other => McpError::InvalidArgument(other.to_string()),
        }
    }
}

impl From<McpError> for ErrorData {
    fn from(e: McpError) -> Self {
        match &e {
            McpError::UnknownResource(_) => ErrorData::resource_not_found(e.to_string(), None),
            McpError::Internal(_) => ErrorData::internal_error(e.to_string(), None),
            McpError::SessionClosed | McpError::Forbidden(_) | McpError::Unauthorized(_) => {
                ErrorData::invalid_request(e.to_string(), None)
            }
            _ => ErrorData::invalid_params(e.to_string(), None),
        }
    }
}

/// The HTTP form: `{"error": code, "message": …}` like the host's other
/// routes.
impl IntoResponse for McpError {
    fn into_response(self) -> Response {
        let mut response: Response =
            event_core::http_error::json_error(self.status(), self.code(), &self);
        let headers = response.headers_mut();
        match self {
            McpError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            McpError::TooManySessions(_) | McpError::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            McpError::BodyTooLarge(_) | McpError::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
