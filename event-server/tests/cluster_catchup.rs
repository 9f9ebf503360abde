//! Nothing acknowledged is lost downstream in cluster mode either: sinks
//! that fall behind a burst catch up from the JetStream stream, and the
//! webhook deliveries of every event that got a `202` are queued even when
//! the instance that accepted them is killed right after (another instance
//! derives them from the stream through the shared work queue).
//!
//! Real `event-server` processes (`common/host.rs`) on a stream of the
//! test's own (`common/stream.rs`); needs `TEST_NATS_URL`, and
//! `TEST_POSTGRES_URL` for the webhook test (skipped with a reason when
//! unset, failed when `EVENT_TEST_REQUIRE_SERVICES=1`).

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "common/producer.rs"]
mod producer;
#[path = "common/stream.rs"]
mod stream;
#[cfg(all(feature = "webhook", feature = "postgres"))]
#[path = "common/webhook.rs"]
mod webhook;

use std::time::Duration;

use event_nats::testing::nats_url;
use event_server::testing::TempDir;
use host::Host;
use producer::{burst, progress, try_publish};
use serde_json::Value;
use stream::TestStream;

/// 20,000 events posted as fast as they are accepted to one instance of a
/// cluster, with a WebSocket and an SSE client connected and a bus buffer
/// of 64 events: the sinks lag behind the bus, and every one catches up
/// from the stream instead of losing events.
#[cfg(all(feature = "ws", feature = "sse", feature = "telemetry"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_sink_whole_in_cluster_mode() {
    let Some(url) = nats_url("a_burst_reaches_every_sink_whole_in_cluster_mode") else {
        return;
    };
    let stream = TestStream::new(&url);
    let dir = TempDir::new();
    let mut env = stream.env("a");
    env.extend([
        ("DATABASE_URL", dir.sqlite_url()),
        // A small bus buffer and ring: the sinks fall behind the burst and
        // the ring does not hold what they missed, so only the stream can.
        ("EVENT_BUS_CAPACITY", "64".to_owned()),
        ("EVENT_REPLAY_SIZE", "64".to_owned()),
        ("RUST_LOG", "info,event_core::sink=debug".to_owned()),
    ]);
    let host = Host::start(&env).await;
    let _clients = host.sink_clients().await;
    let acked = burst(&host.url(""), 4, 5, 1000).await;
    assert_eq!(acked.len(), 20_000);
    // Every event reached the bus (and so went past the sinks) before the
    // shutdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while host.metric("matric_nats_received_total", "").await < 20_000.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never came back from the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, log) = host.terminate().await;
    assert!(status.success());
    let behind: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(r#""message":"sink fell behind the bus""#))
        .collect();
    // With what the runner said about it (catch-ups that stopped, and why).
    let runner: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("event_core::sink") && !l.contains("catching up from the log\""))
        .collect();
    assert!(
        behind.is_empty(),
        "sinks lost events: {behind:#?}\nthe runner's log: {runner:#?}"
    );
}

/// Two instances on one PostgreSQL; a burst into A while the database
/// takes no delivery row, and A SIGKILLed in the middle of it, right after
/// a `202`: with events acknowledged whose deliveries it had not queued,
/// and events taken from the work queue but not acknowledged. A never comes back: B derives what A had
/// not, and every acknowledged event reaches the webhook, each queued once.
#[cfg(all(feature = "webhook", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_a_burst_every_webhook_delivery_arrives_through_another_instance() {
    let test = "killed_right_after_a_burst_every_webhook_delivery_arrives_through_another_instance";
    let Some(url) = nats_url(test) else {
        return;
    };
    let Some(pg) = event_server::testing::postgres_url(test) else {
        return;
    };
    let schema = event_server::testing::PgSchema::create(&pg).await;
    let stream = TestStream::new(&url);
    let shared = [
        ("DATABASE_URL", schema.scoped_url()),
        ("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8".to_owned()),
        // What A held: events of the work queue (handed to B after the ack
        // wait) and claimed deliveries (after the lease).
        ("NATS_WEBHOOK_ACK_WAIT_SECS", "5".to_owned()),
        ("WEBHOOK_TIMEOUT_SECS", "2".to_owned()),
        ("WEBHOOK_LEASE_SECS", "5".to_owned()),
    ];
    let with = |id: &str| {
        let mut env = stream.env(id);
        env.extend(shared.iter().cloned());
        env
    };
    // One after the other: the first creates the tables.
    let mut a = Host::start(&with("a")).await;
    let b = Host::start(&with("b")).await;
    let (hook_url, hook) = webhook::Receiver::start(true).await;
    webhook::subscribe(&a.url(""), &hook_url).await;
    // Published right after: B, which learns of the webhook only from the
    // database, derives its share of them too.

    // A slow database: no delivery row can be written until A is dead
    // (`SHARE` mode admits reads but no inserts), while publishing goes on.
    let pool = sqlx::PgPool::connect(&schema.scoped_url()).await.unwrap();
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE deliveries IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // Five producers post 100 events at a time until A is gone; A is
    // killed as soon as 1,500 events were acknowledged.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let producers: Vec<_> = (0..5u64)
        .map(|p| {
            let (url, acked) = (a.url(""), acked.clone());
            tokio::spawn(async move {
                for r in 0u64.. {
                    let first = (p * 1_000_000) + r * 100;
                    let batch: Vec<Value> = (first..first + 100).map(progress).collect();
                    match try_publish(&url, &batch).await {
                        Some(ids) => acked
                            .lock()
                            .unwrap()
                            .extend(ids.into_iter().map(|(_, id)| id)),
                        None => return,
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 1500 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst was not accepted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.kill().await;
    for p in producers {
        p.await.unwrap();
    }
    lock.rollback().await.unwrap();
    let acked = acked.lock().unwrap().clone();

    hook.wait_for_all(&acked, Duration::from_secs(90)).await;
    // Queued once each, however the work was split and handed out again
    // (a statement A had sent is committed by the database after A died,
    // and its events are then handed to B as well).
    let repeated: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT event_id, COUNT(*) FROM deliveries GROUP BY event_id HAVING COUNT(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(repeated.is_empty(), "deliveries queued twice: {repeated:?}");
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    // At least the acknowledged ones: events A stored in the stream whose
    // `202` the kill cut off are delivered too.
    assert!(queued as usize >= acked.len(), "{queued} queued");
    pool.close().await;
    let (status, _) = b.terminate().await;
    assert!(status.success());
    schema.drop_schema().await;
}
