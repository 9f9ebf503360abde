//! Delivery throughput to a local receiver: queue N deliveries, start a
//! worker, time until the receiver has them all and the queue is empty.
//!
//! ```text
//! cargo run --release -p event-webhook --example delivery_bench -- [N] [ENDPOINTS] [DATABASE_URL]
//! ```
//! Defaults: 20,000 deliveries over 4 endpoints on a temporary SQLite file.
//! Prints one line: `engine deliveries seconds deliveries_per_second`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use event_core::AllowAnonymous;
use event_webhook::model::{NewDelivery, Webhook};
use event_webhook::{WebhookConfig, Webhooks};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let endpoints: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let temp = std::env::temp_dir().join(format!("webhook-bench-{}.db", Uuid::new_v4()));
    let url = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}", temp.display()));

    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = WebhookConfig {
        allow_cidrs: vec!["127.0.0.0/8".parse()?],
        poll_interval: Duration::from_millis(20),
        per_endpoint_concurrency: 16,
        max_concurrency: 64,
        ..WebhookConfig::default()
    };
    let webhooks = Webhooks::connect(&url, Arc::new(AllowAnonymous), config).await?;
    let store = webhooks.store().clone();
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for i in 0..endpoints {
        let w = Webhook {
            id: Uuid::now_v7(),
            url: format!("http://{addr}/hook{i}"),
            events: vec![],
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            active: true,
            max_retries: 4,
            created_at: now,
            updated_at: now,
            last_triggered_at: None,
            failure_count: 0,
            disabled_reason: None,
        };
        store.create_webhook(&w).await?;
        ids.push(w.id);
    }
    let rows: Vec<NewDelivery> = (0..n)
        .map(|i| {
            let event_id = Uuid::now_v7();
            NewDelivery {
                id: Uuid::now_v7(),
                webhook_id: ids[i % ids.len()],
                event_id,
                event_type: "JobProgress",
                body: format!(
                    r#"{{"id":"{event_id}","event":"JobProgress","timestamp":"2026-01-01T00:00:00.000Z","data":{{"type":"JobProgress","job_id":"{event_id}","progress":50,"progress_percent":50}}}}"#
                )
                .into(),
                created_at: now,
                next_attempt_at: Some(now),
                trace: None,
            }
        })
        .collect();
    for chunk in rows.chunks(1000) {
        store.enqueue(chunk).await?;
    }
    webhooks.refresh().await?;

    let start = Instant::now();
    let worker = webhooks.start_worker(CancellationToken::new());
    while received.load(Ordering::Relaxed) < n || store.queue_depth().await? > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if start.elapsed() > Duration::from_secs(600) {
            return Err("benchmark did not finish within 10 minutes".into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    worker.shutdown(Duration::from_secs(5)).await;
    println!("{} {n} {secs:.2} {:.0}", store.engine(), n as f64 / secs);
    let _ = std::fs::remove_file(&temp);
    Ok(())
}
