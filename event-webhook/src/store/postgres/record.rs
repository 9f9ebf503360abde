//! The PostgreSQL statements of recording a batch (see `store/record.rs`):
//! one statement text whatever the batch size (arrays through `UNNEST`, not
//! a `VALUES` list), so each is prepared once.

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{PostgresStore, col, i32_of};
use crate::error::Result;
use crate::model::AttemptRecord;
use crate::store::outcome_columns;
use crate::store::record::{RecordSteps, WebhookState};
use crate::store::sql::state_of;

/// How a recording transaction begins: with an asynchronous commit, which
/// returns once the commit is in PostgreSQL's WAL buffers instead of after
/// the WAL is flushed to disk (`synchronous_commit = off` for this
/// transaction only). Its effects are visible to every other session at
/// once, exactly as with a synchronous commit, so claims stay exclusive;
/// what a crash of the *database server* can lose is the last few hundred
/// milliseconds of recorded outcomes (`wal_writer_delay` × 3). Nothing
/// more is at stake: a delivery whose outcome was lost is still claimed,
/// so it is sent again when the lease ends (at-least-once), and its attempt
/// row and webhook counters are written then. Enqueueing, which would lose
/// a delivery, keeps the server's setting.
pub(super) const RECORD_BEGIN: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// A recording transaction.
pub struct PgRecord {
    tx: Transaction<'static, Postgres>,
}

impl PgRecord {
    pub(super) fn new(tx: Transaction<'static, Postgres>) -> Self {
        PgRecord { tx }
    }
}

#[async_trait]
impl RecordSteps for PgRecord {
    async fn webhook_states(&mut self, ids: &[Uuid]) -> Result<Vec<WebhookState>> {
        // `NO KEY UPDATE` still lets the sink insert deliveries (their
        // foreign-key check takes `KEY SHARE`), and keeps the API's and
        // other workers' changes out until the new state is written.
        let rows = sqlx::query(
            "SELECT id, active, failure_count, disabled_reason, last_triggered_at, updated_at \
             FROM webhooks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(state_of::<PostgresStore>).collect()
    }

    async fn finish_deliveries(&mut self, run: &[AttemptRecord]) -> Result<Vec<Uuid>> {
        let outcomes = col(run, outcome_columns);
        Ok(sqlx::query_scalar::<Postgres, Uuid>(
            "UPDATE deliveries d SET status = v.status, attempts = v.attempts, \
             next_attempt_at = v.next_at, last_status_code = v.code, last_error = v.error, \
             delivered_at = v.delivered, claimed_until = NULL, claim_token = NULL \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], \
               $6::int4[], $7::text[], $8::timestamptz[]) \
               AS v(id, token, status, attempts, next_at, code, error, delivered) \
             WHERE d.id = v.id AND d.claim_token = v.token RETURNING d.id",
        )
        .bind(col(run, |r| r.delivery_id))
        .bind(col(run, |r| r.claim_token))
        .bind(col(&outcomes, |o| o.0.as_str()))
        .bind(col(run, |r| i32_of(r.attempt)))
        .bind(col(&outcomes, |o| o.1))
        .bind(col(run, |r| r.status_code.map(i32::from)))
        .bind(col(run, |r| r.error.as_deref()))
        .bind(col(&outcomes, |o| o.2))
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn insert_attempts(&mut self, held: &[&AttemptRecord]) -> Result<()> {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, \
             error) SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], \
             $4::int8[], $5::int4[], $6::text[])",
        )
        .bind(col(held, |r| r.delivery_id))
        .bind(col(held, |r| i32_of(r.attempt)))
        .bind(col(held, |r| r.started_at))
        .bind(col(held, |r| r.duration_ms as i64))
        .bind(col(held, |r| r.status_code.map(i32::from)))
        .bind(col(held, |r| r.error.as_deref()))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn write_webhooks(&mut self, states: &[WebhookState]) -> Result<()> {
        sqlx::query(
            "UPDATE webhooks w SET active = v.active, failure_count = v.count, \
             disabled_reason = v.reason, last_triggered_at = v.last, updated_at = v.updated \
             FROM UNNEST($1::uuid[], $2::bool[], $3::int4[], $4::text[], $5::timestamptz[], \
               $6::timestamptz[]) AS v(id, active, count, reason, last, updated) \
             WHERE w.id = v.id",
        )
        .bind(col(states, |s| s.id))
        .bind(col(states, |s| s.active))
        .bind(col(states, |s| i32_of(s.failure_count)))
        .bind(col(states, |s| s.disabled_reason.as_deref()))
        .bind(col(states, |s| s.last_triggered_at))
        .bind(col(states, |s| s.updated_at))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}
