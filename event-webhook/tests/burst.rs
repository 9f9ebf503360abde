//! A burst published faster than the sink can write reaches the durable
//! queue completely: the sink's intake, not the bus's small channel and
//! replay ring, absorbs it. Past the intake, losses are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::receiver::Receiver;
use common::{client, eventually, fast_config, serve_sqlite};
use event_core::{BusConfig, EventBus, JobProgress, SinkRunner};
use event_test_support::{install, value};
use event_webhook::WebhookConfig;
use event_webhook::model::DeliveryStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A bus far smaller than the burst: a sink reading it through a
/// subscription would lag after 64 events and find only 64 in the ring.
fn small_bus() -> EventBus {
    EventBus::new(BusConfig {
        capacity: 64,
        replay_size: 64,
        ..BusConfig::default()
    })
}

fn progress(i: u64) -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: (i % 100) as u8,
        message: None,
    }
}

async fn create(base: &str, url: String) -> Uuid {
    let r = client()
        .post(format!("{base}/api/v1/webhooks"))
        .json(&json!({"url": url, "events": ["JobProgress"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_bus_is_stored_and_delivered_completely() {
    const BURST: usize = 5_000;
    let (webhooks, base) = serve_sqlite(fast_config()).await;
    let rx = Receiver::start().await;
    let webhook_id = create(&base, rx.url("burst")).await;
    let bus = small_bus();
    let mut runner = SinkRunner::new(&bus);
    let stats = runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());

    // As fast as possible: no await between publishes.
    let published: HashSet<String> = (0..BURST as u64)
        .map(|i| bus.publish(progress(i)).id().to_string())
        .collect();

    let got = rx
        .wait_until(Duration::from_secs(60), |reqs| {
            reqs.iter()
                .filter_map(|r| r.headers.get("webhook-id"))
                .collect::<HashSet<_>>()
                .len()
                >= BURST
        })
        .await;
    let delivered: HashSet<String> = got
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(delivered, published, "every published event was delivered");
    // Results are recorded shortly after the receiver answers.
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            store
                .list_deliveries(
                    webhook_id,
                    Some(DeliveryStatus::Succeeded),
                    2 * BURST as u32,
                )
                .await
                .unwrap()
                .len()
                == BURST
        }
    })
    .await;
    let s = stats.snapshot();
    assert_eq!((s.lagged, s.delivered), (0, BURST as u64));

    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_overflowing_intake_is_counted_and_the_sink_goes_on() {
    // Installed before the service builds its instruments.
    let registry = install();
    let config = WebhookConfig {
        intake_capacity: 100,
        ..fast_config()
    };
    let (webhooks, base) = serve_sqlite(config).await;
    let rx = Receiver::start().await;
    let webhook_id = create(&base, rx.url("small")).await;
    let bus = small_bus();
    let mut runner = SinkRunner::new(&bus);
    let stats = runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());

    // Single-threaded runtime: the sink does not run until the test awaits,
    // so the intake takes the first 100 and the other 900 cannot fit (nor
    // be found in the 64-event replay ring).
    for i in 0..1_000 {
        bus.publish(progress(i));
    }
    rx.wait_for("small", 100, Duration::from_secs(30)).await;
    // The sink goes on after the overflow.
    let last = bus.publish(progress(0)).id().to_string();
    let got = rx
        .wait_until(Duration::from_secs(30), |reqs| {
            reqs.iter()
                .any(|r| r.headers.get("webhook-id").and_then(|v| v.to_str().ok()) == Some(&last))
        })
        .await;
    assert_eq!(got.len(), 101);
    assert_eq!(stats.snapshot().lagged, 900);
    // Sent while their rows commit: the last row may still be on its way.
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .list_deliveries(webhook_id, None, 10_000)
                .await
                .unwrap()
                .len()
                >= 101
        }
    })
    .await;
    let stored = store
        .list_deliveries(webhook_id, None, 10_000)
        .await
        .unwrap();
    assert_eq!(stored.len(), 101);
    let dropped = value(
        &registry,
        "matric_events_dropped_total",
        &[("consumer", "webhook")],
    );
    assert_eq!(dropped, Some(900.0));

    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);
}
