//! OTLP trace export (feature `otlp`) to a real HTTP receiver on 127.0.0.1:
//! spans reach it as OTLP/HTTP protobuf, carrying the event's fields.

#![cfg(feature = "otlp")]
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use event_core::{EventBus, EventMeta, QueueStatus, Uuid};
use event_telemetry::spans::webhook_attempt_span;
use event_telemetry::{LogCapture, TelemetryConfig, init_with_writer};
use tokio::sync::mpsc;

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn spans_are_exported_over_otlp_http() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
    let router = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send((content_type, body));
                ""
            }
        }),
    );
    let addr = rt.block_on(common::serve(router));

    let config = TelemetryConfig {
        filter: Some("info".into()),
        otlp_endpoint: Some(format!("http://{addr}/v1/traces")),
        metrics: false,
        ..TelemetryConfig::default()
    };
    let telemetry = init_with_writer(config, LogCapture::new()).expect("init");

    let corr = Uuid::now_v7();
    let bus = EventBus::default();
    let event = bus.publish_with(
        QueueStatus::new(1, 0),
        EventMeta::default().correlation(corr),
    );
    {
        let span = webhook_attempt_span(&event, "ep_otlp", 1);
        let _entered = span.enter();
        span.record("webhook.outcome", "success");
    }
    telemetry.shutdown().expect("flush");

    let (content_type, body) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), rx.recv()).await })
        .expect("an export within 20 s")
        .expect("channel open");
    assert_eq!(content_type, "application/x-protobuf");
    assert!(contains(&body, "webhook.attempt"));
    assert!(contains(&body, "event.correlation_id"));
    assert!(contains(&body, &corr.to_string()));
    assert!(contains(&body, "ep_otlp"));
}
