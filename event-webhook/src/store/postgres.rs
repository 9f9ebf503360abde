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
use event_core::EventKind;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::{Arg, Engine};
use super::{candidate_pool, code_of, u32_of};
use crate::error::{Result, WebhookError};
use crate::model::{BatchClaim, ClaimRequest, NewDelivery, kinds_from_names, kinds_to_names};

mod record;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL implementation of [`WebhookStore`](super::WebhookStore).
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// A count or number as PostgreSQL `INTEGER` (saturating: the values come
/// from `u32` settings and counters far below the limit).
fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// One column of a batch, for an array parameter (`UNNEST`).
fn col<'a, T, U>(items: &'a [T], f: impl FnMut(&'a T) -> U) -> Vec<U> {
    items.iter().map(f).collect()
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

/// `sql` with `args` bound in PostgreSQL's encoding.
fn bound(sql: &'static str, args: &[Arg<'_>]) -> Query<'static, Postgres, PgArguments> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Id(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Small(v) => q.bind(i32_of(v)),
        Arg::Big(v) => q.bind(v),
        Arg::Flag(v) => q.bind(v),
        Arg::Time(v) => q.bind(v),
        Arg::OptTime(v) => q.bind(v),
        Arg::Events(v) => q.bind(kinds_to_names(v)),
    })
}

/// `sql` with the columns every inserted delivery has bound as arrays for
/// `UNNEST`, `$1`–`$8`: id, webhook id, event id, event type, body,
/// next attempt, creation time, trace. The statement binds whatever else
/// it needs from `$9` on.
fn with_delivery_columns(
    sql: &'static str,
    deliveries: &[NewDelivery],
) -> Query<'static, Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(col(deliveries, |d| d.id))
        .bind(col(deliveries, |d| d.webhook_id))
        .bind(col(deliveries, |d| d.event_id))
        .bind(col(deliveries, |d| d.event_type))
        .bind(col(deliveries, |d| {
            String::from_utf8_lossy(&d.body).into_owned()
        }))
        .bind(col(deliveries, |d| d.next_attempt_at))
        .bind(col(deliveries, |d| d.created_at))
        .bind(col(deliveries, |d| d.trace.clone()))
}

#[async_trait]
impl Engine for PostgresStore {
    type Row = PgRow;
    type Record = record::PgRecord;
    const NAME: &'static str = "postgres";
    const SHARED_QUEUE: bool = true;
    const ENQUEUE_CLAIMED: &'static str = "INSERT INTO deliveries (id, webhook_id, \
         event_id, event_type, body, status, attempts, next_attempt_at, claimed_until, \
         claim_token, created_at) VALUES ($1, $2, $3, $4, $5::json, 'pending', 0, $6, $7, $8, $9)";
    // Other live workers may hold claims: free only expired leases.
    const RECOVER: &'static str = "UPDATE deliveries SET claimed_until = NULL, \
         claim_token = NULL WHERE claimed_until < $1 \
         AND status IN ('pending', 'failed')";

    async fn read(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<PgRow>> {
        Ok(bound(sql, args).fetch_all(&self.pool).await?)
    }

    async fn write(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<PgRow>> {
        Ok(bound(sql, args).fetch_all(&self.pool).await?)
    }

    async fn execute(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64> {
        Ok(bound(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        let claimed = claim.map_or(0, |c| c.count);
        let claims: Vec<Option<&BatchClaim>> = (0..deliveries.len())
            .map(|i| claim.filter(|_| i < claimed))
            .collect();
        // One statement (atomic on its own) with one text whatever the
        // batch size (arrays, not a VALUES list), so it is prepared once.
        // Rows of a webhook deleted since the sink looked it up are skipped
        // (failing the whole batch on the foreign key would drop every other
        // webhook's rows with it); `KEY SHARE` waits for a delete in
        // progress, after which that webhook's rows drop out.
        with_delivery_columns(
            "INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
             attempts, next_attempt_at, created_at, trace, claimed_until, claim_token) \
             SELECT v.id, v.webhook_id, v.event_id, v.event_type, v.body::json, 'pending', 0, \
             v.next_at, v.created_at, v.trace, v.claimed_until, v.claim_token \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
               $6::timestamptz[], $7::timestamptz[], $8::text[], $9::timestamptz[], $10::uuid[]) \
               AS v(id, webhook_id, event_id, event_type, body, next_at, created_at, trace, \
               claimed_until, claim_token) \
             JOIN webhooks w ON w.id = v.webhook_id FOR KEY SHARE OF w",
            deliveries,
        )
        .bind(col(&claims, |c| c.map(|c| c.lease_until)))
        .bind(col(&claims, |c| c.map(|c| c.token)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn enqueue_derived(
        &self,
        deliveries: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<u64> {
        // One statement: the events not derived before are recorded (in
        // id order, so two instances deriving overlapping batches take the
        // keys in one order), and only their rows are inserted. A
        // concurrent derivation of the same event waits on its key and then
        // finds it taken.
        let done = with_delivery_columns(
            "WITH fresh AS ( \
               INSERT INTO webhook_derived (event_id, derived_at) \
               SELECT e, $9 FROM (SELECT DISTINCT e FROM UNNEST($3::uuid[]) AS e) d \
               ORDER BY e \
               ON CONFLICT (event_id) DO NOTHING RETURNING event_id \
             ) \
             INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
             attempts, next_attempt_at, created_at, trace) \
             SELECT v.id, v.webhook_id, v.event_id, v.event_type, v.body::json, 'pending', 0, \
             v.next_at, v.created_at, v.trace \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
               $6::timestamptz[], $7::timestamptz[], $8::text[]) \
               AS v(id, webhook_id, event_id, event_type, body, next_at, created_at, trace) \
             JOIN fresh f ON f.event_id = v.event_id \
             JOIN webhooks w ON w.id = v.webhook_id FOR KEY SHARE OF w",
            deliveries,
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<PgRow>> {
        // Candidates come from the oldest due rows only (an index range
        // scan, whatever the queue length); the ranked subquery keeps at most
        // `per_webhook` per endpoint; the locking SELECT re-checks the due
        // condition on the latest row version and skips rows another worker
        // is claiming.
        Ok(sqlx::query(
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
               deliveries.created_at, deliveries.trace",
        )
        .bind(req.now)
        .bind(&req.exclude)
        .bind(i64::from(req.per_webhook))
        .bind(i64::from(req.limit))
        .bind(req.lease_until)
        .bind(req.token)
        .bind(i64::from(candidate_pool(req)))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
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

    async fn begin_record(&self) -> Result<record::PgRecord> {
        // Outcome bookkeeping only, so the commit does not wait for its WAL
        // flush (see `record::RECORD_BEGIN`).
        Ok(record::PgRecord::new(
            self.pool.begin_with(record::RECORD_BEGIN).await?,
        ))
    }

    fn id(row: &PgRow, column: &str) -> Result<Uuid> {
        Ok(row.try_get(column)?)
    }

    fn text(row: &PgRow, column: &str) -> Result<String> {
        Ok(row.try_get(column)?)
    }

    fn opt_text(row: &PgRow, column: &str) -> Result<Option<String>> {
        Ok(row.try_get(column)?)
    }

    fn flag(row: &PgRow, column: &str) -> Result<bool> {
        Ok(row.try_get(column)?)
    }

    fn small(row: &PgRow, column: &str) -> Result<u32> {
        u32_of(row.try_get::<i32, _>(column)?.into(), column)
    }

    fn code(row: &PgRow, column: &str) -> Result<Option<u16>> {
        Ok(code_of(
            row.try_get::<Option<i32>, _>(column)?.map(i64::from),
        ))
    }

    fn big(row: &PgRow, column: &str) -> Result<i64> {
        Ok(row.try_get(column)?)
    }

    fn time(row: &PgRow, column: &str) -> Result<OffsetDateTime> {
        Ok(row.try_get(column)?)
    }

    fn opt_time(row: &PgRow, column: &str) -> Result<Option<OffsetDateTime>> {
        Ok(row.try_get(column)?)
    }

    fn events(row: &PgRow, column: &str) -> Result<Vec<EventKind>> {
        kinds_from_names(&row.try_get::<Vec<String>, _>(column)?)
    }
}
