//! The SQLite store: one file, WAL journal, times as unix milliseconds.
//!
//! SQLite admits one writer at a time, so a claim (`UPDATE … RETURNING` over
//! the due rows) is atomic without row locks. The store writes through one
//! dedicated connection, queued behind an in-process gate: the sink, the
//! claims and the result recorder take turns the moment the previous write
//! commits instead of meeting `SQLITE_BUSY` and sleeping in the busy
//! handler, and the writer's page cache stays warm (another connection's
//! commit would invalidate it). Reads (the API) use a small pool of their
//! own and never wait for the writer (WAL).
//!
//! # Durability
//!
//! Commits use `synchronous = NORMAL`, which in WAL mode means a commit
//! appends to the write-ahead log without waiting for `fsync`; the log is
//! synced at checkpoints. A committed delivery or result survives the crash
//! or `SIGKILL` of the process (the log is in the operating system's page
//! cache and is replayed at the next open), which is the failure the queue
//! is built for; a power loss or kernel crash can lose the last commits
//! before a checkpoint (the database itself stays consistent). A host that
//! needs commits to survive power loss too can open its own pool with
//! `synchronous = FULL` and pass it to [`SqliteStore::from_pool`], at the
//! cost of an `fsync` per transaction.
//!
//! Only one process should run a worker
//! on a database: [`recover_in_flight`](WebhookStore::recover_in_flight)
//! frees *every* claim at start-up, taking any claimed row to be the
//! leftover of a dead process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{WebhookStore, candidate_pool, code_of, distinct_runs, status_of, u32_of};
use crate::error::{Result, WebhookError};
use crate::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook, kinds_from_names, kinds_to_names,
};

mod record;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per INSERT statement (SQLite caps bound parameters per statement).
const INSERT_CHUNK: usize = 500;

/// The SQLite implementation of [`WebhookStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes: one connection for a file (the same pool as `pool` for an
    /// in-memory database or a pool given to [`from_pool`](Self::from_pool)).
    writer: SqlitePool,
    /// Serializes this process's write transactions. SQLite admits one
    /// writer at a time; without the gate a second writer meets
    /// `SQLITE_BUSY` and sleeps in the busy handler (milliseconds at a time)
    /// instead of starting the moment the first one commits.
    write: Arc<tokio::sync::Mutex<()>>,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|e| WebhookError::Corrupt(format!("timestamp {v}: {e}")))
}

fn opt_from_ms(v: Option<i64>) -> Result<Option<OffsetDateTime>> {
    v.map(from_ms).transpose()
}

const WEBHOOK_COLUMNS: &str = "id, url, events, secret, active, max_retries, created_at, \
     updated_at, last_triggered_at, failure_count, disabled_reason";

const DELIVERY_COLUMNS: &str = "id, webhook_id, event_id, event_type, status, attempts, \
     next_attempt_at, last_status_code, last_error, created_at, delivered_at";

fn webhook_of(row: &SqliteRow) -> Result<Webhook> {
    let events: String = row.try_get("events")?;
    let names: Vec<String> =
        serde_json::from_str(&events).map_err(|e| WebhookError::Corrupt(format!("events: {e}")))?;
    Ok(Webhook {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: kinds_from_names(&names)?,
        secret: row.try_get("secret")?,
        active: row.try_get("active")?,
        max_retries: u32_of(row.try_get("max_retries")?, "max_retries")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
        last_triggered_at: opt_from_ms(row.try_get("last_triggered_at")?)?,
        failure_count: u32_of(row.try_get("failure_count")?, "failure_count")?,
        disabled_reason: row.try_get("disabled_reason")?,
    })
}

fn delivery_of(row: &SqliteRow) -> Result<Delivery> {
    let status = status_of(row.try_get::<&str, _>("status")?)?;
    Ok(Delivery {
        id: row.try_get("id")?,
        webhook_id: row.try_get("webhook_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        status,
        attempts: u32_of(row.try_get("attempts")?, "attempts")?,
        next_attempt_at: opt_from_ms(row.try_get("next_attempt_at")?)?,
        last_status_code: code_of(row.try_get("last_status_code")?),
        last_error: row.try_get("last_error")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        delivered_at: opt_from_ms(row.try_get("delivered_at")?)?,
        success: status == DeliveryStatus::Succeeded,
    })
}

fn events_json(webhook: &Webhook) -> String {
    serde_json::Value::from(kinds_to_names(&webhook.events)).to_string()
}

/// Owner-only access (0600) to a database file: created so when `create`
/// and missing, narrowed when it exists with more. A no-op off Unix.
fn restrict_permissions(path: &std::path::Path, create: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let failed = |what: &'static str| {
            move |source: std::io::Error| WebhookError::DatabaseFile {
                path: path.display().to_string(),
                what,
                source,
            }
        };
        if create {
            // `create_new`: an existing file is never created over.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed("cannot create it")(e)),
            }
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed("cannot restrict its permissions to 0600"))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("cannot read its permissions")(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = (path, create);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` and migrates it.
    pub async fn connect(url: &str) -> Result<Self> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if memory {
            // An in-memory database exists per connection: keep exactly one.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            return Self::from_pool(pool).await;
        }
        // The file holds webhook secrets: owner-only before SQLite opens
        // it (created 0600 when missing, tightened when it exists); SQLite
        // gives its -wal and -shm files the database file's mode, and they
        // are tightened again below in case they predate this.
        let file = options.get_filename().to_path_buf();
        restrict_permissions(&file, true)?;
        // WAL + NORMAL: durable against a crash of the process (see the
        // module docs). Pages are read through a memory map rather than
        // copied by `pread`.
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .pragma("mmap_size", "268435456");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone().pragma("cache_size", "-32768"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = file.clone().into_os_string();
            side.push(suffix);
            restrict_permissions(std::path::Path::new(&side), false)?;
        }
        Ok(SqliteStore {
            pool,
            writer,
            write: Arc::default(),
        })
    }

    /// Wraps an existing pool (used for reads and writes) and migrates it.
    /// The caller owns the file and its permissions.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            writer: pool.clone(),
            pool,
            write: Arc::default(),
        })
    }

    /// The pool reads go through.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl WebhookStore for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn shared_queue(&self) -> bool {
        false
    }

    async fn create_webhook(&self, w: &Webhook) -> Result<()> {
        let _write = self.write.lock().await;
        sqlx::query(
            "INSERT INTO webhooks (id, url, events, secret, active, max_retries, created_at, \
             updated_at, last_triggered_at, failure_count, disabled_reason) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(w.id)
        .bind(&w.url)
        .bind(events_json(w))
        .bind(&w.secret)
        .bind(w.active)
        .bind(i64::from(w.max_retries))
        .bind(ms(w.created_at))
        .bind(ms(w.updated_at))
        .bind(w.last_triggered_at.map(ms))
        .bind(i64::from(w.failure_count))
        .bind(&w.disabled_reason)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?");
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
        let _write = self.write.lock().await;
        let done = sqlx::query(
            "UPDATE webhooks SET url = ?, events = ?, secret = ?, active = ?, max_retries = ?, \
             updated_at = ?, last_triggered_at = ?, failure_count = ?, disabled_reason = ? \
             WHERE id = ?",
        )
        .bind(&w.url)
        .bind(events_json(w))
        .bind(&w.secret)
        .bind(w.active)
        .bind(i64::from(w.max_retries))
        .bind(ms(w.updated_at))
        .bind(w.last_triggered_at.map(ms))
        .bind(i64::from(w.failure_count))
        .bind(&w.disabled_reason)
        .bind(w.id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool> {
        let _write = self.write.lock().await;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        let _write = self.write.lock().await;
        if deliveries.is_empty() {
            return Ok(());
        }
        let claimed = claim.map_or(0, |c| c.count);
        let mut tx = self.writer.begin().await?;
        for (n, chunk) in deliveries.chunks(INSERT_CHUNK).enumerate() {
            // Rows of a webhook deleted since the sink looked it up are
            // skipped: failing the whole batch on the foreign key would drop
            // every other webhook's rows with it.
            let mut qb = QueryBuilder::<Sqlite>::new(
                "WITH v(id, webhook_id, event_id, event_type, body, status, attempts, \
                 next_attempt_at, created_at, claimed_until, claim_token) AS (",
            );
            let mut i = n * INSERT_CHUNK;
            qb.push_values(chunk, |mut b, d| {
                let claim = claim.filter(|_| i < claimed);
                i += 1;
                b.push_bind(d.id)
                    .push_bind(d.webhook_id)
                    .push_bind(d.event_id)
                    .push_bind(d.event_type)
                    .push_bind(String::from_utf8_lossy(&d.body).into_owned())
                    .push_bind("pending")
                    .push_bind(0_i64)
                    .push_bind(d.next_attempt_at.map(ms))
                    .push_bind(ms(d.created_at))
                    .push_bind(claim.map(|c| ms(c.lease_until)))
                    .push_bind(claim.map(|c| c.token));
            });
            qb.push(
                ") INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
                 attempts, next_attempt_at, created_at, claimed_until, claim_token) \
                 SELECT * FROM v WHERE v.webhook_id IN (SELECT id FROM webhooks)",
            );
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_claimed(
        &self,
        d: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()> {
        let _write = self.write.lock().await;
        sqlx::query(
            "INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
             attempts, next_attempt_at, claimed_until, claim_token, created_at) \
             VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
        )
        .bind(d.id)
        .bind(d.webhook_id)
        .bind(d.event_id)
        .bind(d.event_type)
        .bind(String::from_utf8_lossy(&d.body).into_owned())
        .bind(d.next_attempt_at.map(ms))
        .bind(ms(lease_until))
        .bind(token)
        .bind(ms(d.created_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        let sql =
            format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ? AND webhook_id = ?");
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
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = ? \
             AND (? IS NULL OR status = ?) ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        let status = status.map(DeliveryStatus::as_str);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(status)
            .bind(status)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(delivery_of).collect()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, duration_ms, status_code, error FROM attempts \
             WHERE delivery_id = ? ORDER BY attempt, id",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: u32_of(r.try_get("attempt")?, "attempt")?,
                    started_at: from_ms(r.try_get("started_at")?)?,
                    duration_ms: r.try_get::<i64, _>("duration_ms")?.max(0) as u64,
                    status_code: code_of(r.try_get("status_code")?),
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
        let _write = self.write.lock().await;
        let sql = format!(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, \
             claimed_until = NULL, claim_token = NULL, delivered_at = NULL \
             WHERE id = ? AND webhook_id = ? RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ms(now))
            .bind(id)
            .bind(webhook_id)
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(delivery_of).transpose()
    }

    async fn claim_due(&self, req: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        let _write = self.write.lock().await;
        let now = ms(req.now);
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE deliveries SET claimed_until = ");
        // Candidates come from the oldest due rows only (an index range
        // scan), so a claim costs the same however long the queue is; the
        // per-webhook cap is applied among them.
        qb.push_bind(ms(req.lease_until))
            .push(", claim_token = ")
            .push_bind(req.token)
            .push(
                " WHERE id IN (SELECT id FROM (SELECT id, next_attempt_at, row_number() \
                 OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, id) AS rn FROM \
                 (SELECT d.id, d.webhook_id, d.next_attempt_at \
                 FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                 WHERE d.status IN ('pending', 'failed') AND w.active = 1 \
                 AND d.next_attempt_at <= ",
            )
            .push_bind(now)
            .push(" AND (d.claimed_until IS NULL OR d.claimed_until < ")
            .push_bind(now)
            .push(")");
        if !req.exclude.is_empty() {
            qb.push(" AND d.webhook_id NOT IN (");
            let mut list = qb.separated(", ");
            for id in &req.exclude {
                list.push_bind(*id);
            }
            qb.push(")");
        }
        qb.push(" ORDER BY d.next_attempt_at LIMIT ")
            .push_bind(i64::from(candidate_pool(req)))
            .push(")) WHERE rn <= ")
            .push_bind(i64::from(req.per_webhook))
            .push(" ORDER BY next_attempt_at LIMIT ")
            .push_bind(i64::from(req.limit))
            .push(") RETURNING id, webhook_id, event_id, event_type, body, attempts, created_at");
        let rows = qb.build().fetch_all(&self.writer).await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedDelivery {
                    id: r.try_get("id")?,
                    webhook_id: r.try_get("webhook_id")?,
                    event_id: r.try_get("event_id")?,
                    event_type: r.try_get("event_type")?,
                    body: r.try_get("body")?,
                    attempts: u32_of(r.try_get("attempts")?, "attempts")?,
                    created_at: from_ms(r.try_get("created_at")?)?,
                    claim_token: req.token,
                })
            })
            .collect()
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        let _write = self.write.lock().await;
        if ids.is_empty() {
            return Ok(());
        }
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL WHERE claim_token = ",
        );
        qb.push_bind(token).push(" AND id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(")");
        qb.build().execute(&self.writer).await?;
        Ok(())
    }

    async fn complete_attempts(&self, records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let _write = self.write.lock().await;
        let mut tx = self.writer.begin().await?;
        let mut effects = Vec::with_capacity(records.len());
        for run in distinct_runs(records) {
            effects.extend(record::record_run(&mut tx, &records[run]).await?);
        }
        tx.commit().await?;
        Ok(effects)
    }

    async fn recover_in_flight(&self, _now: OffsetDateTime) -> Result<u64> {
        let _write = self.write.lock().await;
        // One worker process per SQLite database: any claim found at start-up
        // belongs to a process that is gone.
        let done = sqlx::query(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL \
             WHERE claimed_until IS NOT NULL AND status IN ('pending', 'failed')",
        )
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64> {
        let _write = self.write.lock().await;
        let done =
            sqlx::query("DELETE FROM deliveries WHERE status = 'succeeded' AND delivered_at < ?")
                .bind(ms(before))
                .execute(&self.writer)
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
        let _write = self.write.lock().await;
        let done = sqlx::query("UPDATE webhooks SET secret = ? WHERE id = ? AND secret = ?")
            .bind(new)
            .bind(id)
            .bind(expected)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
