//! The PostgreSQL store: native `UUID`, `TIMESTAMPTZ`, `TEXT[]` and `JSON`
//! columns.
//!
//! Any number of processes may run workers on one database: a claim locks
//! the rows it takes with `FOR UPDATE SKIP LOCKED`, so concurrent claims
//! never take the same row, and an attempt's result is recorded only while
//! the claim token still matches.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{WebhookStore, candidate_pool, code_of, distinct_runs, status_of, u32_of};
use crate::error::{Result, WebhookError};
use crate::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook, kinds_from_names, kinds_to_names,
};

mod record;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL implementation of [`WebhookStore`].
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, secret, active, max_retries, created_at, \
     updated_at, last_triggered_at, failure_count, disabled_reason";

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, \
     next_attempt_at, last_status_code, last_error, created_at, delivered_at";

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn webhook_of(row: &PgRow) -> Result<Webhook> {
    let names: Vec<String> = row.try_get("events")?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: kinds_from_names(&names)?,
        secret: row.try_get("secret")?,
        active: row.try_get("active")?,
        max_retries: u32_of(row.try_get::<i32, _>("max_retries")?.into(), "max_retries")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_triggered_at: row.try_get("last_triggered_at")?,
        failure_count: u32_of(
            row.try_get::<i32, _>("failure_count")?.into(),
            "failure_count",
        )?,
        disabled_reason: row.try_get("disabled_reason")?,
    })
}

fn delivery_of(row: &PgRow) -> Result<Delivery> {
    let status = status_of(row.try_get::<&str, _>("status")?)?;
    Ok(Delivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        status,
        attempts: u32_of(row.try_get::<i32, _>("attempts")?.into(), "attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_status_code: code_of(
            row.try_get::<Option<i32>, _>("last_status_code")?
                .map(i64::from),
        ),
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        success: status == DeliveryStatus::Succeeded,
    })
}

impl PostgresStore {
    /// Connects to `url` and migrates the database (in the connection's
    /// `search_path` schema).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PgConnectOptions::from_str(url)?).await
    }

    /// Connects to `url` using (and creating when missing) the schema
    /// `schema`: every table of this store lives there. Lets several
    /// services, or tests, share one database.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(WebhookError::invalid(
                "schema",
                "must be non-empty ASCII letters, digits and underscores",
            ));
        }
        let options = PgConnectOptions::from_str(url)?;
        let setup = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&setup)
            .await?;
        setup.close().await;
        Self::connect_with(options.options([("search_path", schema)])).await
    }

    /// Connects with explicit options and migrates.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Self::from_pool(pool).await
    }

    /// Wraps an existing pool and migrates it.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore { pool })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl WebhookStore for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn shared_queue(&self) -> bool {
        true
    }

    async fn create_webhook(&self, w: &Webhook) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret, active, max_retries, created_at, \
             updated_at, last_triggered_at, failure_count, disabled_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(w.id)
        .bind(&w.url)
        .bind(kinds_to_names(&w.events))
        .bind(&w.secret)
        .bind(w.active)
        .bind(i32_of(w.max_retries))
        .bind(w.created_at)
        .bind(w.updated_at)
        .bind(w.last_triggered_at)
        .bind(i32_of(w.failure_count))
        .bind(&w.disabled_reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(webhook_of).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(webhook_of).collect()
    }

    async fn update_webhook(&self, w: &Webhook) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE webhooks SET url = $1, events = $2, secret = $3, active = $4, \
             max_retries = $5, updated_at = $6, last_triggered_at = $7, failure_count = $8, \
             disabled_reason = $9 WHERE id = $10",
        )
        .bind(&w.url)
        .bind(kinds_to_names(&w.events))
        .bind(&w.secret)
        .bind(w.active)
        .bind(i32_of(w.max_retries))
        .bind(w.updated_at)
        .bind(w.last_triggered_at)
        .bind(i32_of(w.failure_count))
        .bind(&w.disabled_reason)
        .bind(w.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let claimed = claim.map_or(0, |c| c.count);
        let n = deliveries.len();
        let (mut ids, mut webhooks, mut events, mut types, mut bodies) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut next_ats, mut created, mut leases, mut tokens) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, d) in deliveries.iter().enumerate() {
            let claim = claim.filter(|_| i < claimed);
            ids.push(d.id);
            webhooks.push(d.webhook_id);
            events.push(d.event_id);
            types.push(d.event_type);
            bodies.push(String::from_utf8_lossy(&d.body).into_owned());
            next_ats.push(d.next_attempt_at);
            created.push(d.created_at);
            leases.push(claim.map(|c| c.lease_until));
            tokens.push(claim.map(|c| c.token));
        }
        // One statement text whatever the batch size (arrays, not a VALUES
        // list), so it is prepared once. Rows of a webhook deleted since the
        // sink looked it up are skipped (failing the whole batch on the
        // foreign key would drop every other webhook's rows with it);
        // `KEY SHARE` waits for a delete in progress, after which that
        // webhook's rows drop out.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
             attempts, next_attempt_at, created_at, claimed_until, claim_token) \
             SELECT v.id, v.webhook_id, v.event_id, v.event_type, v.body::json, 'pending', 0, \
             v.next_at, v.created_at, v.claimed_until, v.claim_token \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
               $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::uuid[]) \
               AS v(id, webhook_id, event_id, event_type, body, next_at, created_at, \
               claimed_until, claim_token) \
             JOIN webhooks w ON w.id = v.webhook_id FOR KEY SHARE OF w",
        )
        .bind(&ids)
        .bind(&webhooks)
        .bind(&events)
        .bind(&types)
        .bind(&bodies)
        .bind(&next_ats)
        .bind(&created)
        .bind(&leases)
        .bind(&tokens)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_claimed(
        &self,
        d: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
             attempts, next_attempt_at, claimed_until, claim_token, created_at) \
             VALUES ($1, $2, $3, $4, $5::json, 'pending', 0, $6, $7, $8, $9)",
        )
        .bind(d.id)
        .bind(d.webhook_id)
        .bind(d.event_id)
        .bind(d.event_type)
        .bind(String::from_utf8_lossy(&d.body).into_owned())
        .bind(d.next_attempt_at)
        .bind(lease_until)
        .bind(token)
        .bind(d.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        let sql =
            format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1 AND webhook_id = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(webhook_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_of).transpose()
    }

    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = $1 \
             AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(status.map(DeliveryStatus::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery_of).collect()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, duration_ms, status_code, error FROM attempts \
             WHERE delivery_id = $1 ORDER BY attempt, id",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: u32_of(r.try_get::<i32, _>("attempt")?.into(), "attempt")?,
                    started_at: r.try_get("started_at")?,
                    duration_ms: r.try_get::<i64, _>("duration_ms")?.max(0) as u64,
                    status_code: code_of(
                        r.try_get::<Option<i32>, _>("status_code")?.map(i64::from),
                    ),
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }

    async fn redeliver(
        &self,
        webhook_id: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Delivery>> {
        let sql = format!(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
             claimed_until = NULL, claim_token = NULL, delivered_at = NULL \
             WHERE id = $2 AND webhook_id = $3 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(id)
            .bind(webhook_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(delivery_of).transpose()
    }

    async fn claim_due(&self, req: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        // Candidates come from the oldest due rows only (an index range
        // scan, whatever the queue length); the ranked subquery keeps at most
        // `per_webhook` per endpoint; the locking SELECT re-checks the due condition on the
        // latest row version and skips rows another worker is claiming.
        let rows = sqlx::query(
            "WITH candidates AS ( \
               SELECT id FROM ( \
                 SELECT id, next_attempt_at, row_number() OVER \
                   (PARTITION BY webhook_id ORDER BY next_attempt_at, id) AS rn \
                 FROM ( \
                   SELECT d.id, d.webhook_id, d.next_attempt_at \
                   FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                   WHERE d.status IN ('pending', 'failed') AND w.active \
                     AND d.next_attempt_at <= $1 \
                     AND (d.claimed_until IS NULL OR d.claimed_until < $1) \
                     AND NOT (d.webhook_id = ANY($2)) \
                   ORDER BY d.next_attempt_at LIMIT $7 \
                 ) oldest \
               ) ranked WHERE rn <= $3 ORDER BY next_attempt_at LIMIT $4 \
             ), locked AS ( \
               SELECT d.id FROM deliveries d JOIN candidates c ON c.id = d.id \
               WHERE d.status IN ('pending', 'failed') \
                 AND (d.claimed_until IS NULL OR d.claimed_until < $1) \
               FOR UPDATE OF d SKIP LOCKED \
             ) \
             UPDATE deliveries SET claimed_until = $5, claim_token = $6 \
             FROM locked WHERE deliveries.id = locked.id \
             RETURNING deliveries.id, deliveries.webhook_id, deliveries.event_id, \
               deliveries.event_type, deliveries.body::text AS body, deliveries.attempts, \
               deliveries.created_at",
        )
        .bind(req.now)
        .bind(&req.exclude)
        .bind(i64::from(req.per_webhook))
        .bind(i64::from(req.limit))
        .bind(req.lease_until)
        .bind(req.token)
        .bind(i64::from(candidate_pool(req)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    id: r.try_get("id")?,
                    webhook_id: r.try_get("webhook_id")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    body: r.try_get("body")?,
                    attempts: u32_of(r.try_get::<i32, _>("attempts")?.into(), "attempts")?,
                    created_at: r.try_get("created_at")?,
                    claim_token: req.token,
                })
            })
            .collect()
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL \
             WHERE claim_token = $1 AND id = ANY($2)",
        )
        .bind(token)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn complete_attempts(&self, records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Lock order: the webhooks first, in id order, then their
        // deliveries, as a `DELETE FROM webhooks` (which cascades to the
        // deliveries) does. Locking the webhooks only after updating the
        // deliveries deadlocks with a concurrent delete: it holds the
        // webhook and waits for a delivery row this transaction updated.
        // `NO KEY UPDATE` still lets the sink insert deliveries (their
        // foreign-key check takes `KEY SHARE`).
        let mut webhooks: Vec<Uuid> = records.iter().map(|r| r.webhook_id).collect();
        webhooks.sort_unstable();
        webhooks.dedup();
        sqlx::query("SELECT id FROM webhooks WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&webhooks)
            .fetch_all(&mut *tx)
            .await?;
        let mut effects = Vec::with_capacity(records.len());
        for run in distinct_runs(records) {
            effects.extend(record::record_run(&mut tx, &records[run]).await?);
        }
        tx.commit().await?;
        Ok(effects)
    }

    async fn recover_in_flight(&self, now: OffsetDateTime) -> Result<u64> {
        // Other live workers may hold claims: free only expired leases.
        let done = sqlx::query(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL \
             WHERE claimed_until < $1 AND status IN ('pending', 'failed')",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM deliveries WHERE status = 'succeeded' AND delivered_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn queue_depth(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'failed') \
             AND next_attempt_at IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }
    async fn stored_secrets(&self) -> Result<Vec<(Uuid, String)>> {
        let rows = sqlx::query("SELECT id, secret FROM webhooks ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("secret")?)))
            .collect()
    }

    async fn replace_stored_secret(&self, id: Uuid, expected: &str, new: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE webhooks SET secret = $1 WHERE id = $2 AND secret = $3")
            .bind(new)
            .bind(id)
            .bind(expected)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
