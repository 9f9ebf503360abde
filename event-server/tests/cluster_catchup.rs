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
#[path = "common/stream.rs"]
mod stream;

use std::time::Duration;

use event_nats::testing::nats_url;
use event_server::testing::{TempDir, client};
use host::Host;
use serde_json::{Value, json};
use stream::TestStream;

fn progress(n: u64) -> Value {
    json!({
        "type": "JobProgress",
        "job_id": uuid::Uuid::now_v7(),
        "progress": n % 100,
        "message": format!("step {n}"),
    })
}

/// POSTs `events`; the `event_id` of each, `None` unless answered `202`.
async fn try_publish(host_url: &str, events: &[Value]) -> Option<Vec<String>> {
    let res = client()
        .post(format!("{host_url}/api/v1/events"))
        .json(&events)
        .send()
        .await
        .ok()?;
    if res.status() != 202 {
        return None;
    }
    let answer: Value = res.json().await.ok()?;
    answer["events"]
        .as_array()?
        .iter()
        .map(|e| e["event_id"].as_str().map(str::to_owned))
        .collect()
}

/// POSTs `events`; the `event_id` of each (panics unless `202`).
async fn publish(host_url: &str, events: &[Value]) -> Vec<String> {
    try_publish(host_url, events).await.expect("a 202")
}

/// `producers` tasks each posting `rounds` requests of `per_request`
/// events as fast as they are accepted; every acknowledged event id.
async fn burst(url: &str, producers: u64, rounds: u64, per_request: u64) -> Vec<String> {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for r in 0..rounds {
                    let first = (p * rounds + r) * per_request;
                    let batch: Vec<Value> = (first..first + per_request).map(progress).collect();
                    ids.extend(publish(&url, &batch).await);
                }
                ids
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("the burst is accepted")
                .unwrap(),
        );
    }
    acked
}

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
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", host.addr))
        .await
        .unwrap();
    let _sse = client()
        .get(host.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
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

/// A webhook receiver on loopback: how many times each `webhook-id` came.
#[cfg(all(feature = "webhook", feature = "postgres"))]
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let app = axum::Router::new().route(
        "/",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                        *seen.lock().unwrap().entry(id.to_owned()).or_insert(0) += 1;
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
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
    let (hook_url, seen) = receiver().await;
    let res = client()
        .post(a.url("/api/v1/webhooks"))
        .json(&json!({"url": hook_url, "events": ["JobProgress"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
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
                        Some(ids) => acked.lock().unwrap().extend(ids),
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

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let missing = {
            let seen = seen.lock().unwrap();
            acked.iter().filter(|id| !seen.contains_key(*id)).count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} acknowledged events never reached the webhook",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
