//! CORS for the configured browser origins (`ALLOWED_ORIGINS`).

use tower_http::cors::CorsLayer;

/// The layer the host applies when origins are configured.
#[cfg(feature = "sse")]
pub fn layer(origins: &[String]) -> CorsLayer {
    // The SSE crate's helper also allows the headers EventSource clients send
    // (`Last-Event-ID`, `X-Fortemi-Memory`, …).
    event_sse::cors_layer(origins).allow_methods([
        http::Method::GET,
        http::Method::POST,
        http::Method::PATCH,
        http::Method::DELETE,
        http::Method::OPTIONS,
    ])
}

/// The layer the host applies when origins are configured.
#[cfg(not(feature = "sse"))]
pub fn layer(origins: &[String]) -> CorsLayer {
    use tower_http::cors::AllowOrigin;
    // `*` means any origin here as for the WebSocket check (the
    // configuration refuses `*` mixed with others).
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o.trim()).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PATCH,
            http::Method::DELETE,
            http::Method::OPTIONS,
        ])
        .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE])
}
