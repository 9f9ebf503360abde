//! The CORS helper in front of the SSE routes.

use std::sync::Arc;

use event_core::{AllowAnonymous, ConnectionRegistry, EventBus};
use event_sse::{SseConfig, SseEndpoint, cors_layer};

use crate::common::{WAIT, install_provider};

#[tokio::test]
async fn preflight_allows_the_sse_headers_for_configured_origins_only() {
    install_provider();
    let sse = SseEndpoint::new(
        EventBus::default(),
        ConnectionRegistry::new(),
        Arc::new(AllowAnonymous),
        SseConfig::default(),
    );
    let app: axum::Router = sse.router().layer(cors_layer(["http://app.example"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{addr}/api/v1/events"),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "last-event-id,authorization,x-fortemi-memory,cache-control,content-type",
            )
            .send()
    };
    let ok = tokio::time::timeout(WAIT, preflight("http://app.example"))
        .await
        .unwrap()
        .unwrap();
    assert!(ok.status().is_success());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let allowed = ok.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in [
        "last-event-id",
        "authorization",
        "x-fortemi-memory",
        "cache-control",
        "content-type",
    ] {
        assert!(allowed.contains(h), "{h} missing from {allowed}");
    }
    let other = tokio::time::timeout(WAIT, preflight("http://evil.example"))
        .await
        .unwrap()
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
