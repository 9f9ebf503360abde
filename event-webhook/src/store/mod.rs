//! Durable storage: webhooks, deliveries (the queue and the log in one
//! table) and attempts.
//!
//! # Model
//!
//! A delivery row is written once per (event, webhook) when the sink
//! accepts a batch, in one transaction per batch. The worker *claims* due
//! rows by stamping them with a claim token and a lease (`claimed_until`);
//! the result of an attempt (attempt row, delivery state, webhook counters)
//! is recorded only while the claim still holds. The worker records the
//! results of many attempts together: [`WebhookStore::complete_attempts`]
//! writes a whole batch in one transaction with a fixed number of set-based
//! statements (one commit, a handful of round trips, however many results;
//! one row per webhook, not per attempt), with exactly the effect of
//! recording them one by one in order. A process that dies leaves its
//! claims behind; they expire
//! at the end of the lease, and [`WebhookStore::recover_in_flight`] frees
//! them at start-up, so nothing is lost (at-least-once).
//!
//! Two engines implement [`WebhookStore`]: [`SqliteStore`] (default, a
//! file, one worker process per database) and, with the `postgres` feature,
//! [`PostgresStore`] (any number of workers: claims use
//! `FOR UPDATE SKIP LOCKED`). [`connect`] picks one by URL scheme. Both
//! are the same steps (`sql.rs`, `record.rs`) over a small engine layer
//! that runs statements and reads columns in each engine's encoding.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Result, WebhookError};
use crate::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook,
};

#[cfg(feature = "postgres")]
mod postgres;
mod record;
pub(crate) mod sealed;
mod sql;
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// See [`WebhookStore::webhooks_fingerprint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhooksFingerprint {
    /// How many webhooks exist (active or not).
    pub count: u64,
    /// The newest `updated_at`; `None` without webhooks.
    pub updated_at: Option<OffsetDateTime>,
}

/// The storage the webhook service needs. Implemented for SQLite and
/// PostgreSQL; the same conformance suite runs against both.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Which engine (`sqlite`, `postgres`), for logs.
    fn engine(&self) -> &'static str;

    /// Whether several processes may run workers on this store at once.
    fn shared_queue(&self) -> bool;

    /// Inserts a webhook.
    async fn create_webhook(&self, webhook: &Webhook) -> Result<()>;

    /// One webhook.
    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>>;

    /// Every webhook, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<Webhook>>;

    /// How many webhooks are registered (for `max_webhooks`). The default
    /// lists them; the SQL stores count in the database.
    async fn count_webhooks(&self) -> Result<u64> {
        Ok(self.list_webhooks().await?.len() as u64)
    }

    /// The sequence of the last event whose deliveries are queued, as last
    /// recorded with [`set_log_cursor`](Self::set_log_cursor): where a
    /// catch-up from the event log resumes after a restart. `None` when
    /// never recorded. The default records nothing.
    async fn log_cursor(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Records the log cursor; it only moves forward (a lower `seq` than
    /// the stored one changes nothing).
    async fn set_log_cursor(&self, seq: u64) -> Result<()> {
        let _ = seq;
        Ok(())
    }

    /// Replaces a webhook's fields; `false` when it does not exist.
    async fn update_webhook(&self, webhook: &Webhook) -> Result<bool>;

    /// Deletes a webhook with its deliveries and attempts; `false` when it
    /// did not exist.
    async fn delete_webhook(&self, id: Uuid) -> Result<bool>;

    /// Queues deliveries, all in one transaction. Rows of a webhook that
    /// no longer exists (deleted since the caller looked it up) are skipped.
    async fn enqueue(&self, deliveries: &[NewDelivery]) -> Result<()> {
        self.enqueue_claiming(deliveries, None).await
    }

    /// Queues deliveries, all in one transaction, the first `claim.count` of
    /// them already claimed with `claim.token` until `claim.lease_until`: a
    /// worker in the queuing process takes those straight from the sink,
    /// without a claim query. Rows of a webhook that no longer exists are
    /// skipped.
    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()>;

    /// Queues the deliveries of events derived from the event stream (see
    /// [`Deriver::derive`](crate::Deriver::derive)), all in one
    /// transaction, and records their events as derived at `now`; rows of
    /// an event recorded by an earlier call are skipped, so a repeated
    /// derivation queues nothing twice. Returns how many rows it queued.
    /// Rows of a webhook that no longer exists are skipped.
    ///
    /// The default queues every row ([`enqueue`](Self::enqueue)): at least
    /// once; the built-in stores record the events.
    async fn enqueue_derived(
        &self,
        deliveries: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<u64> {
        let _ = now;
        self.enqueue(deliveries).await?;
        Ok(deliveries.len() as u64)
    }

    /// A fingerprint of the webhook list: how many webhooks exist and the
    /// newest `updated_at` among them (every registration and update sets
    /// it). Equal fingerprints mean no webhook was created or changed in
    /// between. `None` when the store cannot tell cheaply (the default).
    async fn webhooks_fingerprint(&self) -> Result<Option<WebhooksFingerprint>> {
        Ok(None)
    }

    /// Forgets the events [`enqueue_derived`](Self::enqueue_derived)
    /// recorded before `before`; returns how many. The default records
    /// none.
    async fn prune_derived(&self, before: OffsetDateTime) -> Result<u64> {
        let _ = before;
        Ok(0)
    }

    /// Queues one delivery already claimed by the caller (a test delivery
    /// sent right away).
    async fn enqueue_claimed(
        &self,
        delivery: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()>;

    /// One delivery of one webhook.
    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>>;

    /// A webhook's deliveries, newest first.
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>>;

    /// A delivery's attempts, oldest first.
    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>>;

    /// Re-queues a delivery (whatever its status) with a fresh retry
    /// schedule; `None` when it does not exist.
    async fn redeliver(
        &self,
        webhook_id: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Delivery>>;

    /// Claims due deliveries of active webhooks.
    async fn claim_due(&self, request: &ClaimRequest) -> Result<Vec<ClaimedDelivery>>;

    /// Gives claimed rows back unattempted.
    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()>;

    /// Records attempts and their deliveries' new states, all in one
    /// transaction. A record whose claim was lost writes nothing and reports
    /// [`AttemptEffect::lost_claim`].
    async fn complete_attempts(&self, records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>>;

    /// Records one attempt (see [`complete_attempts`](Self::complete_attempts)).
    async fn complete_attempt(&self, record: &AttemptRecord) -> Result<AttemptEffect> {
        let effects = self.complete_attempts(std::slice::from_ref(record)).await?;
        effects
            .into_iter()
            .next()
            .ok_or_else(|| WebhookError::Corrupt("no effect for a recorded attempt".to_owned()))
    }

    /// Frees the claims of dead processes; returns how many rows were freed.
    async fn recover_in_flight(&self, now: OffsetDateTime) -> Result<u64>;

    /// Deletes succeeded deliveries delivered before `before`.
    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64>;

    /// Deliveries waiting to be sent (pending or scheduled for retry).
    async fn queue_depth(&self) -> Result<u64>;

    /// Every webhook's id and secret exactly as stored (sealed or not), for
    /// re-sealing (see [`secret_key`](crate::secret_key)). The default reads
    /// them through [`list_webhooks`](Self::list_webhooks).
    async fn stored_secrets(&self) -> Result<Vec<(Uuid, String)>> {
        Ok(self
            .list_webhooks()
            .await?
            .into_iter()
            .map(|w| (w.id, w.secret))
            .collect())
    }

    /// Replaces a webhook's stored secret with `new` if it is still
    /// `expected` (a compare-and-set, so a concurrent change made by the API
    /// or another instance is never overwritten); whether it was replaced.
    /// The default is a read followed by [`update_webhook`](Self::update_webhook),
    /// not atomic; the built-in stores use one conditional `UPDATE`.
    async fn replace_stored_secret(&self, id: Uuid, expected: &str, new: &str) -> Result<bool> {
        match self.get_webhook(id).await? {
            Some(mut w) if w.secret == expected => {
                w.secret = new.to_owned();
                self.update_webhook(&w).await
            }
            _ => Ok(false),
        }
    }
}

/// Opens the store named by a database URL and runs its migrations:
/// `sqlite:` / `sqlite://` (a file, created when missing; `sqlite::memory:`
/// for tests), or with the `postgres` feature `postgres://` /
/// `postgresql://`.
pub async fn connect(url: &str) -> Result<Arc<dyn WebhookStore>> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::connect(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(PostgresStore::connect(url).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(WebhookError::UnsupportedDatabase(
            "postgres URLs need the `postgres` feature".to_owned(),
        ));
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(WebhookError::UnsupportedDatabase(format!(
        "scheme {scheme:?} (expected sqlite: or postgres://)"
    )))
}

pub(crate) fn u32_of(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| WebhookError::Corrupt(format!("{what} out of range: {v}")))
}

pub(crate) fn status_of(s: &str) -> Result<DeliveryStatus> {
    DeliveryStatus::parse(s).ok_or_else(|| WebhookError::Corrupt(format!("status {s:?}")))
}

pub(crate) fn code_of(v: Option<i64>) -> Option<u16> {
    v.and_then(|c| u16::try_from(c).ok())
}

/// The delivery's new columns for an outcome:
/// `(status, next_attempt_at, delivered_at)`.
pub(crate) fn outcome_columns(
    record: &AttemptRecord,
) -> (
    DeliveryStatus,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
) {
    use crate::model::AttemptOutcome::*;
    let done = record.started_at + time::Duration::milliseconds(record.duration_ms as i64);
    match record.outcome {
        Succeeded => (DeliveryStatus::Succeeded, None, Some(done)),
        Retry(at) => (DeliveryStatus::Failed, Some(at), None),
        Dead | Gone => (DeliveryStatus::Dead, None, None),
        FailedOnce => (DeliveryStatus::Failed, None, None),
    }
}

/// Splits a batch of attempt records into consecutive runs in which no
/// delivery appears twice, so each run can be written with set-based
/// statements (a delivery re-claimed after its lease expired could, in
/// principle, show up twice in one batch; its records must apply in order).
pub(crate) fn distinct_runs(records: &[AttemptRecord]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = 0;
    for (i, r) in records.iter().enumerate() {
        if !seen.insert(r.delivery_id) {
            runs.push(start..i);
            seen.clear();
            seen.insert(r.delivery_id);
            start = i;
        }
    }
    if start < records.len() {
        runs.push(start..records.len());
    }
    runs
}

/// How many of the oldest due rows a claim considers.
pub(crate) fn candidate_pool(req: &ClaimRequest) -> u32 {
    req.limit.saturating_mul(4).max(64)
}

/// Reason stored when a webhook is disabled after too many dead deliveries.
pub(crate) fn dead_streak_reason(n: u32) -> String {
    format!("disabled after {n} consecutive failed deliveries")
}

/// Reason stored when the endpoint answered 410 Gone.
pub(crate) const GONE_REASON: &str = "endpoint answered 410 Gone";
