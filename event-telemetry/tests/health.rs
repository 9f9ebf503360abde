//! `GET /health` over real HTTP: components, timeouts, connection counts.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{get, serve};
use event_core::{ConnectionRegistry, Principal, Transport, async_trait};
use event_telemetry::{ComponentStatus, Health, HealthCheck};
use serde_json::{Value, json};

struct NeverAnswers;

#[async_trait]
impl HealthCheck for NeverAnswers {
    async fn check(&self) -> ComponentStatus {
        std::future::pending().await
    }
}

#[tokio::test]
async fn health_reports_components_and_connection_counts() {
    let registry = ConnectionRegistry::new();
    let health = Health::new(registry.clone())
        .component("bus", ComponentStatus::up)
        .component("webhooks", || ComponentStatus::degraded("backlog 1200"));
    let addr = serve(health.router()).await;

    let p = Principal::anonymous();
    let ws1 = registry.register(Transport::WebSocket, None, &p);
    let _ws2 = registry.register(Transport::WebSocket, None, &p);
    let _sse = registry.register(Transport::Sse, None, &p);

    let (status, content_type, body) = get(addr, "/health").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["components"]["bus"], json!({"status": "up"}));
    assert_eq!(
        body["components"]["webhooks"],
        json!({"status": "degraded", "detail": "backlog 1200"})
    );
    assert_eq!(body["connections"], json!({"ws": 2, "sse": 1, "total": 3}));

    drop(ws1);
    let (_, _, body) = get(addr, "/health").await;
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["connections"], json!({"ws": 1, "sse": 1, "total": 2}));
}

#[tokio::test]
async fn all_up_is_ok_and_a_hanging_check_times_out_as_down() {
    let ok = Health::new(ConnectionRegistry::new()).component("bus", ComponentStatus::up);
    let report = ok.report().await;
    assert_eq!(report.status, "ok");
    assert_eq!(report.connections.total, 0);

    let hanging = Health::new(ConnectionRegistry::new())
        .component("bus", ComponentStatus::up)
        .component("db", NeverAnswers)
        .check_timeout(Duration::from_millis(50));
    let addr = serve(hanging.router()).await;
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), get(addr, "/health"))
        .await
        .expect("health answered despite the hanging check");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(
        body["components"]["db"],
        json!({"status": "down", "detail": "timeout"})
    );
    assert_eq!(body["components"]["bus"], json!({"status": "up"}));
}
