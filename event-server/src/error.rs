//! The host's HTTP error type: every failure is a JSON `{"error","message"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything the host's own routes can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed (bad JSON, invalid event).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong, naming the field or value.
        message: String,
    },
    /// Credentials missing or invalid.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// A dependency is not available now (worker stopped, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A dependency (database, worker) failed.
    #[error("{0}")]
    Internal(String),
    /// Start-up failed (configuration, database, bind).
    #[error("{0}")]
    Startup(String),
}

impl ServerError {
    /// A 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ServerError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServerError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ServerError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ServerError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServerError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ServerError::Internal(_) | ServerError::Startup(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
            }
        }
    }
}

impl From<event_core::Error> for ServerError {
    fn from(e: event_core::Error) -> Self {
        match e {
            event_core::Error::Unauthorized(m) => ServerError::Unauthorized(m),
            event_core::Error::Forbidden(m) => ServerError::Forbidden(m),
            event_core::Error::Provider(m) => ServerError::Internal(m),
            other => ServerError::BadRequest {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

/// The fallback for unknown routes: a JSON 404 like every other error.
pub async fn not_found(uri: axum::http::Uri) -> ServerError {
    ServerError::NotFound(format!("no route for {}", uri.path()))
}
