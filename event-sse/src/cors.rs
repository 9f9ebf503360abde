//! CORS for browser clients of the SSE endpoints.
//!
//! `EventSource` in a browser sends a simple GET, but G2 clients built on
//! `fetch` add `Authorization`, `Last-Event-ID` and `X-Fortemi-Memory`, which
//! makes the request preflighted. [`cors_layer`] allows exactly those headers
//! for the configured origins.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The request headers SSE clients send.
pub const ALLOWED_HEADERS: [&str; 5] = [
    "last-event-id",
    "authorization",
    "x-fortemi-memory",
    "cache-control",
    "content-type",
];

/// A CORS layer for the SSE routes: `GET`/`OPTIONS` from `origins` (exact
/// origins such as `https://app.example.com`; `*` allows any origin), with
/// the headers of [`ALLOWED_HEADERS`]. Origins that are not valid header
/// values are skipped with a warning.
///
/// ```
/// let layer = event_sse::cors_layer(["http://localhost:5173"]);
/// let app: axum::Router = axum::Router::new().layer(layer);
/// # let _ = app;
/// ```
pub fn cors_layer<I, O>(origins: I) -> CorsLayer
where
    I: IntoIterator<Item = O>,
    O: AsRef<str>,
{
    let mut any = false;
    let mut list = Vec::new();
    for origin in origins {
        let origin = origin.as_ref().trim();
        if origin == "*" {
            any = true;
        } else {
            match HeaderValue::from_str(origin) {
                Ok(v) => list.push(v),
                Err(_) => tracing::warn!(origin, "ignoring an invalid CORS origin"),
            }
        }
    }
    let allow_origin = if any {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(list)
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::OPTIONS])
        .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers([header::CONTENT_TYPE])
}
