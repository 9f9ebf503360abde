//! `GET /`: the live dashboard, one static page embedded in the binary.
//!
//! No build step and no CDN: the page speaks the same protocol as the HotM UI
//! (SSE with `Last-Event-ID` resume, WebSocket fallback) against this server.

use axum::http::header;
use axum::response::IntoResponse;

/// The page's HTML.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Serves the dashboard.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD_HTML,
    )
}
