//! Durability: a worker process killed with SIGKILL mid-queue loses
//! nothing; a new process finishes the queue (at-least-once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use common::receiver::{Receiver, Recorded, Reply};
use event_webhook::model::{DeliveryStatus, NewDelivery};
use event_webhook::store::WebhookStore;
use uuid::Uuid;

const N: usize = 2000;

fn spawn_worker(database_url: &str, lease_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_event-webhook-worker"))
        .env("DATABASE_URL", database_url)
        .env("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8")
        .env("WEBHOOK_RETRY_SCHEDULE_MS", "50")
        .env("WEBHOOK_POLL_MS", "20")
        .env("WEBHOOK_LEASE_MS", lease_ms.to_string())
        .env("WEBHOOK_TIMEOUT_MS", "500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

async fn queue(store: &Arc<dyn WebhookStore>, url: String) -> (Uuid, HashSet<String>) {
    let now = time::OffsetDateTime::now_utc();
    let w = common::webhook(url, vec![]);
    store.create_webhook(&w).await.unwrap();
    let rows: Vec<NewDelivery> = (0..N)
        .map(|i| {
            let event_id = Uuid::now_v7();
            NewDelivery {
                id: Uuid::now_v7(),
                webhook_id: w.id,
                event_id,
                event_type: "JobQueued",
                body: format!(r#"{{"id":"{event_id}","event":"JobQueued","timestamp":"2026-01-01T00:00:00.000Z","data":{{"type":"JobQueued","n":{i}}}}}"#).into(),
                created_at: now,
                next_attempt_at: Some(now),
                trace: None,
            }
        })
        .collect();
    store.enqueue(&rows).await.unwrap();
    let ids = rows.iter().map(|r| r.event_id.to_string()).collect();
    (w.id, ids)
}

fn ids_of(requests: &[Recorded]) -> HashSet<String> {
    requests
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

async fn kill_and_recover(store: Arc<dyn WebhookStore>, database_url: &str, lease_ms: u64) {
    let rx = Receiver::start().await;
    // A small delay per request so the first worker is mid-queue when killed.
    rx.default_reply("k", Reply::status(200).delay(Duration::from_millis(5)));
    let (webhook_id, expected) = queue(&store, rx.url("k")).await;

    let mut first = spawn_worker(database_url, lease_ms);
    rx.wait_until(Duration::from_secs(60), |r| r.len() >= 200)
        .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let done = store
        .list_deliveries(webhook_id, Some(DeliveryStatus::Succeeded), N as u32)
        .await
        .unwrap()
        .len();
    assert!(
        done < N,
        "the first worker must die mid-queue ({done} done)"
    );

    let mut second = spawn_worker(database_url, lease_ms);
    let mut seen = HashSet::new();
    let mut scanned = 0;
    rx.wait_until(Duration::from_secs(120), |r| {
        seen.extend(ids_of(&r[scanned..]));
        scanned = r.len();
        seen.len() >= N
    })
    .await;
    eventually(Duration::from_secs(60), || async {
        store
            .list_deliveries(webhook_id, Some(DeliveryStatus::Succeeded), N as u32)
            .await
            .unwrap()
            .len()
            == N
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        ids_of(&rx.requests()),
        expected,
        "every event at least once"
    );
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_worker_killed_mid_queue_loses_nothing() {
    let (url, path) = common::sqlite_url();
    let store: Arc<dyn WebhookStore> = Arc::new(
        event_webhook::store::SqliteStore::connect(&url)
            .await
            .unwrap(),
    );
    kill_and_recover(store, &url, 60_000).await;
    let _ = std::fs::remove_file(&path);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_worker_killed_mid_queue_loses_nothing() {
    let Some(base) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let store: Arc<dyn WebhookStore> = Arc::new(
        event_webhook::store::PostgresStore::connect_in_schema(&base, &schema)
            .await
            .unwrap(),
    );
    // The child connects to the same schema through the URL's options.
    let url = common::with_search_path(&base, &schema);
    // PostgreSQL workers may share a queue, so claims of the dead process
    // come back only when their lease expires: keep it short here.
    kill_and_recover(store, &url, 1_000).await;
    common::drop_schema(&schema).await;
}
