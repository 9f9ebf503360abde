//! Delivery outcomes are counted under the docs/protocol.md §6 names.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{client, eventually, fast_config, serve_sqlite};
use event_core::{EventBus, JobQueued, SinkRunner};
use event_test_support::{install, render, series_value};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Deliveries counted with `status` in `text`; 0 before the first.
fn deliveries(text: &str, status: &str) -> f64 {
    series_value(
        text,
        "matric_webhook_deliveries_total",
        &[("status", status)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn deliveries_counted_by_status_with_latency() {
    // Installed before the service builds its instruments.
    let registry = install();

    let (webhooks, base) = serve_sqlite(fast_config()).await;
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    let rx = Receiver::start().await;
    rx.script("m", [Reply::status(500)]);
    rx.default_reply("x", Reply::status(500));
    for (url, retries) in [(rx.url("m"), 4), (rx.url("x"), 0)] {
        let r = client()
            .post(format!("{base}/api/v1/webhooks"))
            .json(&json!({"url": url, "max_retries": retries}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    bus.publish(JobQueued {
        job_id: uuid::Uuid::now_v7(),
        job_type: "x".into(),
        note_id: None,
    });
    // m: 500 then 200 (retry + success); x: 500 with no retries (failed).
    eventually(Duration::from_secs(10), || async {
        let text = render(&registry);
        deliveries(&text, "success") >= 1.0 && deliveries(&text, "failed") >= 1.0
    })
    .await;
    let text = render(&registry);
    assert_eq!(deliveries(&text, "retry"), 1.0);
    assert_eq!(deliveries(&text, "success"), 1.0);
    assert_eq!(deliveries(&text, "failed"), 1.0);
    assert!(
        series_value(
            &text,
            "matric_event_latency_ms_count",
            &[("transport", "webhook")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    runner.shutdown(Duration::from_secs(2)).await;
    worker.shutdown(Duration::from_secs(2)).await;
}
