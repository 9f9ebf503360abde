//! Recording a batch of attempt results, the same steps on both engines:
//! lock the batch's webhooks and read their state, finish the deliveries
//! whose claim still holds, insert their attempts, then write each touched
//! webhook's new state once. The webhook's failure streak and disabling
//! depend on the order of its results, so they are worked out here, record
//! by record, from the state read under the lock; the database sees one row
//! per webhook (in one set-based statement) however many results it had.
//! The effect is exactly that of recording the results one by one, in order.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{GONE_REASON, dead_streak_reason, distinct_runs};
use crate::error::Result;
use crate::model::{AttemptEffect, AttemptOutcome, AttemptRecord};

/// The columns of a webhook that recording results changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookState {
    /// The webhook.
    pub id: Uuid,
    /// Whether deliveries are made.
    pub active: bool,
    /// Consecutive dead deliveries.
    pub failure_count: u32,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When an attempt was last made.
    pub last_triggered_at: Option<OffsetDateTime>,
    /// Last change of `active` / `disabled_reason` by the worker or the API.
    pub updated_at: OffsetDateTime,
}

impl WebhookState {
    /// Applies one attempt whose claim held; returns whether it disabled the
    /// webhook. The rules of the single-row `UPDATE`s this replaces: a
    /// success ends the streak; a dead delivery extends it and, at the
    /// limit, disables the webhook (naming the streak only if it was still
    /// active); 410 Gone disables it whatever its state.
    fn apply(&mut self, r: &AttemptRecord) -> bool {
        self.last_triggered_at = Some(r.started_at);
        match r.outcome {
            AttemptOutcome::Succeeded => {
                self.failure_count = 0;
                false
            }
            AttemptOutcome::Retry(_) | AttemptOutcome::FailedOnce => false,
            AttemptOutcome::Gone => {
                self.active = false;
                self.disabled_reason = Some(GONE_REASON.to_owned());
                self.updated_at = r.started_at;
                true
            }
            AttemptOutcome::Dead => {
                let limit = r.disable_after_dead;
                self.failure_count = self.failure_count.saturating_add(1);
                if self.failure_count >= limit {
                    if self.active {
                        self.disabled_reason = Some(dead_streak_reason(limit));
                    }
                    self.active = false;
                }
                self.updated_at = r.started_at;
                // Only the attempt that reaches the limit reports it.
                !self.active && self.failure_count == limit
            }
        }
    }
}

/// The statements of one engine's recording transaction.
#[async_trait]
pub trait RecordSteps: Send + Sized {
    /// Locks the webhooks `ids` (sorted), in id order, and reads their
    /// state; a deleted webhook is missing from the answer.
    async fn webhook_states(&mut self, ids: &[Uuid]) -> Result<Vec<WebhookState>>;

    /// Stores the new state of the deliveries of `run` (no delivery twice)
    /// whose claim still holds and frees them; returns those deliveries.
    async fn finish_deliveries(&mut self, run: &[AttemptRecord]) -> Result<Vec<Uuid>>;

    /// Inserts attempt rows, in order.
    async fn insert_attempts(&mut self, held: &[&AttemptRecord]) -> Result<()>;

    /// Writes the webhooks' new states (sorted by id).
    async fn write_webhooks(&mut self, states: &[WebhookState]) -> Result<()>;

    /// Commits.
    async fn commit(self) -> Result<()>;
}

/// Records `records` (not empty) in `tx` and commits. A record whose claim
/// was lost writes nothing and reports [`AttemptEffect::lost_claim`].
pub async fn record_batch<T: RecordSteps>(
    mut tx: T,
    records: &[AttemptRecord],
) -> Result<Vec<AttemptEffect>> {
    // Lock order: the webhooks first, in id order, then their deliveries,
    // as a `DELETE FROM webhooks` (which cascades to the deliveries) does.
    // Locking a webhook only after updating its deliveries deadlocks with a
    // concurrent delete: that holds the webhook and waits for a delivery row
    // this transaction updated.
    let mut ids: Vec<Uuid> = records.iter().map(|r| r.webhook_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states: BTreeMap<Uuid, WebhookState> = tx
        .webhook_states(&ids)
        .await?
        .into_iter()
        .map(|s| (s.id, s))
        .collect();
    // A delivery re-claimed after its lease expired could show up twice in
    // one batch: each run holds it at most once, so the second record meets
    // the claim the first one released, as it would one by one.
    let mut held = vec![false; records.len()];
    for run in distinct_runs(records) {
        let finished: HashSet<Uuid> = tx
            .finish_deliveries(&records[run.clone()])
            .await?
            .into_iter()
            .collect();
        for i in run {
            held[i] = finished.contains(&records[i].delivery_id);
        }
    }
    let attempts: Vec<&AttemptRecord> = records
        .iter()
        .zip(&held)
        .filter_map(|(r, &h)| h.then_some(r))
        .collect();
    if !attempts.is_empty() {
        tx.insert_attempts(&attempts).await?;
    }
    let mut touched = HashSet::new();
    let effects: Vec<AttemptEffect> = records
        .iter()
        .zip(&held)
        .map(|(r, &held)| {
            // A held claim whose webhook is missing cannot happen (deleting
            // the webhook deletes the delivery); nothing to update then.
            let state = states.get_mut(&r.webhook_id).filter(|_| held);
            let webhook_disabled = state.is_some_and(|s| {
                touched.insert(r.webhook_id);
                s.apply(r)
            });
            AttemptEffect {
                lost_claim: !held,
                webhook_disabled,
            }
        })
        .collect();
    let changed: Vec<WebhookState> = states
        .into_values()
        .filter(|s| touched.contains(&s.id))
        .collect();
    if !changed.is_empty() {
        tx.write_webhooks(&changed).await?;
    }
    tx.commit().await?;
    Ok(effects)
}
