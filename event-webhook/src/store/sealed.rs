//! [`SealedStore`]: any [`WebhookStore`] with webhook secrets sealed at rest
//! (see [`secret_key`](crate::secret_key)). Secrets are sealed on every
//! write of a webhook and opened on every read; everything else passes
//! through unchanged, so both engines get the same behaviour.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::WebhookStore;
use crate::error::Result;
use crate::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook,
};
use crate::secret_key::SecretCipher;

/// A store whose webhook secrets are sealed with `cipher`.
pub(crate) struct SealedStore {
    inner: Arc<dyn WebhookStore>,
    cipher: SecretCipher,
}

impl SealedStore {
    pub fn new(inner: Arc<dyn WebhookStore>, cipher: SecretCipher) -> Self {
        SealedStore { inner, cipher }
    }

    fn sealed(&self, w: &Webhook) -> Result<Webhook> {
        let mut stored = w.clone();
        stored.secret = self.cipher.seal(w.id, &w.secret)?;
        Ok(stored)
    }

    fn opened(&self, mut w: Webhook) -> Result<Webhook> {
        w.secret = self.cipher.open(w.id, &w.secret)?;
        Ok(w)
    }

    /// Re-seals under the first key every secret stored in plaintext or
    /// under another key; returns how many rows were rewritten. A row
    /// changed concurrently (compare-and-set lost) is left to its writer,
    /// which sealed it under its own first key. Fails, naming the webhook,
    /// when a secret cannot be opened.
    pub async fn reseal_all(&self) -> Result<u64> {
        if !self.cipher.enabled() {
            return Ok(0);
        }
        let mut rewritten = 0;
        for (id, stored) in self.inner.stored_secrets().await? {
            if !self.cipher.needs_reseal(&stored) {
                continue;
            }
            let secret = self.cipher.open(id, &stored)?;
            let resealed = self.cipher.seal(id, &secret)?;
            if self
                .inner
                .replace_stored_secret(id, &stored, &resealed)
                .await?
            {
                rewritten += 1;
            }
        }
        Ok(rewritten)
    }
}

#[async_trait]
impl WebhookStore for SealedStore {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }

    fn shared_queue(&self) -> bool {
        self.inner.shared_queue()
    }

    async fn create_webhook(&self, webhook: &Webhook) -> Result<()> {
        self.inner.create_webhook(&self.sealed(webhook)?).await
    }

    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        self.inner
            .get_webhook(id)
            .await?
            .map(|w| self.opened(w))
            .transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        self.inner
            .list_webhooks()
            .await?
            .into_iter()
            .map(|w| self.opened(w))
            .collect()
    }

    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool> {
        self.inner.update_webhook(&self.sealed(webhook)?).await
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool> {
        self.inner.delete_webhook(id).await
    }

    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<()> {
        self.inner.enqueue(deliveries).await
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        self.inner.enqueue_claiming(deliveries, claim).await
    }

    async fn enqueue_derived(
        &self,
        deliveries: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<u64> {
        self.inner.enqueue_derived(deliveries, now).await
    }

    async fn prune_derived(&self, before: OffsetDateTime) -> Result<u64> {
        self.inner.prune_derived(before).await
    }

    async fn webhooks_fingerprint(&self) -> Result<Option<super::WebhooksFingerprint>> {
        self.inner.webhooks_fingerprint().await
    }

    async fn enqueue_claimed(
        &self,
        delivery: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()> {
        self.inner
            .enqueue_claimed(delivery, token, lease_until)
            .await
    }

    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        self.inner.get_delivery(webhook_id, id).await
    }

    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        self.inner.list_deliveries(webhook_id, status, limit).await
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        self.inner.list_attempts(delivery_id).await
    }

    async fn redeliver(
        &self,
        webhook_id: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Delivery>> {
        self.inner.redeliver(webhook_id, id, now).await
    }

    async fn claim_due(&self, request: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        self.inner.claim_due(request).await
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        self.inner.release(ids, token).await
    }

    async fn complete_attempts(&self, records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>> {
        self.inner.complete_attempts(records).await
    }

    async fn complete_attempt(&self, record: &AttemptRecord) -> Result<AttemptEffect> {
        self.inner.complete_attempt(record).await
    }

    async fn recover_in_flight(&self, now: OffsetDateTime) -> Result<u64> {
        self.inner.recover_in_flight(now).await
    }

    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64> {
        self.inner.prune_succeeded(before).await
    }

    async fn queue_depth(&self) -> Result<u64> {
        self.inner.queue_depth().await
    }

    async fn log_cursor(&self) -> Result<Option<u64>> {
        self.inner.log_cursor().await
    }

    async fn set_log_cursor(&self, seq: u64) -> Result<()> {
        self.inner.set_log_cursor(seq).await
    }

    async fn count_webhooks(&self) -> Result<u64> {
        // Nothing to open: the count needs no secret.
        self.inner.count_webhooks().await
    }

    async fn stored_secrets(&self) -> Result<Vec<(Uuid, String)>> {
        self.inner.stored_secrets().await
    }

    async fn replace_stored_secret(&self, id: Uuid, expected: &str, new: &str) -> Result<bool> {
        self.inner.replace_stored_secret(id, expected, new).await
    }
}
