//! `GET /`: the operator's dashboard, a static page embedded in the binary,
//! and the static assets it loads (`/assets/<hash>/…`).
//!
//! No build step and no CDN. The page holds no data, so it and its assets
//! are served without credentials; everything it shows comes from the API
//! it calls with the operator's token (asked once, kept in
//! `sessionStorage`, sent as `Authorization: Bearer` or the WebSocket
//! `bearer.<token>` subprotocol, never in a URL):
//!
//! - the live stream: SSE read with `fetch` (`?format=envelope`, resumed with
//!   `Last-Event-ID`), the WebSocket as the fallback;
//! - the charts: [`stats_stream`] (`GET /api/v1/stats/stream`), the host's
//!   counters as JSON pushed every `STATS_STREAM_INTERVAL_MS` (one
//!   collection per interval however many pages read it), read with `fetch`
//!   like the event stream; [`stats`] (`GET /api/v1/stats`, the same object)
//!   polled once a second only when that stream cannot be opened;
//! - connections (`/api/v1/connections`), webhooks (`/api/v1/webhooks…`) and
//!   the demo routes.
//!
//! The page is sent with a strict `Content-Security-Policy`: scripts and
//! styles only from this origin (no inline code), connections only to this
//! origin, no frames, no forms posting anywhere.

pub mod assets;
pub mod stats;
pub mod stats_stream;

use axum::http::header;
use axum::response::IntoResponse;

/// The page's Content-Security-Policy: nothing inline, nothing from another
/// origin, not framable.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's HTML as written, with `{{ASSETS}}` where the assets' base path
/// goes (see [`page_html`]).
pub const DASHBOARD_TEMPLATE: &str = include_str!("../assets/dashboard/index.html");

/// The page's HTML with the assets' base path filled in (computed once).
pub fn page_html() -> &'static str {
    static HTML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HTML.get_or_init(|| DASHBOARD_TEMPLATE.replace("{{ASSETS}}", assets::base()))
}

/// Serves the dashboard page (`no-cache`: it names the current assets).
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page_html(),
    )
}

/// `GET /` and the assets, without credentials (they hold no data).
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    assets::router().route("/", axum::routing::get(page))
}
