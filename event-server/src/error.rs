//! The host's HTTP error type: every failure is a JSON `{"error","message"}`.

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
    /// The request body (or one event in it) is over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// An event is larger than `EVENT_MAX_BYTES`; nothing of the request was
    /// published.
    #[error("{0}")]
    EventTooLarge(String),
    /// A mutating request without `Content-Type: application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A limit on the rate or on queued work was hit; try again later.
    #[error("{message}")]
    TooManyRequests {
        /// What was hit, naming the setting.
        message: String,
        /// The `Retry-After` the client gets, in seconds.
        retry_after_secs: u64,
    },
    /// The request body did not arrive within `HTTP_BODY_TIMEOUT_SECS`; the
    /// connection is closed.
    #[error("{0}")]
    BodyTimeout(String),
    /// The `Host` or `Origin` of the request is not one this server answers
    /// (DNS rebinding, cross-site requests in anonymous mode).
    #[error("{message}")]
    Refused {
        /// Machine-readable code (`host_not_allowed`, `origin_not_allowed`).
        code: &'static str,
        /// What was refused and which setting allows it.
        message: String,
    },
    /// Conflicts with a request in progress (an idempotency key in flight).
    #[error("{message}")]
    Conflict {
        /// Machine-readable code.
        code: &'static str,
        /// What conflicts.
        message: String,
    },
    /// Well-formed but not acceptable (a reused idempotency key).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The event log did not confirm the commit within
    /// `EVENT_LOG_COMMIT_TIMEOUT_MS` (the events were published and stay
    /// queued for the log) or could not take the events: `503
    /// log_unavailable`.
    #[error("{0}")]
    LogUnavailable(#[source] event_core::LogError),
    /// In cluster mode, JetStream did not acknowledge a publish request's
    /// events within `NATS_PUBLISH_TIMEOUT_MS`, or NATS is unreachable:
    /// `503 nats_unavailable`.
    #[error("{0}")]
    NatsUnavailable(#[source] event_core::Error),
    /// The route needs the event log, which is off (`EVENT_LOG=off`):
    /// `410 log_off`.
    #[error("the event log is off on this server (EVENT_LOG=off): {0} needs it")]
    LogOff(&'static str),
    /// A named consumer refused or failed (its code and status).
    #[error("{0}")]
    Consumer(#[from] event_core::ConsumerError),
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
            ServerError::LogUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
            ServerError::NatsUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "nats_unavailable")
            }
            ServerError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ServerError::EventTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "event_too_large"),
            ServerError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ServerError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ServerError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ServerError::Refused { code, .. } => (StatusCode::FORBIDDEN, code),
            ServerError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ServerError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ServerError::Consumer(e) => (e.http_status(), e.code()),
            ServerError::LogOff(_) => (StatusCode::GONE, "log_off"),
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
            e @ (event_core::Error::Unstored(_) | event_core::Error::AckTimeout(_)) => {
                ServerError::NatsUnavailable(e)
            }
            e @ event_core::Error::EventTooLarge { .. } => ServerError::EventTooLarge(format!(
                "{e} (EVENT_MAX_BYTES); nothing of this request was published"
            )),
            other => ServerError::BadRequest {
                code: other.code(),
                message: other.to_string(),
            },
        }
    }
}

impl From<event_core::LogError> for ServerError {
    fn from(e: event_core::LogError) -> Self {
        match e {
            event_core::LogError::Refused(e) => e.into(),
            other => ServerError::LogUnavailable(other),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // An internal error's detail is logged under a request id, not sent.
        let mut response: Response = event_core::http_error::json_error(status, code, &self);
        match &self {
            ServerError::TooManyRequests {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, (*retry_after_secs).into());
            }
            // The rest of the body may still be on its way (or never come):
            // the connection cannot be reused.
            ServerError::BodyTimeout(_) | ServerError::TooLarge(_) => {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            _ => {}
        }
        response
    }
}

/// The fallback for unknown routes: a JSON 404 like every other error.
pub async fn not_found(uri: axum::http::Uri) -> ServerError {
    ServerError::NotFound(format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn answer(error: ServerError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = serde_json::from_slice(&bytes).expect("JSON body");
        (parts.status, parts.headers, json)
    }

    #[tokio::test]
    async fn an_internal_error_is_logged_under_a_request_id_not_sent() {
        let (status, headers, body) =
            answer(ServerError::Internal("disk /var/lib/secret is full".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"], "internal_error");
        let message = body["message"].as_str().expect("message");
        assert!(!message.contains("secret"), "{message}");
        let id = headers["x-request-id"].to_str().expect("ascii");
        assert!(message.contains(id), "{message}");
    }

    #[tokio::test]
    async fn client_errors_and_unavailable_name_what_is_wrong() {
        let (status, headers, body) = answer(ServerError::BadRequest {
            code: "invalid_event",
            message: "`type` is missing".into(),
        })
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(
            body,
            serde_json::json!({"error": "invalid_event", "message": "`type` is missing"})
        );
        let (status, _, body) = answer(ServerError::Unavailable("the worker stopped".into())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["message"], "the worker stopped");
    }
}
