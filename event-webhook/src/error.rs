//! The one error type of this crate.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in event-webhook.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A request body or query could not be parsed (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// A field failed validation (HTTP 422). The message names the field.
    #[error("`{field}`: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No webhook or delivery with that id (HTTP 404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// Credentials missing or wrong (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The principal is not an administrator (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// A target address is not allowed (SSRF guard).
    #[error("target address refused: {0}")]
    Refused(String),
    /// The database URL is not one this build supports.
    #[error("unsupported database URL: {0}")]
    UnsupportedDatabase(String),
    /// A database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
    /// Data in the store is not what this crate wrote.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// As many webhooks as `max_webhooks` allows are registered (HTTP 409).
    #[error("at most {0} webhooks may be registered; delete one first")]
    TooManyWebhooks(usize),
    /// A request body is larger than the route accepts (HTTP 413); the
    /// limit in bytes.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// A webhook secret key (`WEBHOOK_SECRET_KEY`) is not base64 of 32
    /// bytes. Never contains the key.
    #[error("invalid webhook secret key (expected base64 of 32 bytes): {reason}")]
    InvalidSecretKey {
        /// What is wrong with it.
        reason: String,
        /// The base64 error, when that was the problem.
        #[source]
        source: Option<base64::DecodeError>,
    },
    /// A stored webhook secret cannot be opened with the configured keys
    /// (see [`secret_key`](crate::secret_key)). Names the webhook and the
    /// key id, never the secret.
    #[error("the stored secret of webhook {webhook_id} cannot be decrypted: {reason}")]
    SecretUndecryptable {
        /// The webhook whose secret it is.
        webhook_id: uuid::Uuid,
        /// Which key was needed and what failed.
        reason: String,
        /// The AEAD error, when decryption itself failed.
        #[source]
        source: Option<chacha20poly1305::Error>,
    },
    /// The SQLite database file's permissions could not be restricted.
    #[error("database file {path}: {what}")]
    DatabaseFile {
        /// The file.
        path: String,
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand result type.
pub type Result<T, E = WebhookError> = std::result::Result<T, E>;

impl WebhookError {
    /// An [`Invalid`](WebhookError::Invalid) error.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        WebhookError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The stable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::BadRequest(_) => "bad_request",
            WebhookError::Invalid { .. } => "validation_error",
            WebhookError::NotFound(_) => "not_found",
            WebhookError::Conflict(_) => "conflict",
            WebhookError::TooManyWebhooks(_) => "too_many_webhooks",
            WebhookError::Unauthorized(_) => "unauthorized",
            WebhookError::Forbidden(_) => "forbidden",
            WebhookError::Refused(_) => "url_not_allowed",
            WebhookError::UnsupportedDatabase(_) => "unsupported_database",
            WebhookError::PayloadTooLarge(_) => "payload_too_large",
            WebhookError::InvalidSecretKey { .. } => "invalid_secret_key",
            WebhookError::Database(_)
            | WebhookError::Migrate(_)
            | WebhookError::Client(_)
            | WebhookError::Corrupt(_)
            | WebhookError::SecretUndecryptable { .. }
            | WebhookError::DatabaseFile { .. } => "internal_error",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebhookError::Invalid { .. } | WebhookError::Refused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            WebhookError::NotFound(_) => StatusCode::NOT_FOUND,
            WebhookError::Conflict(_) | WebhookError::TooManyWebhooks(_) => StatusCode::CONFLICT,
            WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebhookError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebhookError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        // Database and client details of a 500 stay in the log.
        event_core::http_error::json_error(self.status(), self.code(), &self)
    }
}
