//! Two workers on one PostgreSQL queue: every event delivered exactly once
//! (claims use `FOR UPDATE SKIP LOCKED`).

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{eventually, fast_config, postgres_url};
use event_core::AllowAnonymous;
use event_webhook::model::{DeliveryStatus, NewDelivery};
use event_webhook::store::{PostgresStore, WebhookStore};
use event_webhook::{WebhookConfig, Webhooks};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const N: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_queue_without_double_sending() {
    let Some(url) = postgres_url() else { return };
    let schema = common::fresh_schema();
    let rx = Receiver::start().await;
    rx.default_reply("p", Reply::status(200).delay(Duration::from_millis(1)));

    let mut services = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let store: Arc<dyn WebhookStore> = Arc::new(
            PostgresStore::connect_in_schema(&url, &schema)
                .await
                .unwrap(),
        );
        let config = WebhookConfig {
            user_agent: name.to_owned(),
            ..fast_config()
        };
        services.push(
            Webhooks::new(store, Arc::new(AllowAnonymous), config)
                .await
                .unwrap(),
        );
    }
    let store = services[0].store().clone();
    let now = time::OffsetDateTime::now_utc();
    let w = common::webhook(rx.url("p"), vec![]);
    store.create_webhook(&w).await.unwrap();
    let rows: Vec<NewDelivery> = (0..N)
        .map(|_| {
            let event_id = Uuid::now_v7();
            NewDelivery {
                id: Uuid::now_v7(),
                webhook_id: w.id,
                event_id,
                event_type: "JobQueued",
                body: format!(r#"{{"id":"{event_id}","event":"JobQueued","timestamp":"2026-01-01T00:00:00.000Z","data":{{"type":"JobQueued"}}}}"#).into(),
                created_at: now,
                next_attempt_at: Some(now),
                trace: None,
            }
        })
        .collect();
    store.enqueue(&rows).await.unwrap();

    let workers: Vec<_> = services
        .iter()
        .map(|s| s.start_worker(CancellationToken::new()))
        .collect();
    rx.wait_until(Duration::from_secs(120), |r| r.len() >= N)
        .await;
    eventually(Duration::from_secs(60), || async {
        store
            .list_deliveries(w.id, Some(DeliveryStatus::Succeeded), N as u32)
            .await
            .unwrap()
            .len()
            == N
    })
    .await;
    for worker in workers {
        assert!(worker.shutdown(Duration::from_secs(5)).await);
    }

    let requests = rx.requests();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        *per_event
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_default() += 1;
        *per_worker
            .entry(r.header("user-agent").unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_event.len(), N, "every event delivered");
    let twice: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(requests.len(), N);
    assert!(
        per_worker.get("worker-a").is_some_and(|n| *n > 0)
            && per_worker.get("worker-b").is_some_and(|n| *n > 0),
        "both workers took part: {per_worker:?}"
    );
    common::drop_schema(&schema).await;
}
