//! Rows a worker holds locally longer than their claim allows (a slow
//! endpoint with a long local queue) are handed back unattempted and claimed
//! again later, never sent after their lease ran out: a row whose lease ran
//! out can be claimed a second time, and sending the stale copy too would
//! deliver it twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{client, eventually, fast_config, serve_sqlite};
use event_core::{EventBus, JobQueued, SinkRunner};
use event_webhook::WebhookConfig;
use event_webhook::model::DeliveryStatus;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_past_their_lease_are_handed_back_not_sent_twice() {
    const EVENTS: usize = 10;
    // One attempt at a time, 150 ms each: the tenth row would start about
    // 1.35 s after it was claimed, past its 1-second lease.
    let config = WebhookConfig {
        lease: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
        per_endpoint_concurrency: 1,
        max_concurrency: 1,
        ..fast_config()
    };
    let (webhooks, base) = serve_sqlite(config).await;
    let rx = Receiver::start().await;
    rx.default_reply("slow", Reply::status(204).delay(Duration::from_millis(150)));
    let r = client()
        .post(format!("{base}/api/v1/webhooks"))
        .json(&json!({"url": rx.url("slow"), "events": ["JobQueued"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let webhook_id: Uuid = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    for _ in 0..EVENTS {
        bus.publish(JobQueued {
            job_id: Uuid::now_v7(),
            job_type: "x".into(),
            note_id: None,
        });
    }
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            store
                .list_deliveries(webhook_id, Some(DeliveryStatus::Succeeded), 100)
                .await
                .unwrap()
                .len()
                == EVENTS
        }
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    // Attempts still running finish before the count.
    assert!(worker.shutdown(Duration::from_secs(5)).await);
    let requests = rx.requests_to("slow");
    let unique: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(unique.len(), EVENTS);
    assert_eq!(requests.len(), EVENTS, "a delivery was sent twice");
    for d in store.list_deliveries(webhook_id, None, 100).await.unwrap() {
        assert_eq!(store.list_attempts(d.id).await.unwrap().len(), 1);
    }
}
