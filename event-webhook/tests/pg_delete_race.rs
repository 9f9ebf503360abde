//! PostgreSQL: deleting webhooks while the results of their deliveries are
//! being recorded never deadlocks. The recorder locks the webhook rows
//! first (in id order), the way a delete starts, so the two queue behind
//! each other instead of each holding what the other needs (the delete's
//! cascade wants the delivery rows the recorder updated; the recorder wants
//! the webhook row the delete took).

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::postgres_url;
use event_webhook::model::{AttemptOutcome, AttemptRecord, ClaimRequest, NewDelivery, Webhook};
use event_webhook::store::{PostgresStore, WebhookStore};
use time::OffsetDateTime;
use tokio::sync::Barrier;
use uuid::Uuid;

const ROUNDS: usize = 30;
const WEBHOOKS: usize = 8;
const PER_WEBHOOK: usize = 25;

fn webhook(now: OffsetDateTime) -> Webhook {
    Webhook {
        secret: "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=".to_owned(),
        created_at: now,
        updated_at: now,
        ..common::webhook("https://a.example/hook", vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_webhooks_while_recording_their_results_never_deadlocks() {
    let Some(url) = postgres_url() else { return };
    let schema = common::fresh_schema();
    let store: Arc<dyn WebhookStore> = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema)
            .await
            .unwrap(),
    );
    for _ in 0..ROUNDS {
        let now = OffsetDateTime::now_utc();
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for _ in 0..WEBHOOKS {
            let w = webhook(now);
            store.create_webhook(&w).await.unwrap();
            for _ in 0..PER_WEBHOOK {
                rows.push(NewDelivery {
                    id: Uuid::now_v7(),
                    webhook_id: w.id,
                    event_id: Uuid::now_v7(),
                    event_type: "JobQueued",
                    body: r#"{"data":{}}"#.into(),
                    created_at: now,
                    next_attempt_at: Some(now),
                    trace: None,
                });
            }
            ids.push(w.id);
        }
        store.enqueue(&rows).await.unwrap();
        let claimed = store
            .claim_due(&ClaimRequest {
                now,
                limit: 10_000,
                per_webhook: 10_000,
                exclude: Vec::new(),
                lease_until: now + time::Duration::minutes(5),
                token: Uuid::new_v4(),
            })
            .await
            .unwrap();
        assert_eq!(claimed.len(), rows.len());
        let records: Vec<AttemptRecord> = claimed
            .iter()
            .map(|c| AttemptRecord {
                delivery_id: c.id,
                webhook_id: c.webhook_id,
                claim_token: c.claim_token,
                attempt: 1,
                started_at: now,
                duration_ms: 3,
                status_code: Some(200),
                error: None,
                outcome: AttemptOutcome::Succeeded,
                disable_after_dead: 10,
            })
            .collect();
        // The recorder and a client deleting every webhook (newest first),
        // started together.
        let start = Arc::new(Barrier::new(2));
        let recorder = tokio::spawn({
            let (store, start) = (store.clone(), start.clone());
            async move {
                start.wait().await;
                store.complete_attempts(&records).await
            }
        });
        let deleter = tokio::spawn({
            let (store, start) = (store.clone(), start.clone());
            async move {
                start.wait().await;
                for id in ids.iter().rev() {
                    store.delete_webhook(*id).await?;
                }
                Ok::<_, event_webhook::WebhookError>(())
            }
        });
        let recorded = recorder.await.unwrap();
        let deleted = deleter.await.unwrap();
        assert!(recorded.is_ok(), "recording failed: {recorded:?}");
        assert!(deleted.is_ok(), "deleting failed: {deleted:?}");
    }
    common::drop_schema(&schema).await;
}
