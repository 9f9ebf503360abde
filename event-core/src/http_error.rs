//! The one JSON error answer of every HTTP route in the workspace:
//! `{"error": "<code>", "message": "…"}` with `Content-Type:
//! application/json`.
//!
//! Each crate keeps its own error enum (its codes, statuses and extra
//! headers such as `Retry-After`) and renders the body here, so the shape
//! and the rule below are written once.
//!
//! **Server faults stay in the log.** For a `5xx` other than `503` the
//! message may carry a database, file or library detail: the client gets
//! `internal error` and a request id (also in the `x-request-id` header),
//! and the log gets the detail under that id. `503` answers are the
//! server's own words about its state (over capacity, shutting down) and
//! are sent as written.
//!
//! ```
//! use http::StatusCode;
//!
//! let res: http::Response<bytes::Bytes> =
//!     event_core::http_error::json_error(StatusCode::NOT_FOUND, "not_found", "no such webhook");
//! assert_eq!(res.status(), 404);
//! assert_eq!(&res.body()[..], br#"{"error":"not_found","message":"no such webhook"}"#);
//!
//! let res: http::Response<bytes::Bytes> = event_core::http_error::json_error(
//!     StatusCode::INTERNAL_SERVER_ERROR,
//!     "internal_error",
//!     "database disk image is malformed",
//! );
//! let id = res.headers()["x-request-id"].to_str().unwrap();
//! let body = std::str::from_utf8(res.body()).unwrap();
//! assert!(!body.contains("malformed") && body.contains(id));
//! ```

use std::fmt::Display;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};

/// The header that carries the id a hidden server fault is logged under.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A `status` response with the body `{"error": code, "message": message}`.
///
/// For a `5xx` other than `503` the message is logged (at `error`, with
/// `code` and a fresh `request_id`) and replaced by `internal error
/// (request id …)`; see the [module docs](self).
pub fn json_error<B: From<Bytes>>(
    status: StatusCode,
    code: &str,
    message: impl Display,
) -> Response<B> {
    let hidden = status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE;
    let (message, request_id) = if hidden {
        let id = format!("{:016x}", rand::random::<u64>());
        tracing::error!(request_id = %id, code, error = %message, "request failed");
        (
            format!("internal error (request id {id}; the server log has the details)"),
            Some(id),
        )
    } else {
        (message.to_string(), None)
    };
    let body = serde_json::json!({ "error": code, "message": message });
    // A `Value` of two strings always serializes.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(REQUEST_ID, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(res: &Response<Bytes>) -> serde_json::Value {
        serde_json::from_slice(res.body()).expect("JSON body")
    }

    #[test]
    fn client_errors_and_503_keep_their_message() {
        for status in [StatusCode::BAD_REQUEST, StatusCode::SERVICE_UNAVAILABLE] {
            let res: Response<Bytes> = json_error(status, "c", "limit 3");
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
            assert!(!res.headers().contains_key(REQUEST_ID));
            assert_eq!(
                body(&res),
                serde_json::json!({"error": "c", "message": "limit 3"})
            );
        }
    }

    #[test]
    fn server_faults_send_a_request_id_instead_of_the_detail() {
        for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY] {
            let res: Response<Bytes> = json_error(status, "internal_error", "secret path /x");
            let id = res.headers()[REQUEST_ID]
                .to_str()
                .expect("ascii")
                .to_owned();
            assert_eq!(id.len(), 16);
            let body = body(&res);
            assert_eq!(body["error"], "internal_error");
            let message = body["message"].as_str().expect("message");
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains(&id), "{message}");
        }
    }
}
