//! The SQLite statements of recording a batch (see `store/record.rs`):
//! `VALUES` lists of at most [`RECORD_CHUNK`] rows.

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

use super::{SqliteStore, ms};
use crate::error::Result;
use crate::model::AttemptRecord;
use crate::store::outcome_columns;
use crate::store::record::{RecordSteps, WebhookState};
use crate::store::sql::{STATE_COLUMNS, state_of};

/// Rows per set-based statement (at most eight parameters each; SQLite
/// caps bound parameters per statement).
const RECORD_CHUNK: usize = 500;

/// A recording transaction on the writer connection.
pub struct SqliteRecord {
    tx: Transaction<'static, Sqlite>,
    /// The store's write gate, held until the transaction ends (declared
    /// after `tx`, so dropped after it).
    _gate: OwnedMutexGuard<()>,
}

impl SqliteRecord {
    pub(super) fn new(tx: Transaction<'static, Sqlite>, gate: OwnedMutexGuard<()>) -> Self {
        SqliteRecord { tx, _gate: gate }
    }
}

#[async_trait]
impl RecordSteps for SqliteRecord {
    async fn webhook_states(&mut self, ids: &[Uuid]) -> Result<Vec<WebhookState>> {
        // No row locks in SQLite: the transaction began `IMMEDIATE`, so no
        // other connection writes until it ends.
        let mut states = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(RECORD_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new("SELECT ");
            qb.push(STATE_COLUMNS).push(" FROM webhooks WHERE id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(") ORDER BY id");
            for row in qb.build().fetch_all(&mut *self.tx).await? {
                states.push(state_of::<SqliteStore>(&row)?);
            }
        }
        Ok(states)
    }

    async fn finish_deliveries(&mut self, run: &[AttemptRecord]) -> Result<Vec<Uuid>> {
        let mut held = Vec::with_capacity(run.len());
        for chunk in run.chunks(RECORD_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "WITH v(vid, vtoken, vstatus, vattempts, vnext, vcode, verror, vdelivered) AS (",
            );
            qb.push_values(chunk, |mut b, r| {
                let (status, next_at, delivered_at) = outcome_columns(r);
                b.push_bind(r.delivery_id)
                    .push_bind(r.claim_token)
                    .push_bind(status.as_str())
                    .push_bind(i64::from(r.attempt))
                    .push_bind(next_at.map(ms))
                    .push_bind(r.status_code.map(i64::from))
                    .push_bind(r.error.clone())
                    .push_bind(delivered_at.map(ms));
            });
            qb.push(
                ") UPDATE deliveries SET status = v.vstatus, attempts = v.vattempts, \
                 next_attempt_at = v.vnext, last_status_code = v.vcode, last_error = v.verror, \
                 delivered_at = v.vdelivered, claimed_until = NULL, claim_token = NULL \
                 FROM v WHERE deliveries.id = v.vid AND deliveries.claim_token = v.vtoken \
                 RETURNING id",
            );
            for row in qb.build().fetch_all(&mut *self.tx).await? {
                held.push(row.try_get("id")?);
            }
        }
        Ok(held)
    }

    async fn insert_attempts(&mut self, held: &[&AttemptRecord]) -> Result<()> {
        for chunk in held.chunks(RECORD_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, \
                 status_code, error) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.delivery_id)
                    .push_bind(i64::from(r.attempt))
                    .push_bind(ms(r.started_at))
                    .push_bind(r.duration_ms as i64)
                    .push_bind(r.status_code.map(i64::from))
                    .push_bind(r.error.clone());
            });
            qb.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn write_webhooks(&mut self, states: &[WebhookState]) -> Result<()> {
        for chunk in states.chunks(RECORD_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "WITH v(vid, vactive, vcount, vreason, vlast, vupdated) AS (",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(s.id)
                    .push_bind(s.active)
                    .push_bind(i64::from(s.failure_count))
                    .push_bind(s.disabled_reason.clone())
                    .push_bind(s.last_triggered_at.map(ms))
                    .push_bind(ms(s.updated_at));
            });
            qb.push(
                ") UPDATE webhooks SET active = v.vactive, failure_count = v.vcount, \
                 disabled_reason = v.vreason, last_triggered_at = v.vlast, \
                 updated_at = v.vupdated FROM v WHERE webhooks.id = v.vid",
            );
            qb.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
