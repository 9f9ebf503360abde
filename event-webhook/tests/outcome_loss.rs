//! At-least-once across lost outcome writes: a delivery that was sent but
//! whose outcome batch never reached the database (the process died first,
//! or, on PostgreSQL, the database server crashed before flushing the
//! asynchronously committed outcome) stays claimed, is sent again once the
//! claim is freed, and is then recorded; none is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::receiver::{Receiver, Reply};
use common::{eventually, fast_config};
use event_core::AllowAnonymous;
use event_webhook::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook,
};
use event_webhook::store::WebhookStore;
use event_webhook::{Result, WebhookConfig, WebhookError, Webhooks};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const N: usize = 40;

/// The real store, except that no outcome batch is ever written: what a
/// worker sees when its recording transactions are lost.
struct OutcomesLost(Arc<dyn WebhookStore>);

#[async_trait]
impl WebhookStore for OutcomesLost {
    fn engine(&self) -> &'static str {
        self.0.engine()
    }
    fn shared_queue(&self) -> bool {
        self.0.shared_queue()
    }
    async fn create_webhook(&self, webhook: &Webhook) -> Result<()> {
        self.0.create_webhook(webhook).await
    }
    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        self.0.get_webhook(id).await
    }
    async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.0.list_webhooks().await
    }
    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool> {
        self.0.update_webhook(webhook).await
    }
    async fn delete_webhook(&self, id: Uuid) -> Result<bool> {
        self.0.delete_webhook(id).await
    }
    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        self.0.enqueue_claiming(deliveries, claim).await
    }
    async fn enqueue_claimed(
        &self,
        delivery: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()> {
        self.0.enqueue_claimed(delivery, token, lease_until).await
    }
    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        self.0.get_delivery(webhook_id, id).await
    }
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        self.0.list_deliveries(webhook_id, status, limit).await
    }
    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        self.0.list_attempts(delivery_id).await
    }
    async fn redeliver(
        &self,
        webhook_id: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Delivery>> {
        self.0.redeliver(webhook_id, id, now).await
    }
    async fn claim_due(&self, request: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        self.0.claim_due(request).await
    }
    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        self.0.release(ids, token).await
    }
    async fn complete_attempts(&self, _records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>> {
        Err(WebhookError::Corrupt("outcome batch lost".to_owned()))
    }
    async fn recover_in_flight(&self, now: OffsetDateTime) -> Result<u64> {
        self.0.recover_in_flight(now).await
    }
    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64> {
        self.0.prune_succeeded(before).await
    }
    async fn queue_depth(&self) -> Result<u64> {
        self.0.queue_depth().await
    }
}

fn config() -> WebhookConfig {
    // A short lease, so the second worker may take the first one's claims
    // soon (PostgreSQL frees only expired claims; SQLite frees every claim
    // at start).
    WebhookConfig {
        request_timeout: Duration::from_secs(1),
        lease: Duration::from_secs(2),
        ..fast_config()
    }
}

async fn a_lost_outcome_batch_is_sent_again_and_recorded(store: Arc<dyn WebhookStore>) {
    let rx = Receiver::start().await;
    rx.default_reply("lost", Reply::status(204));
    let now = OffsetDateTime::now_utc();
    let w = common::webhook(rx.url("lost"), vec![]);
    store.create_webhook(&w).await.unwrap();
    let rows: Vec<NewDelivery> = (0..N)
        .map(|i| {
            let event_id = Uuid::now_v7();
            NewDelivery {
                id: Uuid::now_v7(),
                webhook_id: w.id,
                event_id,
                event_type: "JobQueued",
                body: format!(r#"{{"id":"{event_id}","event":"JobQueued","timestamp":"2026-01-01T00:00:00.000Z","data":{{"n":{i}}}}}"#).into(),
                created_at: now,
                next_attempt_at: Some(now),
                trace: None,
            }
        })
        .collect();
    store.enqueue(&rows).await.unwrap();

    // The first worker sends everything and records nothing.
    let lossy: Arc<dyn WebhookStore> = Arc::new(OutcomesLost(store.clone()));
    let first = Webhooks::new(lossy, Arc::new(AllowAnonymous), config())
        .await
        .unwrap();
    let worker = first.start_worker(CancellationToken::new());
    rx.wait_for("lost", N, Duration::from_secs(60)).await;
    assert!(worker.shutdown(Duration::from_secs(10)).await);
    assert_eq!(
        store.queue_depth().await.unwrap(),
        N as u64,
        "sent but unrecorded deliveries are still queued"
    );
    assert!(
        store
            .list_deliveries(w.id, Some(DeliveryStatus::Succeeded), N as u32)
            .await
            .unwrap()
            .is_empty()
    );

    // A second worker sends each one again and records it.
    let second = Webhooks::new(store.clone(), Arc::new(AllowAnonymous), config())
        .await
        .unwrap();
    let worker = second.start_worker(CancellationToken::new());
    eventually(Duration::from_secs(60), || async {
        store
            .list_deliveries(w.id, Some(DeliveryStatus::Succeeded), N as u32)
            .await
            .unwrap()
            .len()
            == N
    })
    .await;
    assert!(worker.shutdown(Duration::from_secs(10)).await);
    let mut times: HashMap<String, usize> = HashMap::new();
    for r in rx.requests_to("lost") {
        *times
            .entry(r.header("webhook-id").unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(times.len(), N, "every delivery reached the receiver");
    assert!(
        times.values().all(|&n| n >= 2),
        "every delivery whose outcome was lost was sent again: {times:?}"
    );
    for d in &rows {
        let attempts = store.list_attempts(d.id).await.unwrap();
        assert_eq!(attempts.len(), 1, "only the recorded attempt is stored");
    }
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

on_both_engines!(a_lost_outcome_batch_is_sent_again_and_recorded);
