//! The dashboard's static files, embedded with `include_bytes!` and served
//! from memory under `/assets/<hash>/…`, where `<hash>` is a digest of all
//! of them: a new build with changed files gets new URLs, so the files can
//! be cached for a year (`immutable`) while the page itself is `no-cache`.
//!
//! Vendored: uPlot 1.6.32 (MIT, © Leon Sorokin), from the npm package
//! `uplot`; its licence is served beside it (`uplot/LICENSE`).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its path below the assets' base (`app/main.js`).
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! asset {
    ($name:literal, $file:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!("../../assets/", $file)),
        }
    };
}

/// Every file the page loads.
pub const ASSETS: &[Asset] = &[
    asset!("dashboard.css", "dashboard/dashboard.css", CSS),
    asset!("app/main.js", "dashboard/app/main.js", JS),
    asset!("app/api.js", "dashboard/app/api.js", JS),
    asset!("app/stream.js", "dashboard/app/stream.js", JS),
    asset!("app/sse.js", "dashboard/app/sse.js", JS),
    asset!("app/stats.js", "dashboard/app/stats.js", JS),
    asset!("app/charts.js", "dashboard/app/charts.js", JS),
    asset!("app/jobs.js", "dashboard/app/jobs.js", JS),
    asset!("app/connections.js", "dashboard/app/connections.js", JS),
    asset!("app/webhooks.js", "dashboard/app/webhooks.js", JS),
    asset!("app/inspector.js", "dashboard/app/inspector.js", JS),
    asset!("app/table.js", "dashboard/app/table.js", JS),
    asset!(
        "uplot/uPlot.iife.min.js",
        "vendor/uplot/uPlot.iife.min.js",
        JS
    ),
    asset!("uplot/uPlot.min.css", "vendor/uplot/uPlot.min.css", CSS),
    asset!("uplot/LICENSE", "vendor/uplot/LICENSE", TEXT),
];

/// `/assets/<hash>`: where the files are served (computed once; the hash is
/// FNV-1a over every name and byte, for cache busting, not security).
pub fn base() -> &'static str {
    static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for asset in ASSETS {
            for byte in asset.name.bytes().chain(asset.bytes.iter().copied()) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("/assets/{:012x}", hash >> 16)
    })
}

/// One route per asset, each answered from memory with a year-long,
/// `immutable` cache header.
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let mut router = axum::Router::new();
    for asset in ASSETS {
        let Asset {
            content_type,
            bytes,
            ..
        } = *asset;
        router = router.route(
            &format!("{}/{}", base(), asset.name),
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    bytes,
                )
                    .into_response()
            }),
        );
    }
    router
}
